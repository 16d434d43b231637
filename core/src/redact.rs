//! Redaction of regulated values before statement text, parameters and
//! messages are stored or logged.
//!
//! The extension finds literal tokens with PostgreSQL's own lexer and passes
//! their byte spans and decoded values here (`E''` escapes decoded by the
//! lexer, `U&''` escapes by [`decode_unicode_escapes`], continued strings
//! joined); this module decides which to hide. A literal is hidden when the
//! statement involves a sensitive column (then every literal is, since any of
//! them may be compared with or assigned to it) or when its value contains
//! regulated data anywhere ([`contains_regulated`]): an SSN (`219-09-9999`,
//! `219 09 9999`, or nine digits alone or after a word such as "ssn"), a
//! Luhn-valid card number of 13–19 digits (spaces or dashes between groups
//! allowed) or an e-mail address — `'call 4111111111111111 now'` as much as
//! `'4111111111111111'`. Messages (error text, DETAIL, HINT) and parameters
//! lose just the regulated values ([`redact_regulated`]).

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
    let digits: Vec<u8> = v.bytes().filter(u8::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && luhn(&digits)
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

/// Regulated-looking data of any kind: the whole value, or anywhere inside it.
pub fn looks_regulated(v: &str) -> bool {
    looks_like_ssn(v) || looks_like_card_number(v) || looks_like_email(v) || contains_regulated(v)
}

/// Whether regulated data occurs anywhere in `text`.
pub fn contains_regulated(text: &str) -> bool {
    !find_regulated(text).is_empty()
}

/// `text` with every regulated value found in it replaced by `<redacted>`.
pub fn redact_regulated(text: &str) -> String {
    let spans = find_regulated(text);
    if spans.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end) in spans {
        out.push_str(&text[pos..start]);
        out.push_str("<redacted>");
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Words after which nine digits in a row are taken for an SSN.
const SSN_CONTEXT: &[&str] = &["ssn", "social security", "ss#", "ss no", "taxpayer", "tin"];

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d - b'0');
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

/// A group of digits inside a run of digit groups.
struct Group {
    start: usize,
    end: usize,
    /// The separator before it (`b' '` or `b'-'`; 0 for the first group).
    sep: u8,
}

/// Whether one of [`SSN_CONTEXT`] ends shortly before byte `at`.
fn ssn_context_before(text: &str, at: usize) -> bool {
    let from = text[..at]
        .char_indices()
        .rev()
        .take(24)
        .last()
        .map_or(at, |(i, _)| i);
    let before = text[from..at].to_ascii_lowercase();
    SSN_CONTEXT.iter().any(|w| {
        before.match_indices(w).any(|(i, _)| {
            // a word of its own: not the end of a longer word ("continental")
            before[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_ascii_alphanumeric())
                && before[i + w.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_alphabetic())
        })
    })
}

/// Byte spans (sorted, not overlapping) of the regulated values in `text`:
/// e-mail addresses, SSNs and Luhn-valid card numbers, wherever they occur.
pub fn find_regulated(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans: Vec<(usize, usize)> = vec![];
    // e-mail addresses: local@domain.tld
    let local_char = |c: u8| c.is_ascii_alphanumeric() || b"._%+-'".contains(&c);
    let domain_char = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    for (at, _) in text.match_indices('@') {
        let mut start = at;
        while start > 0 && local_char(b[start - 1]) {
            start -= 1;
        }
        while start < at && matches!(b[start], b'.' | b'\'') {
            start += 1;
        }
        let mut end = at + 1;
        while end < b.len() && domain_char(b[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = &text[at + 1..end];
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty()
                && !host.starts_with('.')
                && !tld.is_empty()
                && tld.bytes().all(|c| c.is_ascii_alphabetic())
        });
        if start < at && tld_ok {
            spans.push((start, end));
        }
    }
    // runs of digit groups separated by single spaces or dashes
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut groups: Vec<Group> = vec![];
        let mut sep = 0u8;
        let mut j = i;
        loop {
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            groups.push(Group { start, end: j, sep });
            if j + 1 < b.len() && matches!(b[j], b' ' | b'-') && b[j + 1].is_ascii_digit() {
                sep = b[j];
                j += 1;
            } else {
                break;
            }
        }
        let len = |g: &Group| g.end - g.start;
        let whole_text = text.trim().len() == j - i && text.trim_start().len() == text.len() - i;
        let mut k = 0;
        while k < groups.len() {
            // SSN: 3-2-4 digits with the same separator
            if k + 2 < groups.len()
                && len(&groups[k]) == 3
                && len(&groups[k + 1]) == 2
                && len(&groups[k + 2]) == 4
                && groups[k + 1].sep == groups[k + 2].sep
            {
                spans.push((groups[k].start, groups[k + 2].end));
                k += 3;
                continue;
            }
            // card numbers: the longest sequence of groups from here with
            // 13–19 digits that passes the Luhn check
            let mut digits: Vec<u8> = vec![];
            let mut found = None;
            for (m, g) in groups.iter().enumerate().skip(k) {
                digits.extend_from_slice(&b[g.start..g.end]);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13 && luhn(&digits) {
                    found = Some(m);
                }
            }
            if let Some(m) = found {
                spans.push((groups[k].start, groups[m].end));
                k = m + 1;
                continue;
            }
            // nine digits alone (the whole value) or after a word like "ssn"
            let g = &groups[k];
            if len(g) == 9
                && groups.len() == 1
                && ((whole_text && b[g.start] != b'0') || ssn_context_before(text, g.start))
            {
                spans.push((g.start, g.end));
            }
            k += 1;
        }
        i = j.max(i + 1);
    }
    spans.sort();
    let mut merged: Vec<(usize, usize)> = vec![];
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Decode the escapes of a `U&'…'` string constant (`\XXXX`, `\+XXXXXX`, a
/// doubled escape character) as PostgreSQL's parser does; `escape` is `\\`
/// unless a `UESCAPE` clause names another. Invalid escapes are kept as written.
pub fn decode_unicode_escapes(value: &str, escape: char) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::with_capacity(value.len());
    let hex = |s: &[char]| -> Option<u32> {
        (s.iter().all(|c| c.is_ascii_hexdigit()))
            .then(|| s.iter().collect::<String>())
            .and_then(|h| u32::from_str_radix(&h, 16).ok())
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != escape {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&escape) {
            out.push(escape);
            i += 2;
            continue;
        }
        let (len, code) = if chars.get(i + 1) == Some(&'+') {
            (8, chars.get(i + 2..i + 8).and_then(hex))
        } else {
            (5, chars.get(i + 1..i + 5).and_then(hex))
        };
        match code.and_then(char::from_u32) {
            Some(ch) => {
                out.push(ch);
                i += len;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Decode the backslash escapes of an `E'…'` string constant (for text
/// PostgreSQL's lexer cannot be run on; the lexer decodes them itself).
pub fn decode_c_escapes(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\\' || i + 1 >= chars.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = chars[i + 1];
        let take = |from: usize, max: usize, radix: u32| -> (usize, Option<u32>) {
            let digits: String = chars[from..]
                .iter()
                .take(max)
                .take_while(|c| c.is_digit(radix))
                .collect();
            (digits.len(), u32::from_str_radix(&digits, radix).ok())
        };
        match n {
            'b' => {
                out.push('\u{8}');
                i += 2;
            }
            'f' => {
                out.push('\u{c}');
                i += 2;
            }
            'n' => {
                out.push('\n');
                i += 2;
            }
            'r' => {
                out.push('\r');
                i += 2;
            }
            't' => {
                out.push('\t');
                i += 2;
            }
            'x' => {
                let (len, v) = take(i + 2, 2, 16);
                match v.and_then(char::from_u32) {
                    Some(ch) if len > 0 => {
                        out.push(ch);
                        i += 2 + len;
                    }
                    _ => {
                        out.push('x');
                        i += 2;
                    }
                }
            }
            'u' | 'U' => {
                let want = if n == 'u' { 4 } else { 8 };
                let (len, v) = take(i + 2, want, 16);
                match v.and_then(char::from_u32) {
                    Some(ch) if len == want => {
                        out.push(ch);
                        i += 2 + len;
                    }
                    _ => {
                        out.push(n);
                        i += 2;
                    }
                }
            }
            '0'..='7' => {
                let (len, v) = take(i + 1, 3, 8);
                match v.and_then(char::from_u32) {
                    Some(ch) => {
                        out.push(ch);
                        i += 1 + len;
                    }
                    None => {
                        out.push(n);
                        i += 2;
                    }
                }
            }
            other => {
                out.push(other);
                i += 2;
            }
        }
    }
    out
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

/// A message (error text, DETAIL, HINT, a server-log line that is not a
/// statement) with its regulated data hidden: quoted values and literals that
/// hold any (`invalid input syntax for type integer: "219-09-9999"`,
/// `parameters: $1 = 'note: 219-09-9999'`), then whatever regulated value is
/// left in the plain text (`RAISE EXCEPTION 'card %', …` gives no quotes).
pub fn redact_message(text: &str) -> String {
    if !may_hold_regulated(text) {
        return text.to_string();
    }
    let mut spans = scan_literals(text);
    spans.extend(scan_quoted_values(text));
    spans.sort_by_key(|l| l.start);
    redact_regulated(&redact(text, &spans, false))
}

/// A server-log line of an agent session: logged statements
/// (`log_statement`, `log_min_duration_statement`) lose every literal and any
/// regulated value outside them (comments, quoted names); other lines are
/// messages ([`redact_message`]).
pub fn redact_log_line(text: &str) -> String {
    let is_statement = ["statement: ", "execute ", "duration: "]
        .iter()
        .any(|p| text.starts_with(p));
    if is_statement {
        return redact_regulated(&redact(text, &scan_literals(text), true));
    }
    redact_message(text)
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
    fn finds_regulated_values_inside_longer_text_in_every_spelling() {
        for v in [
            "call 4111111111111111 now",
            "my card 4111 1111 1111 1111",
            "card 4111-1111-1111-1111, thanks",
            "219 09 9999",
            "219-09-9999",
            "ssn 219-09-9999 on file",
            "note: 219-09-9999",
            "SSN: 219099999",
            "ssn#219099999",
            "219099999",
            "contact ann@example.com please",
            "x<ann.lee+tag@mail.example.org>",
        ] {
            assert!(contains_regulated(v), "{v}");
            assert!(looks_regulated(v), "{v}");
        }
        for v in [
            "hello",
            "2024-01-15 10:30:00",
            "order 219099999 shipped",
            "id 12345",
            "4111111111111112",
            "555-123-4567",
            "a@b",
            "user@localhost",
            "019099999 plus",
        ] {
            assert!(!contains_regulated(v), "{v}");
        }
    }

    #[test]
    fn messages_lose_only_the_regulated_values() {
        assert_eq!(
            redact_regulated("invalid input syntax for type integer: \"219-09-9999\""),
            "invalid input syntax for type integer: \"<redacted>\""
        );
        assert_eq!(
            redact_regulated(
                "value \"my card 4111 1111 1111 1111\" is out of range for ann@example.com"
            ),
            "value \"my card <redacted>\" is out of range for <redacted>"
        );
        assert_eq!(redact_regulated("division by zero"), "division by zero");
    }

    #[test]
    fn error_messages_and_log_lines_lose_regulated_values_in_every_spelling() {
        for (m, want) in [
            (
                "invalid input syntax for type integer: \"219-09-9999\"",
                "invalid input syntax for type integer: '<redacted>'",
            ),
            (
                "invalid input syntax for type integer: \"ssn 219 09 9999 on file\"",
                "invalid input syntax for type integer: '<redacted>'",
            ),
            (
                "card 4111 1111 1111 1111 declined",
                "card <redacted> declined",
            ),
            (
                "parameters: $1 = 'note: 219-09-9999', $2 = '7'",
                "parameters: $1 = '<redacted>', $2 = '7'",
            ),
            (
                "value too long for type character varying(3)",
                "value too long for type character varying(3)",
            ),
        ] {
            assert_eq!(redact_message(m), want, "{m}");
            assert_eq!(redact_log_line(m), want, "{m}");
        }
        // the quick scan knows no comments: their numbers go as literals do
        let line =
            redact_log_line("statement: SELECT 1 /* ssn 219-09-9999 */, \"ann@example.com\", 'x'");
        assert!(
            !line.contains("219") && !line.contains("9999") && !line.contains("ann@"),
            "{line}"
        );
        assert!(line.starts_with("statement: SELECT '<redacted>'"), "{line}");
    }

    #[test]
    fn escapes_are_decoded_before_matching() {
        assert_eq!(
            decode_unicode_escapes("219\\002d09-9999", '\\'),
            "219-09-9999"
        );
        assert_eq!(decode_unicode_escapes("219!002d09!!", '!'), "219-09!");
        assert_eq!(decode_unicode_escapes("\\+00002D", '\\'), "-");
        assert_eq!(decode_unicode_escapes("bad \\zz", '\\'), "bad \\zz");
        assert_eq!(decode_c_escapes("219\\x2d09\\0559999"), "219-09-9999");
        assert_eq!(decode_c_escapes("a\\'b\\u0040c"), "a'b@c");
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
            let raw = text
                .get(start + 1..end.saturating_sub(1).max(start + 1))
                .unwrap_or_default();
            let unicode = start >= 2 && text[..start].to_ascii_lowercase().ends_with("u&");
            // the value as PostgreSQL reads it, so that escapes spell nothing past the check
            let value = if escapes {
                decode_c_escapes(&raw.replace("''", "'"))
            } else if unicode {
                decode_unicode_escapes(&raw.replace("''", "'"), '\\')
            } else {
                raw.replace("''", "'")
            };
            out.push(Literal { start, end, value });
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
    fn escaped_literals_are_decoded() {
        let sql = "SELECT U&'219\\002d09-9999', E'219\\x2d09-9999', 'x'";
        let v: Vec<String> = scan_literals(sql).into_iter().map(|l| l.value).collect();
        assert_eq!(v, vec!["219-09-9999", "219-09-9999", "x"]);
        assert_eq!(
            redact(sql, &scan_literals(sql), false),
            "SELECT U&'<redacted>', E'<redacted>', 'x'"
        );
    }

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
        assert_eq!(v, vec!["123-45-6789", "42", "a'b", "it's"]);
        assert_eq!(
            redact(sql, &scan_literals(sql), true),
            "SELECT x1 FROM t WHERE ssn = '<redacted>' AND n = '<redacted>' AND b = '<redacted>' AND \"c'd\" = '<redacted>'"
        );
    }
}
