//! Share slots: a publish grant reserves its share's place under the caps
//! from the moment it is issued, not from when it goes live. Grants last
//! minutes and nothing re-checks the caps at the WHIP POST, so counting only
//! live shares let every member who pressed Share within that window
//! publish. One lock covers the count, the cap check and the reservation.
//! A reservation ends when the grant expires, when its share is seen live
//! (from then on the live share counts), or when it is released (the share
//! ended, or the grant was never handed out). Sans-I/O: times are Unix
//! seconds from the caller.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;

/// Grants issued and not yet seen live, with when they expire. Bounded by
/// the grants of the last grant lifetime: expired ones go on every use.
pub struct ShareSlots<K> {
    granted_until: Mutex<HashMap<K, u64>>,
}

impl<K> Default for ShareSlots<K> {
    fn default() -> Self {
        ShareSlots {
            granted_until: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> ShareSlots<K> {
    /// Counts the shares in `key`'s scope (`same_scope`) other than `key`'s:
    /// the `live` ones and the unexpired grants not among them; `decide`
    /// answers from that count, and if it says yes `key` holds a slot until
    /// `until`. All under one lock, so two grants cannot both take the last
    /// slot.
    pub fn reserve<T, E>(
        &self,
        key: &K,
        live: &[K],
        now: u64,
        until: u64,
        same_scope: impl Fn(&K) -> bool,
        decide: impl FnOnce(usize) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut granted = self.granted_until.lock();
        // A live share counts as live; an expired grant no more.
        granted.retain(|k, exp| *exp > now && !live.contains(k));
        let others_live = live.iter().filter(|k| *k != key && same_scope(k)).count();
        let others_granted = granted
            .keys()
            .filter(|k| *k != key && same_scope(k))
            .count();
        let answer = decide(others_live + others_granted)?;
        granted.insert(key.clone(), until);
        Ok(answer)
    }

    /// Whether `key` holds an unexpired grant not yet seen live.
    pub fn held(&self, key: &K, now: u64) -> bool {
        self.granted_until
            .lock()
            .get(key)
            .is_some_and(|exp| *exp > now)
    }

    /// `key`'s share ended (or its grant was not handed out): its slot is free.
    pub fn release(&self, key: &K) {
        self.granted_until.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A cap of `max` shares: yes while the others leave room.
    fn cap(max: usize) -> impl FnOnce(usize) -> Result<(), usize> {
        move |others| if others < max { Ok(()) } else { Err(others) }
    }

    #[test]
    fn grants_not_yet_live_hold_their_slots() {
        let slots = ShareSlots::default();
        let all = |_: &&str| true;
        // Cap 2, nobody live yet: two grants, the third member is refused.
        assert_eq!(slots.reserve(&"ann", &[], 0, 300, all, cap(2)), Ok(()));
        assert_eq!(slots.reserve(&"bo", &[], 1, 301, all, cap(2)), Ok(()));
        assert_eq!(slots.reserve(&"cy", &[], 2, 302, all, cap(2)), Err(2));
        assert!(!slots.held(&"cy", 2));
        // Asking again is no second slot.
        assert_eq!(slots.reserve(&"ann", &[], 3, 303, all, cap(2)), Ok(()));
        // ann goes live: she counts once, as live.
        assert_eq!(slots.reserve(&"cy", &["ann"], 4, 304, all, cap(2)), Err(2));
        assert!(!slots.held(&"ann", 4));
        // bo's share ends before going live: his slot is free.
        slots.release(&"bo");
        assert_eq!(slots.reserve(&"cy", &["ann"], 5, 305, all, cap(2)), Ok(()));
        // Unused grants expire and free their slots.
        assert!(slots.held(&"cy", 304));
        assert!(!slots.held(&"cy", 305));
        assert_eq!(slots.reserve(&"bo", &[], 305, 605, all, cap(2)), Ok(()));
    }

    #[test]
    fn scopes_count_apart() {
        let slots = ShareSlots::default();
        let room = |r: &'static str| move |k: &(&str, &str)| k.0 == r;
        let a = ("!a", "@ann");
        let b = ("!b", "@bo");
        assert_eq!(slots.reserve(&a, &[], 0, 300, room("!a"), cap(1)), Ok(()));
        assert_eq!(slots.reserve(&b, &[], 0, 300, room("!b"), cap(1)), Ok(()));
        let a2 = ("!a", "@cy");
        assert_eq!(slots.reserve(&a2, &[], 0, 300, room("!a"), cap(1)), Err(1));
    }

    #[test]
    fn concurrent_grants_never_pass_the_cap() {
        let slots = Arc::new(ShareSlots::default());
        let granted: Vec<bool> = (0..16)
            .map(|i| {
                let slots = slots.clone();
                std::thread::spawn(move || slots.reserve(&i, &[], 0, 300, |_| true, cap(3)).is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(granted.iter().filter(|g| **g).count(), 3);
    }
}
