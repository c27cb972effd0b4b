//! `!live follow <stream|#alias>` / `!live unfollow [stream|#alias]`: any
//! room the bot is in (on any server) subscribes to a stream's go-live and
//! ended notices; they go to each follower once per go-live, through the
//! same outbox as the stream's own room (notices.rs).
//!
//! Who may: in a room, a member with the power to send state events
//! (`state_default`, at least 50, as for `!live attach`; server admins
//! always), since following changes what the room receives; in a direct chat
//! with the bot, its user. Only streams of public rooms can be followed: a
//! private room's go-live stays among its members. A room follows at most
//! [`MAX_FOLLOWS_PER_ROOM`] streams.

use std::sync::Arc;

use tracing::info;

use super::commands::Command;
use super::permissions::Level;
use super::{Matrix, MatrixError};
use crate::hub::Access;
use crate::store::matrix::Followed;

/// Most streams one room may follow.
pub const MAX_FOLLOWS_PER_ROOM: usize = 20;

impl Matrix {
    /// Runs `!live follow` / `!live unfollow` said in `room`; answers there.
    pub(super) async fn follow_command(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        in_dm: bool,
        cmd: Command,
    ) -> Result<(), MatrixError> {
        if !in_dm && !self.may_set_state(room, sender).await? {
            self.reply(
                room,
                "Only members who can change this room's settings (power to send state events) \
                 can make it follow streams.",
            )
            .await;
            return Ok(());
        }
        let text = match cmd {
            Command::Follow { target } => self.follow(room, sender, &target).await?,
            Command::Unfollow { target } => self.unfollow(room, target.as_deref()).await?,
            _ => return Ok(()),
        };
        self.reply(room, &text).await;
        Ok(())
    }

    async fn follow(&self, room: &str, sender: &str, target: &str) -> Result<String, MatrixError> {
        let stream = match self.followed_stream(target).await? {
            Ok(s) => s,
            Err(refusal) => return Ok(refusal),
        };
        if self
            .room_of_stream(&stream)
            .is_some_and(|(m, _)| m.room_id == room)
        {
            return Ok(format!(
                "This room is the room of '{stream}': it gets its notices already."
            ));
        }
        if self
            .hub
            .get(&stream)
            .is_some_and(|s| s.access() == Access::Private)
        {
            return Ok(format!(
                "'{stream}' streams into a private room: its go-live notices stay there."
            ));
        }
        Ok(
            match self
                .store
                .follow(room, &stream, sender, MAX_FOLLOWS_PER_ROOM)
                .await?
            {
                Followed::Now => {
                    info!(room = %room, stream = %stream, by = %sender, "matrix: a room follows a stream");
                    format!(
                        "This room now gets a notice when '{stream}' goes live and when it ends. \
                         `!live unfollow {stream}` stops that."
                    )
                }
                Followed::Already => format!("This room follows '{stream}' already."),
                Followed::Full => format!(
                    "This room follows {MAX_FOLLOWS_PER_ROOM} streams, the most it can; \
                     `!live unfollow <name>` one first."
                ),
            },
        )
    }

    async fn unfollow(&self, room: &str, target: Option<&str>) -> Result<String, MatrixError> {
        let stream = match target {
            None => None,
            // An alias names the room's main stream; a name may be of a
            // stream that is gone since.
            Some(t) if t.starts_with('#') => match self.followed_stream(t).await? {
                Ok(s) => Some(s),
                Err(refusal) => return Ok(refusal),
            },
            Some(t) => Some(t.to_string()),
        };
        let gone = self.store.unfollow(room, stream.as_deref()).await?;
        Ok(match (gone.is_empty(), stream) {
            (true, Some(s)) => format!("This room does not follow '{s}'."),
            (true, None) => "This room follows no stream.".to_string(),
            (false, _) => {
                info!(room = %room, streams = gone.len(), "matrix: a room unfollowed streams");
                format!("This room no longer follows {}.", quoted_list(&gone))
            }
        })
    }

    /// The stream a follow names: a stream with a room, or the main stream
    /// of the room an alias names. `Ok(Err(text))`: refused, say why.
    async fn followed_stream(&self, target: &str) -> Result<Result<String, String>, MatrixError> {
        if !target.starts_with('#') {
            return Ok(match self.room_of_stream(target) {
                Some(_) => Ok(target.to_string()),
                None => Err(format!("There is no stream '{target}' with a Matrix room.")),
            });
        }
        let room_id = match self.store.room_by_alias(target).await? {
            Some(r) => r.room_id,
            None => {
                let Ok(alias) = ruma::OwnedRoomAliasId::try_from(target) else {
                    return Ok(Err(format!("'{target}' is not a room alias.")));
                };
                let req = ruma::api::client::alias::get_alias::v3::Request::new(alias);
                match self.client.send(req, None).await {
                    Ok(r) => r.room_id.to_string(),
                    Err(e) if !e.is_transient() => {
                        return Ok(Err(format!("I cannot find the room {target}.")));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(match self.streams_of_room(&room_id).into_iter().next() {
            Some(m) => Ok(m.stream),
            None => Err(format!("The room {target} has no stream.")),
        })
    }

    /// Whether `user` may change `room`'s settings: the power to send state
    /// events (at least 50), or a server admin.
    async fn may_set_state(&self, room: &str, user: &str) -> Result<bool, MatrixError> {
        if self.perms.level_of(user) == Level::Admin {
            return Ok(true);
        }
        let (level, pl) = self.power_of(room, user).await?;
        let needed = pl["state_default"].as_i64().unwrap_or(50).max(50);
        Ok(level >= needed)
    }
}

/// "'a'", "'a' and 'b'", "'a', 'b' and 'c'".
fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_well() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(quoted_list(&v(&["a"])), "'a'");
        assert_eq!(quoted_list(&v(&["a", "b"])), "'a' and 'b'");
        assert_eq!(quoted_list(&v(&["a", "b", "c"])), "'a', 'b' and 'c'");
    }
}
