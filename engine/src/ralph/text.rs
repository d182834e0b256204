//! Bounding text: the loop keeps prompts and records small whatever the agents print.

/// At most `max` characters of `s`, with `…` when cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((idx, _)) => format!("{}…", &s[..idx]),
    }
}

/// The last `max_bytes` of `s` (on a character boundary), prefixed with a marker when cut.
pub fn tail_bytes(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut start = s.len() - max_bytes;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {} earlier bytes cut]\n{}", start, &s[start..])
}

/// The first `max_bytes` of `s` (on a character boundary), with a marker when cut.
pub fn head_bytes(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… {} more bytes cut]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_on_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        let t = tail_bytes("ééééé", 3);
        assert!(t.ends_with('é') && t.starts_with("[…"));
        assert!(head_bytes("abcdef", 3).starts_with("abc\n[… 3 more"));
        assert_eq!(tail_bytes("short", 100), "short");
    }
}
