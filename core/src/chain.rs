//! The audit trail's hash chain.
//!
//! Each row's hash covers its immutable content and the previous row's hash;
//! the outcome, which arrives later, is covered by a second hash over the row
//! hash and the outcome. Changing, inserting or deleting a row breaks the
//! chain at that row.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `prev_hash` and `content`, separated unambiguously.
pub fn link(prev_hash: &str, content: &str) -> String {
    link_hex(prev_hash, content).as_str().to_string()
}

/// [`link`] without allocating.
pub fn link_hex(prev_hash: &str, content: &str) -> Hex {
    let mut h = Sha256::new();
    h.update((prev_hash.len() as u64).to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update(content.as_bytes());
    let digest = h.finalize();
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    Hex(out)
}

/// A SHA-256 digest in lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex([u8; 64]);

impl Hex {
    pub fn as_str(&self) -> &str {
        // only ASCII hex digits are ever stored
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The digest's 32 bytes (as `agent_guard.audit_log` stores it).
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = (nibble(self.0[2 * i]) << 4) | nibble(self.0[2 * i + 1]);
        }
        out
    }
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// A stored hash (`bytea`) as the chain's text: a 32-byte digest in
/// lowercase hex, anything else (the genesis value, stored as its bytes) as
/// the text it is. The chain's formula works on this text, so a trail whose
/// hashes were hex text (0.1.0) and the same trail stored as bytes hash alike.
pub fn hash_text(stored: &[u8]) -> String {
    if stored.len() == 32 {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in stored {
            out.push(DIGITS[(b >> 4) as usize] as char);
            out.push(DIGITS[(b & 15) as usize] as char);
        }
        out
    } else {
        String::from_utf8_lossy(stored).into_owned()
    }
}

/// The stored form of a chain hash text (the inverse of [`hash_text`]):
/// 64 lowercase hex digits as their 32 bytes, anything else as its bytes
/// (as SQL `agent_guard._hash_bytes`).
pub fn hash_bytes(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    if b.len() == 64 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        (0..32)
            .map(|i| (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]))
            .collect()
    } else {
        b.to_vec()
    }
}

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hash the chain starts from.
pub const GENESIS: &str = "agent_guard";

/// One row as verification sees it.
pub struct ChainRow<'a> {
    pub id: i64,
    pub content: &'a str,
    pub prev_hash: &'a str,
    pub row_hash: &'a str,
    pub outcome: Option<&'a str>,
    pub outcome_hash: Option<&'a str>,
}

/// The first row (by id) where the chain breaks, with the reason.
pub fn first_break<'a>(
    rows: impl IntoIterator<Item = ChainRow<'a>>,
    start_hash: &str,
) -> Option<(i64, String)> {
    let mut expected_prev = start_hash.to_string();
    for r in rows {
        if r.prev_hash != expected_prev {
            return Some((r.id, "prev_hash does not match the previous row (a row was removed, inserted or changed)".into()));
        }
        if link(r.prev_hash, r.content) != r.row_hash {
            return Some((r.id, "row content does not match its hash".into()));
        }
        match (r.outcome, r.outcome_hash) {
            (Some(o), Some(h)) if link(r.row_hash, o) != h => {
                return Some((r.id, "outcome does not match its hash".into()));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Some((r.id, "outcome and its hash disagree".into()))
            }
            _ => {}
        }
        expected_prev = r.row_hash.to_string();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(contents: &[&str]) -> Vec<(String, String, String)> {
        let mut prev = GENESIS.to_string();
        contents
            .iter()
            .map(|c| {
                let h = link(&prev, c);
                let row = (c.to_string(), prev.clone(), h.clone());
                prev = h;
                row
            })
            .collect()
    }

    fn rows(c: &[(String, String, String)]) -> Vec<ChainRow<'_>> {
        c.iter()
            .enumerate()
            .map(|(i, (content, prev, h))| ChainRow {
                id: i as i64 + 1,
                content,
                prev_hash: prev,
                row_hash: h,
                outcome: None,
                outcome_hash: None,
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(&["a", "b", "c"]);
        assert_eq!(first_break(rows(&c), GENESIS), None);
    }

    #[test]
    fn changed_content_breaks_at_that_row() {
        let mut c = chain(&["a", "b", "c"]);
        c[1].0 = "B".into();
        assert_eq!(first_break(rows(&c), GENESIS).map(|b| b.0), Some(2));
    }

    #[test]
    fn deleted_row_breaks_at_the_next() {
        let mut c = chain(&["a", "b", "c"]);
        c.remove(1);
        let r: Vec<_> = rows(&c);
        assert_eq!(first_break(r, GENESIS).map(|b| b.0), Some(2));
    }

    #[test]
    fn link_is_lowercase_hex_sha256() {
        // sha256(be64(11) || "agent_guard" || "[1]")
        assert_eq!(
            link(GENESIS, "[1]"),
            "e01aa99518372d135ad4e1639346026aadd7200b668e49f7ba45f656251018e4"
        );
        assert_eq!(
            format!("{:?}", link_hex(GENESIS, "[1]")),
            link(GENESIS, "[1]")
        );
    }

    #[test]
    fn stored_hashes_read_back_as_the_chain_text() {
        let h = link_hex(GENESIS, "[1]");
        assert_eq!(hash_bytes(h.as_str()), h.bytes().to_vec());
        assert_eq!(hash_text(&h.bytes()), h.as_str());
        // the genesis value is no digest: stored as its bytes
        assert_eq!(hash_bytes(GENESIS), GENESIS.as_bytes());
        assert_eq!(hash_text(GENESIS.as_bytes()), GENESIS);
    }

    #[test]
    fn link_separates_fields() {
        assert_ne!(link("ab", "c"), link("a", "bc"));
    }
}
