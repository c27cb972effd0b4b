//! Which recordings retention deletes (pure; `Recorder::apply_retention`
//! does the deleting). A node deletes only what it recorded (its files are
//! there) and never a recording being made, so only those count towards
//! `max_total_gb`: counting other nodes' or growing recordings would make a
//! node delete every finished recording of its own and still be over (a
//! 24/7 recording alone would empty the disk of everything else).

use crate::store::recordings::RecordingRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RetentionDays,
    MaxTotal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RetentionDays => "retention_days",
            Reason::MaxTotal => "max_total_gb",
        }
    }
}

/// Whether this node may delete `r`.
fn deletable(r: &RecordingRow, node: &str) -> bool {
    r.node == node && r.state != "recording"
}

/// The recordings to delete, in order, from `rows` (oldest first): those
/// older than `days` (0: none), then the oldest while this node's finished
/// recordings take more than `cap` bytes.
pub fn to_delete<'a>(
    rows: &'a [RecordingRow],
    node: &str,
    now_ms: i64,
    days: u64,
    cap: Option<u64>,
) -> Vec<(&'a RecordingRow, Reason)> {
    let mut total: i64 = rows
        .iter()
        .filter(|r| deletable(r, node))
        .map(|r| r.bytes)
        .sum();
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| deletable(r, node)) {
        let old = days > 0
            && r.ended_ms.unwrap_or(r.started_ms)
                < now_ms - (days as i64).saturating_mul(86_400_000);
        let over = cap.is_some_and(|c| total > c as i64);
        if old || over {
            total -= r.bytes;
            let why = if old {
                Reason::RetentionDays
            } else {
                Reason::MaxTotal
            };
            out.push((r, why));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_800_000_000_000;

    fn row(id: &str, node: &str, state: &str, started: i64, bytes: i64) -> RecordingRow {
        RecordingRow {
            id: id.into(),
            stream: "s".into(),
            session: "1".into(),
            node: node.into(),
            started_ms: started,
            ended_ms: (state != "recording").then_some(started + 1000),
            duration_ms: 1000,
            bytes,
            video_codec: None,
            audio_codec: None,
            peak_viewers: 0,
            title_start: String::new(),
            title_end: String::new(),
            room_id: None,
            state: state.into(),
            private: false,
        }
    }

    fn ids(v: &[(&RecordingRow, Reason)]) -> Vec<String> {
        v.iter().map(|(r, _)| r.id.clone()).collect()
    }

    #[test]
    fn a_long_active_recording_does_not_empty_the_disk() {
        // A 24/7 recording of 900 bytes, two finished ones of 100: under a
        // cap of 250 nothing finished is over.
        let rows = [
            row("live", "a", "recording", NOW - 10 * DAY, 900),
            row("f1", "a", "complete", NOW - 2 * DAY, 100),
            row("f2", "a", "complete", NOW - DAY, 100),
        ];
        assert!(to_delete(&rows, "a", NOW, 0, Some(250)).is_empty());
        // Over the cap: the oldest finished goes, only as many as needed.
        let got = to_delete(&rows, "a", NOW, 0, Some(150));
        assert_eq!(ids(&got), ["f1"]);
        assert_eq!(got[0].1, Reason::MaxTotal);
    }

    #[test]
    fn only_this_nodes_recordings_count_and_go() {
        let rows = [
            row("b1", "b", "complete", NOW - 3 * DAY, 1000),
            row("a1", "a", "complete", NOW - 2 * DAY, 100),
            row("a2", "a", "complete", NOW - DAY, 100),
        ];
        // B's bytes are B's business: A is under its cap.
        assert!(to_delete(&rows, "a", NOW, 0, Some(200)).is_empty());
        assert_eq!(ids(&to_delete(&rows, "a", NOW, 0, Some(150))), ["a1"]);
        // Age: B's old recording is left to B.
        let got = to_delete(&rows, "a", NOW, 1, None);
        assert_eq!(ids(&got), ["a1"]);
        assert_eq!(got[0].1, Reason::RetentionDays);
        assert!(to_delete(&rows, "a", NOW, 0, None).is_empty());
    }
}
