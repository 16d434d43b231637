//! Other sessions' query texts (`pg_stat_activity.query`,
//! `pg_stat_statements.query`) as agents read them: the statement's shape
//! with no value in it.
//!
//! The extension lexes the text with PostgreSQL's own scanner and passes
//! the tokens here. Every literal becomes [`crate::redact::REDACTED`];
//! comments (which may carry anything) are dropped; a quoted identifier
//! whose name looks like regulated data is hidden too. What does not lex —
//! a text cut off by `track_activity_query_size` inside a quote or comment —
//! is dropped from that point. A text with a backslash is not shown at all:
//! how a backslash in a quote is read depends on the writer's
//! `standard_conforming_strings`, so the quote's end cannot be known.

use crate::redact::{looks_regulated, REDACTED};

/// What a token is, for redaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A string, bit-string, numeric or integer constant.
    Literal,
    /// An identifier written in double quotes.
    QuotedIdentifier,
    /// Keywords, unquoted identifiers, operators, punctuation, `$n`.
    Other,
}

/// A token's byte span in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub start: usize,
    pub end: usize,
    pub kind: TokenKind,
}

/// What replaces a text that cannot be shown at all.
pub const HIDDEN: &str = "<query text hidden>";
/// What replaces the part of a text that does not lex.
pub const CUT: &str = "<redacted>";

/// The text as agents read it; `complete`: every byte after the last token
/// lexed (only whitespace and comments follow it).
pub fn redact_query_text(text: &str, tokens: &[Token], complete: bool) -> String {
    if text.contains('\\') {
        return HIDDEN.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for t in tokens {
        if t.start < pos
            || t.end > text.len()
            || t.end < t.start
            || !text.is_char_boundary(t.start)
            || !text.is_char_boundary(t.end)
        {
            return HIDDEN.to_string();
        }
        gap(&mut out, &text[pos..t.start]);
        let raw = &text[t.start..t.end];
        match t.kind {
            TokenKind::Literal => out.push_str(REDACTED),
            TokenKind::QuotedIdentifier
                if looks_regulated(raw.trim_matches('"')) || looks_regulated(raw) =>
            {
                out.push_str("\"<redacted>\"")
            }
            _ => out.push_str(raw),
        }
        pos = t.end;
    }
    if complete {
        gap(&mut out, &text[pos..]);
    } else {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(CUT);
    }
    out
}

/// Whitespace between tokens is kept; a gap holding a comment becomes a space.
fn gap(out: &mut String, between: &str) {
    if between.chars().all(char::is_whitespace) {
        out.push_str(between);
    } else {
        out.push(' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crude tokenizer for the tests: quotes, numbers, words and single characters.
    fn lex(text: &str) -> (Vec<Token>, bool) {
        let b = text.as_bytes();
        let mut out = vec![];
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_whitespace() {
                i += 1;
            } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
                match text[i + 2..].find("*/") {
                    Some(e) => i = i + 2 + e + 2,
                    None => return (out, false),
                }
            } else if c == b'\'' || c == b'"' {
                let Some(e) = text[i + 1..].find(c as char) else {
                    return (out, false);
                };
                let kind = if c == b'"' {
                    TokenKind::QuotedIdentifier
                } else {
                    TokenKind::Literal
                };
                out.push(Token {
                    start: i,
                    end: i + 2 + e,
                    kind,
                });
                i += 2 + e;
            } else if c == b'$' {
                let s = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Token {
                    start: s,
                    end: i,
                    kind: TokenKind::Other,
                });
            } else if c.is_ascii_digit() {
                let s = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Token {
                    start: s,
                    end: i,
                    kind: TokenKind::Literal,
                });
            } else if c.is_ascii_alphabetic() {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Token {
                    start: s,
                    end: i,
                    kind: TokenKind::Other,
                });
            } else {
                out.push(Token {
                    start: i,
                    end: i + 1,
                    kind: TokenKind::Other,
                });
                i += 1;
            }
        }
        (out, true)
    }

    fn redact(text: &str) -> String {
        let (tokens, complete) = lex(text);
        redact_query_text(text, &tokens, complete)
    }

    #[test]
    fn every_literal_goes_and_the_shape_stays() {
        assert_eq!(
            redact("UPDATE customers SET ssn = '219-09-9999' WHERE id = 7"),
            "UPDATE customers SET ssn = '<redacted>' WHERE id = '<redacted>'"
        );
        assert_eq!(redact("SELECT 4111111111111111"), "SELECT '<redacted>'");
        assert_eq!(
            redact("SELECT * FROM t WHERE a = $1"),
            "SELECT * FROM t WHERE a = $1"
        );
    }

    #[test]
    fn comments_and_regulated_identifiers_go() {
        assert_eq!(
            redact("SELECT 1 /* card 4111 1111 1111 1111 */ AS x"),
            "SELECT '<redacted>' AS x"
        );
        assert_eq!(
            redact("SELECT name AS \"219-09-9999\", id AS \"Id\" FROM t"),
            "SELECT name AS \"<redacted>\", id AS \"Id\" FROM t"
        );
    }

    #[test]
    fn what_does_not_lex_is_cut_and_backslashes_hide_everything() {
        assert_eq!(
            redact("INSERT INTO t VALUES (1, 'call 4111 1111"),
            "INSERT INTO t VALUES ('<redacted>', <redacted>"
        );
        assert_eq!(redact("SELECT 'a\\' || '219-09-9999'"), HIDDEN);
        assert_eq!(redact(""), "");
    }

    #[test]
    fn tokens_that_do_not_fit_the_text_hide_it() {
        let t = [Token {
            start: 5,
            end: 2,
            kind: TokenKind::Other,
        }];
        assert_eq!(redact_query_text("SELECT 1", &t, true), HIDDEN);
    }
}
