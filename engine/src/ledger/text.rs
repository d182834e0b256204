//! Bounding texts: [`truncate`] cuts a text to a byte budget on a character boundary and says
//! how much it dropped, so JSONL lines stay small.

use std::borrow::Cow;

/// The text, or its beginning plus a `[... truncated N bytes]` marker, within `max` bytes.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The marker's length depends on the number it prints; reserve room for the largest.
    let marker_room = format!("\n[... truncated {} bytes]", text.len()).len();
    let mut cut = max.saturating_sub(marker_room);
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    Cow::Owned(format!("{}\n[... truncated {dropped} bytes]", &text[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_kept_whole() {
        assert!(matches!(truncate("abc", 3), Cow::Borrowed("abc")));
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary_with_a_marker() {
        let text = "ü".repeat(100);
        let out = truncate(&text, 60);
        assert!(out.len() <= 60, "{}", out.len());
        assert!(out.ends_with("bytes]"), "{out}");
        let kept = out.split('\n').next().unwrap();
        assert!(kept.chars().all(|c| c == 'ü'));
        let dropped: usize = out
            .rsplit("truncated ")
            .next()
            .unwrap()
            .trim_end_matches(" bytes]")
            .parse()
            .unwrap();
        assert_eq!(kept.len() + dropped, text.len());
    }
}
