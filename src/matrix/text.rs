//! Text for the bot's messages: HTML escaping, durations.

/// `s` as HTML text: the five characters that could start markup or end an
/// attribute are escaped.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration as a notice says it: "1 h 05 min", "12 min", "40 s".
pub fn format_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(3720), "1 h 02 min");
        assert_eq!(format_duration(180), "3 min");
        assert_eq!(format_duration(45), "45 s");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<b>&\"x'"), "&lt;b&gt;&amp;&quot;x&#39;");
    }
}
