//! Bead ids: `<prefix>-<base36 hash>` for top-level beads, `<parent>.<N>` for children (at most
//! [`MAX_DEPTH`] levels). Hash ids are minted here; child numbers come from a counter table inside
//! the write transaction (see the store), never from memory.

use sha2::{Digest, Sha256};

/// How many `.N` levels an id may have below its top-level bead.
pub const MAX_DEPTH: usize = 3;

/// Characters of base36 hash a new top-level id starts with; longer on a collision.
pub const HASH_LEN: usize = 6;

/// Checks a prefix: 1 to 16 lower-case letters or digits, starting with a letter.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 16
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bead id prefix `{prefix}` is invalid: use 1 to 16 lower-case letters or digits, \
             starting with a letter (e.g. `wg`)"
        ))
    }
}

/// A new top-level id: the prefix and `len` base36 characters of a hash of the seed text and
/// a random nonce.
pub fn mint(prefix: &str, seed: &str, len: usize) -> String {
    let nonce: u128 = rand::random();
    let mut hasher = Sha256::new();
    hasher.update(seed.as_bytes());
    hasher.update(nonce.to_le_bytes());
    let digest = hasher.finalize();
    let mut n = u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"));
    let mut out = String::with_capacity(prefix.len() + 1 + len);
    out.push_str(prefix);
    out.push('-');
    for _ in 0..len {
        let d = (n % 36) as u32;
        n /= 36;
        out.push(char::from_digit(d, 36).expect("digit below 36"));
    }
    out
}

/// `wg-abc.2.1` -> `Some(("wg-abc.2", 1))`; `None` for a top-level id.
pub fn split_child(id: &str) -> Option<(&str, u32)> {
    let (parent, n) = id.rsplit_once('.')?;
    if parent.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().map(|n| (parent, n))
}

/// How many `.N` levels an id has (0 for a top-level id).
pub fn depth(id: &str) -> usize {
    let mut depth = 0;
    let mut rest = id;
    while let Some((parent, _)) = split_child(rest) {
        depth += 1;
        rest = parent;
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_prefix_dash_base36() {
        let id = mint("wg", "a title", HASH_LEN);
        assert!(id.starts_with("wg-"), "{id}");
        assert_eq!(id.len(), 3 + HASH_LEN);
        assert!(id[3..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(id, mint("wg", "a title", HASH_LEN));
    }

    #[test]
    fn child_ids_split_into_parent_and_number() {
        assert_eq!(split_child("wg-abc.2.10"), Some(("wg-abc.2", 10)));
        assert_eq!(split_child("wg-abc"), None);
        assert_eq!(split_child("wg-abc.x"), None);
        assert_eq!(depth("wg-abc"), 0);
        assert_eq!(depth("wg-abc.1.2.3"), 3);
    }

    #[test]
    fn bad_prefixes_are_refused_with_the_rule() {
        assert!(validate_prefix("wg").is_ok());
        assert!(validate_prefix("bd2").is_ok());
        let err = validate_prefix("Wg-x").unwrap_err();
        assert!(err.contains("lower-case"), "{err}");
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("1wg").is_err());
    }
}
