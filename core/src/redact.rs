//! Redaction of literals in statement text before it is stored or logged.
//!
//! The extension finds literal tokens with PostgreSQL's own lexer and passes
//! their byte spans here; this module decides which to hide. A literal is
//! hidden when the statement involves a sensitive column (then every literal
//! is, since any of them may be compared with or assigned to it) or when its
//! value looks like regulated data: an SSN, a Luhn-valid card number or an
//! e-mail address.

/// A literal's span in the statement text (byte offsets) and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Literal {
    pub start: usize,
    pub end: usize,
    pub value: String,
}

/// What replaces a hidden literal.
pub const REDACTED: &str = "'<redacted>'";

/// `ddd-dd-dddd` or nine digits.
pub fn looks_like_ssn(v: &str) -> bool {
    let b = v.trim().as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    (b.len() == 11
        && b[3] == b'-'
        && b[6] == b'-'
        && digits(&b[..3])
        && digits(&b[4..6])
        && digits(&b[7..]))
        || (b.len() == 9 && digits(b) && b[0] != b'0')
}

/// 13–19 digits (spaces and dashes allowed between groups) passing the Luhn check.
pub fn looks_like_card_number(v: &str) -> bool {
    let v = v.trim();
    if !v
        .chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
    {
        return false;
    }
    let digits: Vec<u32> = v.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `local@domain.tld` without spaces.
pub fn looks_like_email(v: &str) -> bool {
    let v = v.trim();
    let Some((local, domain)) = v.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !v.contains(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
}

/// Regulated-looking data of any kind.
pub fn looks_regulated(v: &str) -> bool {
    looks_like_ssn(v) || looks_like_card_number(v) || looks_like_email(v)
}

/// Whether any literal of `text` could look regulated. A literal's value is
/// made of the text's characters or of escapes, so with no `@`, no escape
/// (`\`, `U&` with `UESCAPE`) and fewer than nine ASCII digits in the whole
/// text, none can be an SSN, a card number or an e-mail address: redaction
/// then has nothing to hide and the text need not be lexed.
pub fn may_hold_regulated(text: &str) -> bool {
    let mut digits = 0;
    for b in text.bytes() {
        match b {
            b'@' | b'\\' | b'&' => return true,
            b'0'..=b'9' => {
                digits += 1;
                if digits >= 9 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Replace the literals that must not be stored.
pub fn redact(text: &str, literals: &[Literal], hide_all: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for lit in literals {
        if lit.start < pos
            || lit.end > text.len()
            || !text.is_char_boundary(lit.start)
            || !text.is_char_boundary(lit.end)
        {
            continue;
        }
        if hide_all || looks_regulated(&lit.value) {
            out.push_str(&text[pos..lit.start]);
            out.push_str(REDACTED);
            pos = lit.end;
        }
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(text: &str, needle: &str) -> Literal {
        let start = text.find(needle).unwrap();
        Literal {
            start,
            end: start + needle.len(),
            value: needle.trim_matches('\'').to_string(),
        }
    }

    #[test]
    fn texts_that_cannot_hold_regulated_literals() {
        assert!(!may_hold_regulated(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 523145;"
        ));
        assert!(may_hold_regulated(
            "SELECT * FROM t WHERE ssn = '123-45-6789'"
        ));
        // split over adjacent string constants, still nine digits in the text
        assert!(may_hold_regulated("SELECT '12345'\n'6789'"));
        assert!(may_hold_regulated("SELECT 'a@b.c'"));
        // escapes can spell digits or '@' without writing them
        assert!(may_hold_regulated("SELECT E'\\x40'"));
        assert!(may_hold_regulated("SELECT U&'!0031' UESCAPE '!'"));
        // a card number is longer than nine digits, an SSN exactly nine
        for v in ["4111 1111 1111 1111", "123456789", "x@y.org"] {
            assert!(looks_regulated(v) && may_hold_regulated(v), "{v}");
        }
    }

    #[test]
    fn recognises_regulated_values() {
        assert!(looks_like_ssn("123-45-6789"));
        assert!(!looks_like_ssn("123-456-789"));
        assert!(looks_like_card_number("4111111111111111"));
        assert!(looks_like_card_number("4111 1111 1111 1111"));
        assert!(!looks_like_card_number("4111111111111112"));
        assert!(!looks_like_card_number("12345"));
        assert!(looks_like_email("ann@example.com"));
        assert!(!looks_like_email("not an@email"));
        assert!(!looks_regulated("hello"));
    }

    #[test]
    fn redacts_only_regulated_literals_by_default() {
        let sql = "SELECT * FROM c WHERE ssn = '123-45-6789' AND name = 'Ann'";
        let lits = vec![lit(sql, "'123-45-6789'"), lit(sql, "'Ann'")];
        assert_eq!(
            redact(sql, &lits, false),
            "SELECT * FROM c WHERE ssn = '<redacted>' AND name = 'Ann'"
        );
        assert_eq!(
            redact(sql, &lits, true),
            "SELECT * FROM c WHERE ssn = '<redacted>' AND name = '<redacted>'"
        );
    }

    #[test]
    fn bad_spans_are_ignored() {
        let sql = "SELECT 1";
        let lits = vec![Literal {
            start: 5,
            end: 50,
            value: "x".into(),
        }];
        assert_eq!(redact(sql, &lits, true), sql);
    }
}

/// Double-quoted values in a server message (PostgreSQL quotes offending
/// values that way, e.g. `invalid input syntax for type integer: "…"`).
pub fn scan_quoted_values(text: &str) -> Vec<Literal> {
    let mut out = vec![];
    let mut rest = 0;
    while let Some(open) = text[rest..].find('"') {
        let start = rest + open;
        let Some(close) = text[start + 1..].find('"') else {
            break;
        };
        let end = start + 1 + close + 1;
        out.push(Literal {
            start,
            end,
            value: text[start + 1..end - 1].to_string(),
        });
        rest = end;
    }
    out
}

/// Literal spans found by a small quote-aware scan, for text that PostgreSQL's
/// lexer cannot be run on (server log lines, inside error reporting): quoted
/// strings (with `''`, `E'\''`), dollar quotes and numbers not part of a name.
pub fn scan_literals(text: &str) -> Vec<Literal> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
            let start = i;
            i += 1;
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            let end = (i + 1).min(b.len());
            out.push(Literal {
                start,
                end,
                value: text[start + 1..end.saturating_sub(1).max(start + 1)].to_string(),
            });
            i = end;
        } else if c == b'"' {
            // quoted identifier: skip
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i += 1;
        } else if c == b'$' && b.get(i + 1).is_some_and(|n| !n.is_ascii_digit()) {
            let rest = &text[i + 1..];
            let tag_len = rest
                .bytes()
                .take_while(|x| x.is_ascii_alphanumeric() || *x == b'_')
                .count();
            if rest.as_bytes().get(tag_len) == Some(&b'$') {
                let tag = &text[i..i + tag_len + 2];
                let body = i + tag.len();
                let end = text[body..]
                    .find(tag)
                    .map_or(b.len(), |n| body + n + tag.len());
                out.push(Literal {
                    start: i,
                    end,
                    value: text[body..end.saturating_sub(tag.len()).max(body)].to_string(),
                });
                i = end;
            } else {
                i += 1;
            }
        } else if c.is_ascii_digit()
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$'))
        {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push(Literal {
                start,
                end: i,
                value: text[start..i].to_string(),
            });
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn quoted_values_in_messages() {
        let m = "invalid input syntax for type integer: \"123-45-6789\" near \"x\"";
        assert_eq!(
            redact(m, &scan_quoted_values(m), false),
            "invalid input syntax for type integer: '<redacted>' near \"x\""
        );
    }

    #[test]
    fn finds_strings_numbers_and_dollar_quotes() {
        let sql = "SELECT x1 FROM t WHERE ssn = '123-45-6789' AND n = 42 AND b = $$a'b$$ AND \"c'd\" = 'it''s'";
        let v: Vec<String> = scan_literals(sql).into_iter().map(|l| l.value).collect();
        assert_eq!(v, vec!["123-45-6789", "42", "a'b", "it''s"]);
        assert_eq!(
            redact(sql, &scan_literals(sql), true),
            "SELECT x1 FROM t WHERE ssn = '<redacted>' AND n = '<redacted>' AND b = '<redacted>' AND \"c'd\" = '<redacted>'"
        );
    }
}
