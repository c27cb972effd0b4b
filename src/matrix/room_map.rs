//! `Rooms`: what roomcast knows of its rooms, without I/O — the room ↔
//! stream mapping (mirrored from the store for quick lookups), each room's
//! power (power levels and creators, kept from state events or fetched) and
//! the homeserver's default room version. Its locks are never held across
//! an await; the `Matrix` methods that talk to the homeserver and the store
//! (`rooms.rs`, `power.rs`, `upgrades.rs`) keep it in step.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::decisions;
use super::power::RoomPower;
use crate::store::matrix::{MappingRow, RoomRow};

/// Rooms whose power is remembered; past this the cache starts again.
const MAX_POWER_CACHE: usize = 10_000;

#[derive(Default)]
struct Mapping {
    rooms: HashMap<String, RoomRow>,
    streams: HashMap<String, MappingRow>,
}

impl Mapping {
    fn streams_of(&self, room_id: &str) -> Vec<MappingRow> {
        let mut v: Vec<_> = self
            .streams
            .values()
            .filter(|m| m.room_id == room_id)
            .cloned()
            .collect();
        // The main stream (no slot) first.
        v.sort_by(|a, b| (a.slot.is_some(), &a.stream).cmp(&(b.slot.is_some(), &b.stream)));
        v
    }
}

#[derive(Default)]
pub(super) struct Rooms {
    map: Mutex<Mapping>,
    power: Mutex<HashMap<String, RoomPower>>,
    version: Mutex<Option<String>>,
}

impl Rooms {
    /// The stored rooms and mappings; returns each mapping with its room.
    pub fn load(&self, rooms: Vec<RoomRow>, maps: Vec<MappingRow>) -> Vec<(RoomRow, MappingRow)> {
        let mut map = self.map.lock();
        for r in rooms {
            map.rooms.insert(r.room_id.clone(), r);
        }
        for m in maps {
            map.streams.insert(m.stream.clone(), m);
        }
        map.streams
            .values()
            .filter_map(|m| Some((map.rooms.get(&m.room_id)?.clone(), m.clone())))
            .collect()
    }

    pub fn row(&self, room: &str) -> Option<RoomRow> {
        self.map.lock().rooms.get(room).cloned()
    }

    pub fn room_ids(&self) -> Vec<String> {
        self.map.lock().rooms.keys().cloned().collect()
    }

    /// The streams of a room, the main one first.
    pub fn streams_of(&self, room: &str) -> Vec<MappingRow> {
        self.map.lock().streams_of(room)
    }

    /// A stream's mapping and room.
    pub fn of_stream(&self, stream: &str) -> Option<(MappingRow, RoomRow)> {
        let map = self.map.lock();
        let m = map.streams.get(stream)?.clone();
        let r = map.rooms.get(&m.room_id)?.clone();
        Some((m, r))
    }

    /// Changes a room row; the new row and the room's streams (None: unknown room).
    pub fn update(
        &self,
        room: &str,
        f: impl FnOnce(&mut RoomRow),
    ) -> Option<(RoomRow, Vec<MappingRow>)> {
        let mut map = self.map.lock();
        let r = map.rooms.get_mut(room)?;
        f(r);
        let row = r.clone();
        Some((row, map.streams_of(room)))
    }

    pub fn put_room(&self, row: RoomRow) {
        self.map.lock().rooms.insert(row.room_id.clone(), row);
    }

    pub fn put_stream(&self, m: MappingRow) {
        self.map.lock().streams.insert(m.stream.clone(), m);
    }

    pub fn remove_stream(&self, stream: &str) {
        self.map.lock().streams.remove(stream);
    }

    /// A room upgrade: the old room's streams now belong to `new` (whose row
    /// must be put already); returns them.
    pub fn move_room(&self, old: &str, new: &str) -> Vec<MappingRow> {
        let mut map = self.map.lock();
        map.rooms.remove(old);
        let mut moved = Vec::new();
        for m in map.streams.values_mut() {
            if m.room_id == old {
                m.room_id = new.to_string();
                moved.push(m.clone());
            }
        }
        moved
    }

    /// Streams `user` owns.
    pub fn owned_by(&self, user: &str) -> usize {
        self.map
            .lock()
            .streams
            .values()
            .filter(|m| m.owner.as_deref() == Some(user))
            .count()
    }

    /// The stream a command is about: named, or this room's main stream.
    pub fn resolve(
        &self,
        room: &str,
        in_dm: bool,
        name: Option<&str>,
    ) -> Result<MappingRow, String> {
        let map = self.map.lock();
        let named = name.and_then(|n| map.streams.get(n));
        decisions::resolve_stream(room, in_dm, name, named, &map.streams_of(room))
    }

    // --- power ----------------------------------------------------------------------

    /// A room's power when fully known (power levels and creators).
    pub fn power(&self, room: &str) -> Option<RoomPower> {
        self.power
            .lock()
            .get(room)
            .filter(|p| p.complete())
            .cloned()
    }

    pub fn cache_power(&self, room: &str, p: RoomPower) {
        let mut cache = self.power.lock();
        if cache.len() >= MAX_POWER_CACHE {
            cache.clear();
        }
        cache.insert(room.to_string(), p);
    }

    /// A power levels or create event from a transaction: kept for rooms
    /// with streams and rooms already cached (others are fetched when needed).
    pub fn note_power(&self, room: &str, mapped: bool, f: impl FnOnce(&mut RoomPower)) {
        let mut cache = self.power.lock();
        if let Some(p) = cache.get_mut(room) {
            f(p);
        } else if mapped {
            if cache.len() >= MAX_POWER_CACHE {
                cache.clear();
            }
            f(cache.entry(room.to_string()).or_default());
        }
    }

    // --- the homeserver's default room version ------------------------------------------

    pub fn version(&self) -> Option<String> {
        self.version.lock().clone()
    }

    pub fn set_version(&self, v: String) {
        *self.version.lock() = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str, name: &str) -> RoomRow {
        RoomRow {
            room_id: id.into(),
            alias: None,
            name: Some(name.into()),
            topic: None,
            join_rule: "public".into(),
            encrypted: false,
            notify: false,
        }
    }

    fn stream(name: &str, room: &str, slot: Option<&str>, owner: &str) -> MappingRow {
        MappingRow {
            stream: name.into(),
            room_id: room.into(),
            slot: slot.map(str::to_string),
            owner: Some(owner.into()),
        }
    }

    fn rooms() -> Rooms {
        let r = Rooms::default();
        let loaded = r.load(
            vec![room("!a", "A"), room("!b", "B")],
            vec![
                stream("zcam", "!a", Some("zcam"), "@x:s"),
                stream("main", "!a", None, "@x:s"),
                stream("other", "!b", None, "@y:s"),
            ],
        );
        assert_eq!(loaded.len(), 3);
        r
    }

    #[test]
    fn the_main_stream_comes_first() {
        let r = rooms();
        let s: Vec<String> = r.streams_of("!a").into_iter().map(|m| m.stream).collect();
        assert_eq!(s, ["main", "zcam"]);
        assert_eq!(r.owned_by("@x:s"), 2);
        assert_eq!(r.resolve("!a", false, None).unwrap().stream, "main");
    }

    #[test]
    fn an_update_returns_the_room_s_streams() {
        let r = rooms();
        let (row, streams) = r.update("!b", |x| x.name = Some("B2".into())).unwrap();
        assert_eq!(row.name.as_deref(), Some("B2"));
        assert_eq!(streams.len(), 1);
        assert!(r.update("!nope", |_| {}).is_none());
    }

    #[test]
    fn an_upgrade_moves_every_stream() {
        let r = rooms();
        r.put_room(room("!a2", "A"));
        let moved = r.move_room("!a", "!a2");
        assert_eq!(moved.len(), 2);
        assert!(r.row("!a").is_none());
        assert_eq!(r.of_stream("main").unwrap().1.room_id, "!a2");
        assert!(r.streams_of("!a").is_empty());
    }

    #[test]
    fn power_is_noted_for_mapped_rooms_only() {
        let r = rooms();
        r.note_power("!elsewhere", false, |p| p.pl = Some(serde_json::json!({})));
        assert!(r.power.lock().get("!elsewhere").is_none());
        r.note_power("!a", true, |p| p.pl = Some(serde_json::json!({})));
        // Not complete without the create event: fetched when asked.
        assert!(r.power("!a").is_none());
        r.note_power("!a", true, |p| {
            p.create = Some(("12".into(), vec!["@x:s".into()]))
        });
        assert!(r.power("!a").is_some());
    }
}
