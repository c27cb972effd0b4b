//! Which recording belongs to a go-live session (the replay link of its
//! "ended" notice). Pure.

/// A recording and a go-live session that began this close belong together
/// (both start at the same hub change, a few ms apart).
pub const SLACK_MS: i64 = 2_000;

/// Whether a recording that started at `started_ms` (and ended at
/// `ended_ms`, if it did) is the one of the session that began at
/// `session_ms`: it began with it, or was going on when it began (a
/// recording continued across a reconnect). One that began later is
/// another broadcast's.
pub fn belongs(started_ms: i64, ended_ms: Option<i64>, session_ms: i64) -> bool {
    (started_ms - session_ms).abs() <= SLACK_MS
        || (started_ms <= session_ms && ended_ms.is_none_or(|e| e >= session_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_800_000_000_000;

    #[test]
    fn a_later_broadcasts_recording_is_not_this_sessions() {
        assert!(belongs(S + 15, None, S), "began with it");
        assert!(belongs(S - 1500, Some(S + 60_000), S), "began just before");
        assert!(belongs(S - 600_000, None, S), "going on when it began");
        assert!(belongs(S - 600_000, Some(S + 10), S));
        // The next broadcast's, an hour later: not this one's.
        assert!(!belongs(S + 3_600_000, Some(S + 3_700_000), S));
        assert!(!belongs(S + SLACK_MS + 1, None, S));
        // An earlier broadcast's, over before this one began.
        assert!(!belongs(S - 600_000, Some(S - 300_000), S));
    }
}
