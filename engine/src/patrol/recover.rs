//! Checking what still can be checked in a patrol file with TOML syntax errors: the table
//! sections (`[patrol]`, `[agents.NAME]`, each `[[steps]]`, ...) that hold a syntax error are
//! blanked out (same byte positions), and the rest is read and checked table by table, so the
//! syntax error comes out together with the file's other problems.

use std::ops::Range;

/// The sections of `text` (as 1-based line ranges, end exclusive) that hold one of the byte
/// offsets `errors`, and `text` with those sections blanked (every byte of them but newlines
/// a space, so positions are unchanged). `None` when no section could be told apart.
pub(crate) fn blank_broken_sections(
    text: &str,
    errors: &[usize],
) -> Option<(String, Vec<Range<usize>>)> {
    // Each line's byte range, and whether it starts a table section.
    let mut lines: Vec<(Range<usize>, bool)> = Vec::new();
    let mut in_multiline: Option<&str> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        // `[steps.loop]` and `[steps.split]` belong to the `[[steps]]` above them: one section,
        // so that blanking a broken step takes its sub-tables along (left alone, they would
        // attach to the step before it).
        let sub_table = trimmed.starts_with("[steps.") || trimmed.starts_with("[ steps.");
        let header = in_multiline.is_none() && trimmed.starts_with('[') && !sub_table;
        for quote in [r#"""""#, "'''"] {
            let n = line.matches(quote).count();
            if n % 2 == 1 {
                in_multiline = match in_multiline {
                    Some(q) if q == quote => None,
                    None => Some(quote),
                    other => other,
                };
            }
        }
        lines.push((start..start + line.len(), header));
        start += line.len();
    }
    // Sections: from a header line (or the file's start) to the next header.
    let mut sections: Vec<Range<usize>> = Vec::new(); // line indexes
    let mut first = 0;
    for (i, (_, header)) in lines.iter().enumerate() {
        if *header && i > first {
            sections.push(first..i);
            first = i;
        }
    }
    sections.push(first..lines.len());
    if sections.len() < 2 {
        return None;
    }
    let bytes_of = |s: &Range<usize>| {
        let from = lines.get(s.start).map_or(text.len(), |l| l.0.start);
        let to = s
            .end
            .checked_sub(1)
            .and_then(|i| lines.get(i))
            .map_or(text.len(), |l| l.0.end);
        from..to
    };
    let broken: Vec<Range<usize>> = sections
        .iter()
        .filter(|s| {
            let b = bytes_of(s);
            errors
                .iter()
                .any(|&e| b.contains(&e) || (e == text.len() && b.end == text.len()))
        })
        .cloned()
        .collect();
    let mut out = text.as_bytes().to_vec();
    for s in &broken {
        for b in &mut out[bytes_of(s)] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    let blanked = String::from_utf8(out).ok()?;
    Some((
        blanked,
        broken.iter().map(|s| s.start + 1..s.end + 1).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_section_holding_the_error_is_blanked() {
        let text = "[patrol]\nname = \"x\n\n[[steps]]\nid = \"a\"\nrun = \"true\"\n";
        let at = text.find("\"x").unwrap();
        let (blanked, broken) = blank_broken_sections(text, &[at]).unwrap();
        assert_eq!(broken, vec![1..4]);
        assert_eq!(blanked.len(), text.len());
        assert!(blanked.starts_with("        \n"));
        assert!(blanked.ends_with("[[steps]]\nid = \"a\"\nrun = \"true\"\n"));
    }

    #[test]
    fn a_broken_step_takes_its_loop_table_along() {
        let text =
            "[[steps]]\nid = \"a\"\n[[steps]]\nid = \"b\n[steps.loop]\nchecks = []\n[patrol]\n";
        let at = text.find("\"b").unwrap();
        let (_, broken) = blank_broken_sections(text, &[at]).unwrap();
        assert_eq!(broken, vec![3..7]);
    }

    #[test]
    fn brackets_inside_a_multiline_string_do_not_start_a_section() {
        let text = "[[steps]]\nprompt = \"\"\"\n[not a header]\n\"\"\"\nid = \"a\n[patrol]\nname = \"p\"\n";
        let at = text.find("\"a").unwrap();
        let (_, broken) = blank_broken_sections(text, &[at]).unwrap();
        assert_eq!(broken, vec![1..6]);
    }
}
