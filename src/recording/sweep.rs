//! At start-up: recording directories with no row in the index are files
//! nobody can list, serve or delete (a crash between creating the files and
//! the first row, a row deleted while the files could not be). Which to
//! remove is decided here, without I/O: only names that are recording ids,
//! unknown to the index, and untouched for [`MIN_AGE`] (a node sharing the
//! directory may be creating one right now; its row follows within
//! seconds).

use std::collections::HashSet;
use std::time::Duration;

/// A directory younger than this is left alone.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// The names among `entries` (name, time since last modified) to remove.
pub fn orphans<'a>(entries: &'a [(String, Duration)], known: &HashSet<&str>) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(name, age)| {
            super::valid_id(name) && !known.contains(name.as_str()) && *age >= MIN_AGE
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_unknown_recording_dirs_go() {
        let id = |c: char| c.to_string().repeat(32);
        let old = MIN_AGE + Duration::from_secs(1);
        let entries = vec![
            (id('a'), old),                    // indexed
            (id('b'), old),                    // orphan
            (id('c'), Duration::from_secs(5)), // just made (its row follows)
            ("lost+found".to_string(), old),   // not a recording
            (id('D'), old),                    // not an id (upper case)
        ];
        let a = id('a');
        let known: HashSet<&str> = [a.as_str()].into();
        assert_eq!(orphans(&entries, &known), [id('b').as_str()]);
    }
}
