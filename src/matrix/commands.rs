//! The bot's commands (`!live …`), parsed without any I/O.

use crate::config::validate_stream_name;

/// Longest viewer link the bot hands out.
pub const MAX_LINK_SECS: u64 = 30 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// Create a room and a stream (by DM).
    New {
        name: String,
    },
    /// Attach a stream to the room the command was said in, or (from a DM,
    /// for encrypted rooms whose messages the bot cannot read) to `room`.
    Attach {
        name: String,
        room: Option<String>,
    },
    Detach {
        name: Option<String>,
    },
    /// DM the publishing settings with a fresh key.
    Key {
        name: Option<String>,
    },
    /// Replace the key (the old one stops working) and DM the new one.
    Rotate {
        name: Option<String>,
    },
    /// DM a one-time link (24 h) to an OBS profile carrying a new key.
    Obs {
        name: Option<String>,
    },
    Status {
        name: Option<String>,
    },
    Notify {
        on: bool,
    },
    Slots(Slots),
    /// A signed viewer link valid for `secs`.
    Link {
        secs: u64,
        name: Option<String>,
    },
    /// This room gets `target`'s go-live and ended notices (a stream name or
    /// a room's #alias; follow.rs).
    Follow {
        target: String,
    },
    /// Stop following `target` (every stream when `None`).
    Unfollow {
        target: Option<String>,
    },
    /// Record the stream or not (recordings.rs).
    Record {
        on: bool,
        name: Option<String>,
    },
    /// List the stream's latest recordings with links.
    Recordings {
        name: Option<String>,
    },
    /// Delete a recording (its stream's owner or admins).
    DeleteRecording {
        id: String,
    },
    /// Restream destinations of a stream (src/restream).
    Restream {
        action: Restream,
        name: Option<String>,
    },
    /// Screen-share parties in this room (party.rs): off, on with a compact
    /// notice per share, or on quietly (state events only).
    Party {
        on: bool,
        notices: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restream {
    /// The destinations and their health.
    Show,
    /// `key` is a secret: never echoed, never logged (Debug is masked).
    Add {
        label: String,
        url: String,
        key: crate::restream::dest::SecretKey,
    },
    Remove {
        label: String,
    },
    Enable {
        label: String,
        on: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slots {
    List,
    Add {
        name: String,
    },
    Remove {
        name: String,
    },
    /// One OBS profile link per stream of the room, by DM.
    Obs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not addressed to the bot: ignore silently.
    NotACommand,
    Command(Command),
    /// Addressed to the bot but wrong: answer with this message.
    Error(String),
}

pub const PREFIX: &str = "!live";

pub const HELP: &str = "roomcast commands:
!live new <name> — (in a DM with me) create a room and a stream, and get its publishing settings
!live attach <name> — attach a new stream to this room (room admins); for an encrypted room, DM me `!live attach <name> #room:server`
!live detach [name] — detach the stream from this room (room admins)
!live key [name] — get the publishing settings with a new key, by DM (room admins)
!live rotate [name] — replace the stream key; the new one comes by DM (room admins)
!live obs [name] — a one-time link (24 h) to a ready OBS profile with a new key, by DM (owner or room admins)
!live status [name] — live or offline, viewers, links
!live notify on|off — mention @room in go-live notices (room admins)
!live party on|quiet|off — the widget's Share screen button for members (room admins; quiet: no notices)
!live slots | slots add <name> | slots remove <name> | slots obs — extra streams (slots obs: one OBS profile link per stream, by DM) in this room (room admins)
!live link <24h|7d|30m> [name] — a viewer link for a private room (room admins)
!live follow <name|#alias> — this room gets that stream's go-live and ended notices (room admins)
!live unfollow [name|#alias] — stop following it (or every stream)
!live record on|off [name] — record the stream's broadcasts or not (room admins)
!live recordings [name] — the latest recordings, with replay links
!live delete-recording <id> — delete a recording (its owner or room admins)
!live restream [name] — where the stream is pushed (Twitch, YouTube, any RTMP server) and how each push is doing (owner or room admins)
!live restream add <label> <rtmp(s)://server/app> <key> <name> — (in a DM with me) push the stream there while it is live
!live restream remove|on|off <label> [name] — drop a destination, or switch it on or off";

fn name_arg(arg: Option<&str>) -> Result<Option<String>, String> {
    match arg {
        None => Ok(None),
        Some(n) => validate_stream_name(n)
            .map(|_| Some(n.to_string()))
            .map_err(|e| format!("bad stream name: {e}")),
    }
}

fn required_name(arg: Option<&str>, usage: &str) -> Result<String, String> {
    name_arg(arg)?.ok_or_else(|| format!("usage: {usage}"))
}

/// A stream name or a room #alias.
fn follow_target(arg: Option<&str>) -> Result<Option<String>, String> {
    match arg {
        Some(a) if a.starts_with('#') => {
            if a.len() <= 255 && a.contains(':') {
                Ok(Some(a.to_string()))
            } else {
                Err("a room alias looks like #room:server".into())
            }
        }
        other => name_arg(other),
    }
}

/// Parses "24h", "7d", "30m", "90s" into seconds (1 s to 30 days).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a duration like 24h, 7d or 30m");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(mult).ok_or_else(bad)?;
    if secs == 0 || secs > MAX_LINK_SECS {
        return Err(format!("a link lasts between 1 s and 30 days, not {s}"));
    }
    Ok(secs)
}

/// Parses a message body. Only bodies starting with `!live` are commands.
pub fn parse(body: &str) -> Parsed {
    let body = body.trim();
    let Some(rest) = body.strip_prefix(PREFIX) else {
        return Parsed::NotACommand;
    };
    // "!lively" is not for us.
    if rest.chars().next().is_some_and(|c| !c.is_whitespace()) {
        return Parsed::NotACommand;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Parsed::Command(Command::Help);
    };
    let arg = |i: usize| args.get(i).copied();
    let too_many = |n: usize| args.len() > n;
    let result: Result<Command, String> = (|| {
        let cmd_lc = cmd.to_ascii_lowercase();
        let c = match cmd_lc.as_str() {
            "help" => Command::Help,
            "new" if !too_many(1) => Command::New {
                name: required_name(arg(0), "!live new <name>")?,
            },
            "attach" if !too_many(2) => Command::Attach {
                name: required_name(arg(0), "!live attach <name> [#room:server]")?,
                room: match arg(1) {
                    None => None,
                    Some(r) if (r.starts_with('#') || r.starts_with('!')) && r.len() <= 255 => {
                        Some(r.to_string())
                    }
                    Some(_) => {
                        return Err("the room is a #alias:server or a !room_id".into());
                    }
                },
            },
            "detach" if !too_many(1) => Command::Detach {
                name: name_arg(arg(0))?,
            },
            "key" if !too_many(1) => Command::Key {
                name: name_arg(arg(0))?,
            },
            "rotate" if !too_many(1) => Command::Rotate {
                name: name_arg(arg(0))?,
            },
            "obs" if !too_many(1) => Command::Obs {
                name: name_arg(arg(0))?,
            },
            "status" if !too_many(1) => Command::Status {
                name: name_arg(arg(0))?,
            },
            "notify" if !too_many(1) => match arg(0).map(str::to_ascii_lowercase).as_deref() {
                Some("on") => Command::Notify { on: true },
                Some("off") => Command::Notify { on: false },
                _ => return Err("usage: !live notify on|off".into()),
            },
            "party" if !too_many(1) => match arg(0).map(str::to_ascii_lowercase).as_deref() {
                Some("on") => Command::Party {
                    on: true,
                    notices: true,
                },
                Some("quiet") => Command::Party {
                    on: true,
                    notices: false,
                },
                Some("off") => Command::Party {
                    on: false,
                    notices: false,
                },
                _ => return Err("usage: !live party on|quiet|off".into()),
            },
            "slots" | "slot" if !too_many(2) => {
                match arg(0).map(str::to_ascii_lowercase).as_deref() {
                    None | Some("list") => Command::Slots(Slots::List),
                    Some("add") => Command::Slots(Slots::Add {
                        name: required_name(arg(1), "!live slots add <name>")?,
                    }),
                    Some("remove") | Some("rm") => Command::Slots(Slots::Remove {
                        name: required_name(arg(1), "!live slots remove <name>")?,
                    }),
                    Some("obs") if arg(1).is_none() => Command::Slots(Slots::Obs),
                    Some(other) => {
                        return Err(format!(
                            "unknown slots action '{other}'; use add, remove or obs"
                        ));
                    }
                }
            }
            "link" if !too_many(2) => Command::Link {
                secs: parse_duration(arg(0).ok_or("usage: !live link <24h|7d|30m> [name]")?)?,
                name: name_arg(arg(1))?,
            },
            "follow" if !too_many(1) => Command::Follow {
                target: follow_target(arg(0))?.ok_or("usage: !live follow <name|#alias>")?,
            },
            "unfollow" if !too_many(1) => Command::Unfollow {
                target: follow_target(arg(0))?,
            },
            "record" if !too_many(2) => Command::Record {
                on: match arg(0).map(str::to_ascii_lowercase).as_deref() {
                    Some("on") => true,
                    Some("off") => false,
                    _ => return Err("usage: !live record on|off [name]".into()),
                },
                name: name_arg(arg(1))?,
            },
            "recordings" if !too_many(1) => Command::Recordings {
                name: name_arg(arg(0))?,
            },
            "delete-recording" if !too_many(1) => Command::DeleteRecording {
                id: match arg(0) {
                    Some(id) if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                        id.to_string()
                    }
                    _ => return Err("usage: !live delete-recording <id>".into()),
                },
            },
            "restream" => parse_restream(args)?,
            "new" | "attach" | "detach" | "key" | "rotate" | "obs" | "status" | "notify"
            | "slots" | "slot" | "link" | "follow" | "unfollow" | "record" | "recordings"
            | "delete-recording" | "party" => {
                return Err(format!("too many arguments for '{cmd_lc}'; try !live help"));
            }
            _ => {
                let shown: String = cmd.chars().take(32).collect();
                return Err(format!("unknown command '{shown}'; try !live help"));
            }
        };
        Ok(c)
    })();
    match result {
        Ok(c) => Parsed::Command(c),
        Err(e) => Parsed::Error(e),
    }
}

/// `restream [name]`, `restream add <label> <url> <key> [name]`,
/// `restream remove|on|off <label> [name]`. A key never appears in an error.
fn parse_restream(args: &[&str]) -> Result<Command, String> {
    const USAGE: &str = "usage: !live restream [name] | restream add <label> <rtmp(s)://server/app> <key> [name] | restream remove|on|off <label> [name]";
    let sub = args.first().map(|a| a.to_ascii_lowercase());
    let label = |i: usize| -> Result<String, String> {
        let l = args.get(i).ok_or(USAGE)?;
        if crate::restream::dest::valid_label(l) {
            Ok(l.to_string())
        } else {
            Err("a destination label is 1-32 letters, digits, '-' or '_'".into())
        }
    };
    let (action, name) = match sub.as_deref() {
        None => (Restream::Show, None),
        Some("list") | Some("status") if args.len() <= 2 => {
            (Restream::Show, name_arg(args.get(1).copied())?)
        }
        Some("add") if (4..=5).contains(&args.len()) => {
            let url = args[2];
            if let Err(e) = crate::restream::dest::Target::parse(url) {
                return Err(format!("bad destination URL: {e}"));
            }
            (
                Restream::Add {
                    label: label(1)?,
                    url: url.to_string(),
                    key: crate::restream::dest::SecretKey::new(args[3]),
                },
                name_arg(args.get(4).copied())?,
            )
        }
        Some("remove") | Some("rm") if (2..=3).contains(&args.len()) => (
            Restream::Remove { label: label(1)? },
            name_arg(args.get(2).copied())?,
        ),
        Some(w @ ("on" | "off")) if (2..=3).contains(&args.len()) => (
            Restream::Enable {
                label: label(1)?,
                on: w == "on",
            },
            name_arg(args.get(2).copied())?,
        ),
        Some(_) if args.len() == 1 && validate_stream_name(args[0]).is_ok() => {
            (Restream::Show, Some(args[0].to_string()))
        }
        _ => return Err(USAGE.into()),
    };
    Ok(Command::Restream { action, name })
}

/// Commands that change the room or reveal keys need power in the room.
/// (`follow`/`unfollow` check their own rule: follow.rs.)
pub fn needs_admin(c: &Command) -> bool {
    !matches!(
        c,
        Command::Help
            | Command::New { .. }
            | Command::Status { .. }
            | Command::Follow { .. }
            | Command::Unfollow { .. }
            | Command::Recordings { .. }
            | Command::DeleteRecording { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Command {
        match parse(s) {
            Parsed::Command(c) => c,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Parsed::Error(e) => e,
            other => panic!("{s:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn commands() {
        assert_eq!(cmd("!live"), Command::Help);
        assert_eq!(cmd("  !live help "), Command::Help);
        assert_eq!(
            cmd("!live new show-1"),
            Command::New {
                name: "show-1".into()
            }
        );
        assert_eq!(
            cmd("!live ATTACH cam"),
            Command::Attach {
                name: "cam".into(),
                room: None
            }
        );
        assert_eq!(cmd("!live detach"), Command::Detach { name: None });
        assert_eq!(
            cmd("!live key x"),
            Command::Key {
                name: Some("x".into())
            }
        );
        assert_eq!(cmd("!live rotate"), Command::Rotate { name: None });
        assert_eq!(
            cmd("!live obs show"),
            Command::Obs {
                name: Some("show".into())
            }
        );
        assert_eq!(cmd("!live slots obs"), Command::Slots(Slots::Obs));
        assert!(err("!live obs a b").contains("too many"));
        assert!(needs_admin(&Command::Obs { name: None }));
        assert_eq!(cmd("!live status"), Command::Status { name: None });
        assert_eq!(cmd("!live notify on"), Command::Notify { on: true });
        assert_eq!(cmd("!live notify OFF"), Command::Notify { on: false });
        assert_eq!(
            cmd("!live party on"),
            Command::Party {
                on: true,
                notices: true
            }
        );
        assert_eq!(
            cmd("!live party quiet"),
            Command::Party {
                on: true,
                notices: false
            }
        );
        assert!(err("!live party maybe").contains("usage: !live party"));
        assert!(needs_admin(&cmd("!live party off")));
        assert_eq!(cmd("!live slots"), Command::Slots(Slots::List));
        assert_eq!(
            cmd("!live slots add cam2"),
            Command::Slots(Slots::Add {
                name: "cam2".into()
            })
        );
        assert_eq!(
            cmd("!live slots remove cam2"),
            Command::Slots(Slots::Remove {
                name: "cam2".into()
            })
        );
        assert_eq!(
            cmd("!live link 24h"),
            Command::Link {
                secs: 86_400,
                name: None
            }
        );
        assert_eq!(
            cmd("!live link 30m show"),
            Command::Link {
                secs: 1800,
                name: Some("show".into())
            }
        );
    }

    #[test]
    fn not_for_us() {
        assert_eq!(parse("hello"), Parsed::NotACommand);
        assert_eq!(parse("!lively"), Parsed::NotACommand);
        assert_eq!(parse(""), Parsed::NotACommand);
        assert_eq!(parse("say !live help"), Parsed::NotACommand);
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(err("!live frobnicate").contains("unknown command 'frobnicate'"));
        assert!(err("!live new").contains("usage"));
        assert!(err("!live new Bad Name").contains("too many"));
        assert!(err("!live new Bad").contains("bad stream name"));
        assert!(err("!live notify maybe").contains("on|off"));
        assert!(err("!live link forever").contains("not a duration"));
        assert!(err("!live link 90d").contains("30 days"));
        assert!(err("!live link 0h").contains("between"));
        assert!(err("!live slots juggle x").contains("unknown slots action"));
        // A huge word is not echoed whole.
        let long = format!("!live {}", "x".repeat(10_000));
        assert!(err(&long).len() < 200);
    }

    #[test]
    fn follow_and_unfollow() {
        assert_eq!(
            cmd("!live follow show"),
            Command::Follow {
                target: "show".into()
            }
        );
        assert_eq!(
            cmd("!live FOLLOW #talks:example.org"),
            Command::Follow {
                target: "#talks:example.org".into()
            }
        );
        assert_eq!(cmd("!live unfollow"), Command::Unfollow { target: None });
        assert_eq!(
            cmd("!live unfollow show"),
            Command::Unfollow {
                target: Some("show".into())
            }
        );
        assert!(err("!live follow").contains("usage"));
        assert!(err("!live follow #nohost").contains("#room:server"));
        assert!(err("!live follow Bad").contains("bad stream name"));
        assert!(err("!live follow a b").contains("too many"));
        assert!(!needs_admin(&Command::Follow { target: "a".into() }));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn admin_commands() {
        assert!(!needs_admin(&Command::Help));
        assert!(!needs_admin(&Command::Status { name: None }));
        assert!(needs_admin(&Command::Attach {
            name: "a".into(),
            room: None
        }));
        assert_eq!(
            cmd("!live attach cam #talks:example.org"),
            Command::Attach {
                name: "cam".into(),
                room: Some("#talks:example.org".into())
            }
        );
        assert!(err("!live attach cam talks").contains("#alias"));
        assert!(needs_admin(&Command::Key { name: None }));
    }

    #[test]
    fn restream_commands_keep_the_key_out_of_errors_and_debug() {
        use crate::restream::dest::SecretKey;
        assert_eq!(
            cmd("!live restream"),
            Command::Restream {
                action: Restream::Show,
                name: None
            }
        );
        assert_eq!(
            cmd("!live restream t1"),
            Command::Restream {
                action: Restream::Show,
                name: Some("t1".into())
            }
        );
        let c = cmd("!live restream add twitch rtmps://live.twitch.tv/app live_abcdef123456 t1");
        assert_eq!(
            c,
            Command::Restream {
                action: Restream::Add {
                    label: "twitch".into(),
                    url: "rtmps://live.twitch.tv/app".into(),
                    key: SecretKey::new("live_abcdef123456"),
                },
                name: Some("t1".into()),
            }
        );
        assert!(!format!("{c:?}").contains("abcdef"), "{c:?}");
        assert_eq!(
            cmd("!live restream off twitch"),
            Command::Restream {
                action: Restream::Enable {
                    label: "twitch".into(),
                    on: false
                },
                name: None
            }
        );
        assert_eq!(
            cmd("!live restream remove twitch t1"),
            Command::Restream {
                action: Restream::Remove {
                    label: "twitch".into()
                },
                name: Some("t1".into())
            }
        );
        let e = err("!live restream add twitch http://x/app live_abcdef123456 t1");
        assert!(e.contains("URL") && !e.contains("abcdef"), "{e}");
        assert!(err("!live restream add x").starts_with("usage"));
    }
}
