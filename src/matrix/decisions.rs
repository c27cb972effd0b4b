//! What a command does, decided without I/O: a refusal to answer, or a list
//! of effects. The executor (`effects.rs`) looks up the facts a decision
//! needs (power levels, the store), records the decided effects under the
//! command's event id and performs them, each once: a command processed
//! again after a crash or a failed homeserver call carries on with the
//! same plan instead of deciding anew (when its stream already exists and
//! the name would look "taken").

use serde::{Deserialize, Serialize};

use super::commands::Command;
use super::permissions::Level;
use crate::hub::Access;
use crate::store::matrix::MappingRow;

/// One thing a command does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Creates the stream's room (public, the alias from the name, `owner`
    /// invited with power 100). Later effects name it `Target::Created`.
    CreateRoom { name: String, owner: String },
    /// Records a room roomcast did not serve yet and reads its state.
    AdoptRoom { room: Target },
    /// Creates the stream (if absent) and maps it to the room.
    CreateStream {
        room: Target,
        name: String,
        slot: Option<String>,
        owner: String,
    },
    /// The player widgets and their layout in the room.
    PutWidgets { room: Target },
    /// Queues the stream's `io.roomcast.stream` state event.
    QueueStreamState { stream: String },
    /// Reads the room's recent chat for the pages.
    Backfill { room: Target },
    /// Sends `user` a new key for `stream` by DM, then makes it the valid one.
    DeliverKey { user: String, stream: String },
    /// DMs `user` a one-time link to an OBS profile for `stream`, whose new
    /// key then becomes the valid one (src/matrix/obs.rs).
    ObsLink { user: String, stream: String },
    /// Unmaps the stream, removes its widget, re-pins the others.
    Detach { stream: String, room: String },
    /// A notice from the bot.
    Reply { room: String, text: String },
}

/// A room an effect acts on: a known one, or the one `CreateRoom` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Room(String),
    Created,
}

/// The refusal for users `[matrix.permissions]` gives `none`.
pub const NO_PERMISSION: &str = "Sorry, you can't use this bot on this server.";
pub const NO_STREAMS: &str = "Sorry, you can't create streams on this server.";
pub const NOT_ADMIN: &str = "Only room admins (power level 50 or more) can do that.";

/// Help and status read what a room member sees anyway; the rest acts for
/// the sender and needs at least `user`.
pub fn permission_refusal(cmd: &Command, level: Level) -> Option<&'static str> {
    if level != Level::None || matches!(cmd, Command::Help | Command::Status { .. }) {
        return None;
    }
    Some(match cmd {
        Command::New { .. } => NO_STREAMS,
        _ => NO_PERMISSION,
    })
}

/// The refusal for a user who owns as many streams as allowed (admins: no limit).
pub fn quota_refusal(level: Level, owned: usize, max: usize) -> Option<String> {
    if level == Level::Admin || owned < max {
        return None;
    }
    Some(if max == 0 {
        NO_STREAMS.to_string()
    } else {
        format!(
            "Sorry, the limit is {max} stream(s) per user and you already own {owned}; \
             `!live detach <name>` one first."
        )
    })
}

/// The stream a command is about: named (any stream from a DM, this room's
/// otherwise), or this room's main stream. `named` is the named stream's
/// mapping, `here` the streams of this room (main first).
pub fn resolve_stream(
    room: &str,
    in_dm: bool,
    name: Option<&str>,
    named: Option<&MappingRow>,
    here: &[MappingRow],
) -> Result<MappingRow, String> {
    match name {
        Some(n) => match named {
            Some(m) if in_dm || m.room_id == room => Ok(m.clone()),
            Some(_) => Err(format!("Stream '{n}' belongs to another room.")),
            None => Err(format!("There is no stream '{n}' in a Matrix room.")),
        },
        None if in_dm => Err("Say which stream, e.g. `!live key <name>`.".into()),
        None => here
            .first()
            .cloned()
            .ok_or_else(|| "This room has no stream: `!live attach <name>`.".into()),
    }
}

/// What `!live new` needs to know.
pub struct NewFacts<'a> {
    /// Where the command was said.
    pub room: &'a str,
    pub sender: &'a str,
    pub name: &'a str,
    pub level: Level,
    pub owned: usize,
    pub max_streams: usize,
    /// A stream of that name exists (Matrix or the config file).
    pub name_taken: bool,
    /// The alias the room will get.
    pub alias: &'a str,
}

pub fn decide_new(f: &NewFacts) -> Result<Vec<Effect>, String> {
    if let Some(r) = quota_refusal(f.level, f.owned, f.max_streams) {
        return Err(r);
    }
    if f.name_taken {
        return Err(format!("The name '{}' is taken; pick another.", f.name));
    }
    let mut effects = vec![
        Effect::CreateRoom {
            name: f.name.to_string(),
            owner: f.sender.to_string(),
        },
        Effect::CreateStream {
            room: Target::Created,
            name: f.name.to_string(),
            slot: None,
            owner: f.sender.to_string(),
        },
        Effect::PutWidgets {
            room: Target::Created,
        },
        Effect::QueueStreamState {
            stream: f.name.to_string(),
        },
        Effect::DeliverKey {
            user: f.sender.to_string(),
            stream: f.name.to_string(),
        },
    ];
    effects.push(Effect::Reply {
        room: f.room.to_string(),
        text: format!(
            "Created {} for stream '{}' and invited you. I sent the publishing settings by direct message.",
            f.alias, f.name
        ),
    });
    Ok(effects)
}

/// What attaching a stream to a room (main stream or slot) needs to know.
pub struct AttachFacts<'a> {
    /// The room the stream goes to.
    pub room: &'a str,
    pub sender: &'a str,
    pub name: &'a str,
    pub slot: Option<&'a str>,
    pub level: Level,
    pub owned: usize,
    pub max_streams: usize,
    pub name_taken: bool,
    /// The streams the room has (main first).
    pub room_streams: &'a [MappingRow],
    /// roomcast serves the room already.
    pub room_known: bool,
    pub encrypted: bool,
    /// The bot's power in the room and what widgets and stream state need.
    pub bot_level: i64,
    pub needed: i64,
    pub watch_url: &'a str,
}

pub fn decide_attach(f: &AttachFacts) -> Result<Vec<Effect>, String> {
    if let Some(r) = quota_refusal(f.level, f.owned, f.max_streams) {
        return Err(r);
    }
    if f.slot.is_none()
        && let Some(main) = f.room_streams.first()
    {
        return Err(format!(
            "This room already streams '{}'. Add more cameras with `!live slots add <name>`.",
            main.stream
        ));
    }
    if f.name_taken {
        return Err(format!("The name '{}' is taken; pick another.", f.name));
    }
    if f.bot_level < f.needed {
        return Err(format!(
            "I need power level {} in this room to add the player widget and the stream state; \
             make me a moderator, then say this again.",
            f.needed
        ));
    }
    let room = Target::Room(f.room.to_string());
    let mut effects = Vec::new();
    if !f.room_known {
        effects.push(Effect::AdoptRoom { room: room.clone() });
    }
    effects.extend([
        Effect::CreateStream {
            room: room.clone(),
            name: f.name.to_string(),
            slot: f.slot.map(str::to_string),
            owner: f.sender.to_string(),
        },
        Effect::PutWidgets { room: room.clone() },
        Effect::QueueStreamState {
            stream: f.name.to_string(),
        },
        Effect::Backfill { room },
        Effect::DeliverKey {
            user: f.sender.to_string(),
            stream: f.name.to_string(),
        },
    ]);
    let mut msg = format!(
        "Stream '{}' is attached to this room. Watch: {}. I sent the publishing settings to {} by direct message.",
        f.name, f.watch_url, f.sender
    );
    if f.encrypted {
        msg.push_str(
            " This room is encrypted: roomcast cannot read its messages, so the watch page shows no chat \
             and guests cannot post. The stream itself works.",
        );
    }
    effects.push(Effect::Reply {
        room: f.room.to_string(),
        text: msg,
    });
    Ok(effects)
}

/// `!live detach`: room admins only (of the stream's room).
pub fn decide_detach(m: &MappingRow, said_in: &str, admin: bool) -> Result<Vec<Effect>, String> {
    if !admin {
        return Err(NOT_ADMIN.into());
    }
    Ok(vec![
        Effect::Detach {
            stream: m.stream.clone(),
            room: m.room_id.clone(),
        },
        Effect::Reply {
            room: said_in.to_string(),
            text: format!(
                "Stream '{}' is detached from this room (its widget is removed; the stream and its key remain).",
                m.stream
            ),
        },
    ])
}

/// `!live key` / `rotate`: the stream's owner or an admin of its room.
pub fn decide_key(
    m: &MappingRow,
    sender: &str,
    said_in: &str,
    in_dm: bool,
    may_manage: bool,
) -> Result<Vec<Effect>, String> {
    if !may_manage {
        return Err(NOT_ADMIN.into());
    }
    let mut effects = vec![Effect::DeliverKey {
        user: sender.to_string(),
        stream: m.stream.clone(),
    }];
    if !in_dm {
        effects.push(Effect::Reply {
            room: said_in.to_string(),
            text: format!(
                "I sent {sender} a new key for '{}' by direct message; the old key no longer works.",
                m.stream
            ),
        });
    }
    Ok(effects)
}

/// `!live obs` (one stream) and `!live slots obs` (every stream of the
/// room): a profile link per stream, by DM, to the owner or a room admin.
pub fn decide_obs(
    streams: &[MappingRow],
    sender: &str,
    said_in: &str,
    in_dm: bool,
    may_manage: bool,
) -> Result<Vec<Effect>, String> {
    if !may_manage {
        return Err(NOT_ADMIN.into());
    }
    if streams.is_empty() {
        return Err("This room has no stream: `!live attach <name>`.".into());
    }
    let mut effects: Vec<Effect> = streams
        .iter()
        .map(|m| Effect::ObsLink {
            user: sender.to_string(),
            stream: m.stream.clone(),
        })
        .collect();
    if !in_dm {
        let names: Vec<&str> = streams.iter().map(|m| m.stream.as_str()).collect();
        effects.push(Effect::Reply {
            room: said_in.to_string(),
            text: format!(
                "I sent {sender} OBS profile links for {} by direct message; each carries a new key, \
                 so the old keys no longer work.",
                names.join(", ")
            ),
        });
    }
    Ok(effects)
}

/// What `!live status` shows.
pub struct StatusFacts<'a> {
    pub stream: &'a str,
    pub title: &'a str,
    pub live: bool,
    pub viewers: usize,
    pub access: Access,
    pub in_dm: bool,
    pub may_manage: bool,
    pub watch_url: &'a str,
}

/// In a DM any stream can be named: a private one only by who manages it
/// (and answered as if it did not exist).
pub fn decide_status(f: &StatusFacts) -> Result<String, String> {
    if f.in_dm && f.access == Access::Private && !f.may_manage {
        return Err(format!(
            "There is no stream '{}' in a Matrix room.",
            f.stream
        ));
    }
    let state = if f.live {
        format!("🔴 live, {} viewer(s)", f.viewers)
    } else {
        "offline".to_string()
    };
    let access = match f.access {
        Access::Public => "public",
        Access::Private => "private (viewers need the widget or a `!live link`)",
    };
    Ok(format!(
        "'{}' — {}: {state}; {access}. Watch: {}",
        f.stream, f.title, f.watch_url
    ))
}

/// The name under which an effect of a plan is recorded as done.
pub fn step_name(index: usize, effect: &Effect) -> String {
    let kind = match effect {
        Effect::CreateRoom { .. } => "create_room",
        Effect::AdoptRoom { .. } => "adopt_room",
        Effect::CreateStream { .. } => "create_stream",
        Effect::PutWidgets { .. } => "widgets",
        Effect::QueueStreamState { .. } => "stream_state",
        Effect::Backfill { .. } => "backfill",
        Effect::DeliverKey { .. } => "key",
        Effect::ObsLink { .. } => "obs_link",
        Effect::Detach { .. } => "detach",
        Effect::Reply { .. } => "reply",
    };
    format!("{index}:{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(stream: &str, room: &str, owner: &str) -> MappingRow {
        MappingRow {
            stream: stream.into(),
            room_id: room.into(),
            slot: None,
            owner: Some(owner.into()),
        }
    }

    fn new_facts<'a>(name_taken: bool, owned: usize, level: Level) -> NewFacts<'a> {
        NewFacts {
            room: "!dm",
            sender: "@alice:x",
            name: "show",
            level,
            owned,
            max_streams: 3,
            name_taken,
            alias: "#live_show:x",
        }
    }

    #[test]
    fn new_creates_room_stream_widget_and_key_in_order() {
        let e = decide_new(&new_facts(false, 0, Level::User)).unwrap();
        assert!(matches!(e[0], Effect::CreateRoom { .. }));
        assert!(matches!(
            &e[1],
            Effect::CreateStream { room: Target::Created, name, .. } if name == "show"
        ));
        assert!(matches!(
            e[2],
            Effect::PutWidgets {
                room: Target::Created
            }
        ));
        // The key goes out after the widget: the room is complete first.
        let key = e
            .iter()
            .position(|x| matches!(x, Effect::DeliverKey { .. }))
            .unwrap();
        assert!(key > 2);
        assert!(
            matches!(&e[e.len() - 1], Effect::Reply { room, text } if room == "!dm" && text.contains("#live_show:x"))
        );
    }

    #[test]
    fn new_refuses_a_taken_name_and_over_quota() {
        assert!(
            decide_new(&new_facts(true, 0, Level::User))
                .unwrap_err()
                .contains("taken")
        );
        assert!(
            decide_new(&new_facts(false, 3, Level::User))
                .unwrap_err()
                .contains("limit is 3")
        );
        // Admins have no quota.
        assert!(decide_new(&new_facts(false, 30, Level::Admin)).is_ok());
        assert_eq!(quota_refusal(Level::User, 0, 0).unwrap(), NO_STREAMS);
    }

    #[test]
    fn permission_refusals() {
        let new = Command::New { name: "x".into() };
        assert_eq!(permission_refusal(&new, Level::None), Some(NO_STREAMS));
        let key = Command::Key { name: None };
        assert_eq!(permission_refusal(&key, Level::None), Some(NO_PERMISSION));
        assert_eq!(permission_refusal(&Command::Help, Level::None), None);
        assert_eq!(
            permission_refusal(&Command::Status { name: None }, Level::None),
            None
        );
        assert_eq!(permission_refusal(&key, Level::User), None);
    }

    fn attach<'a>(here: &'a [MappingRow], bot_level: i64) -> AttachFacts<'a> {
        AttachFacts {
            room: "!room",
            sender: "@alice:x",
            name: "cam",
            slot: None,
            level: Level::User,
            owned: 0,
            max_streams: 3,
            name_taken: false,
            room_streams: here,
            room_known: false,
            encrypted: true,
            bot_level,
            needed: 50,
            watch_url: "https://w/watch/cam",
        }
    }

    #[test]
    fn attach_adopts_the_room_and_says_when_it_is_encrypted() {
        let e = decide_attach(&attach(&[], 100)).unwrap();
        assert_eq!(
            e[0],
            Effect::AdoptRoom {
                room: Target::Room("!room".into())
            }
        );
        assert!(e.contains(&Effect::DeliverKey {
            user: "@alice:x".into(),
            stream: "cam".into()
        }));
        assert!(matches!(e.last(), Some(Effect::Reply { text, .. }) if text.contains("encrypted")));
    }

    #[test]
    fn attach_refusals() {
        let main = [mapping("main", "!room", "@bob:x")];
        assert!(
            decide_attach(&attach(&main, 100))
                .unwrap_err()
                .contains("already streams 'main'")
        );
        // A slot beside the main stream is fine.
        let mut slot = attach(&main, 100);
        slot.slot = Some("cam");
        assert!(decide_attach(&slot).is_ok());
        assert!(
            decide_attach(&attach(&[], 0))
                .unwrap_err()
                .contains("power level 50")
        );
        let mut taken = attach(&[], 100);
        taken.name_taken = true;
        assert!(decide_attach(&taken).unwrap_err().contains("taken"));
    }

    #[test]
    fn detach_needs_an_admin() {
        let m = mapping("show", "!room", "@alice:x");
        assert_eq!(decide_detach(&m, "!room", false).unwrap_err(), NOT_ADMIN);
        let e = decide_detach(&m, "!room", true).unwrap();
        assert_eq!(
            e[0],
            Effect::Detach {
                stream: "show".into(),
                room: "!room".into()
            }
        );
    }

    #[test]
    fn key_goes_to_the_sender_and_is_announced_outside_dms() {
        let m = mapping("show", "!room", "@alice:x");
        assert_eq!(
            decide_key(&m, "@mallory:x", "!room", false, false).unwrap_err(),
            NOT_ADMIN
        );
        let e = decide_key(&m, "@alice:x", "!room", false, true).unwrap();
        assert_eq!(
            e[0],
            Effect::DeliverKey {
                user: "@alice:x".into(),
                stream: "show".into()
            }
        );
        assert_eq!(e.len(), 2, "a reply in the room");
        assert_eq!(
            decide_key(&m, "@alice:x", "!dm", true, true).unwrap().len(),
            1
        );
    }

    #[test]
    fn obs_links_one_per_stream_to_who_manages_them() {
        let here = [
            mapping("show", "!room", "@alice:x"),
            mapping("cam2", "!room", "@alice:x"),
        ];
        assert_eq!(
            decide_obs(&here, "@mallory:x", "!room", false, false).unwrap_err(),
            NOT_ADMIN
        );
        let e = decide_obs(&here, "@alice:x", "!room", false, true).unwrap();
        assert_eq!(
            e[1],
            Effect::ObsLink {
                user: "@alice:x".into(),
                stream: "cam2".into()
            }
        );
        assert!(matches!(&e[2], Effect::Reply { text, .. } if text.contains("show, cam2")));
        assert_eq!(
            decide_obs(&here[..1], "@alice:x", "!dm", true, true)
                .unwrap()
                .len(),
            1
        );
        assert!(decide_obs(&[], "@alice:x", "!room", false, true).is_err());
        let names: Vec<String> = e.iter().enumerate().map(|(i, x)| step_name(i, x)).collect();
        assert_eq!(names[..2], ["0:obs_link", "1:obs_link"]);
    }

    #[test]
    fn status_hides_private_streams_from_strangers_in_dms() {
        let mut f = StatusFacts {
            stream: "show",
            title: "Friday",
            live: true,
            viewers: 3,
            access: Access::Private,
            in_dm: true,
            may_manage: false,
            watch_url: "https://w/watch/show",
        };
        assert!(decide_status(&f).unwrap_err().contains("no stream 'show'"));
        f.in_dm = false;
        let text = decide_status(&f).unwrap();
        assert!(
            text.contains("live, 3 viewer(s)") && text.contains("private"),
            "{text}"
        );
    }

    #[test]
    fn resolving_the_stream() {
        let here = [mapping("show", "!room", "@a:x")];
        let other = mapping("other", "!elsewhere", "@a:x");
        assert_eq!(
            resolve_stream("!room", false, None, None, &here)
                .unwrap()
                .stream,
            "show"
        );
        assert!(
            resolve_stream("!room", false, Some("other"), Some(&other), &here)
                .unwrap_err()
                .contains("another room")
        );
        // From a DM any stream can be named, but one must be.
        assert!(resolve_stream("!dm", true, Some("other"), Some(&other), &[]).is_ok());
        assert!(resolve_stream("!dm", true, None, None, &[]).is_err());
        assert!(
            resolve_stream("!room", false, None, None, &[])
                .unwrap_err()
                .contains("no stream")
        );
    }

    #[test]
    fn a_plan_survives_a_restart_with_the_same_step_names() {
        // The plan is stored as JSON and performed again after a crash: it
        // must read back the same, and its steps keep their names.
        let e = decide_new(&new_facts(false, 0, Level::User)).unwrap();
        let back: Vec<Effect> = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let names: Vec<String> = e.iter().enumerate().map(|(i, x)| step_name(i, x)).collect();
        assert_eq!(names[0], "0:create_room");
        assert_eq!(names[4], "4:key");
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names);
    }
}
