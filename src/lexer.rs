//! PostgreSQL's own lexer, for text-level work only: literal redaction in the
//! audit trail and statement fingerprints for single-statement grants.
//! Nothing here decides allow or deny.
//!
//! How string literals are read depends on `standard_conforming_strings` and
//! `backslash_quote`. Redaction reads a statement with the session's settings
//! (as the server runs it); fingerprints always read it with PostgreSQL's
//! defaults ([`Reading::Standard`]), and [`reads_the_same_either_way`] tells
//! whether the settings could change what a statement means at all — a
//! single-statement grant is only for statements they cannot (agent sessions
//! run nothing while they are not at their defaults, see src/gucs.rs).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

// Token codes from PostgreSQL's gram.h (the same in 13–18).
pub const IDENT: i32 = 258;
pub const UIDENT: i32 = 259;
pub const FCONST: i32 = 260;
pub const SCONST: i32 = 261;
pub const USCONST: i32 = 262;
pub const BCONST: i32 = 263;
pub const XCONST: i32 = 264;
pub const OP: i32 = 265;
pub const ICONST: i32 = 266;
pub const PARAM: i32 = 267;

/// One token as the scanner returns it.
#[derive(Clone, Debug)]
pub struct Lexeme {
    pub code: i32,
    /// The token's text as written.
    pub raw: Vec<u8>,
    /// The scanner's value for identifiers, string/bit/float constants and operators.
    pub str_value: Option<Vec<u8>>,
    /// The scanner's value for integer constants and `$n` parameters.
    pub int_value: Option<i32>,
}

/// Which settings the scanner reads string literals with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The session's `standard_conforming_strings` and `backslash_quote`.
    Session,
    /// PostgreSQL's defaults: standard conforming strings, `backslash_quote = safe_encoding`.
    Standard,
    /// As with `standard_conforming_strings = off`.
    Escaping,
}

/// Run PostgreSQL's scanner over `text`, calling `f(code, start, raw, value)`
/// for each token. Raises PostgreSQL's error for unlexable text (e.g. an
/// unterminated quote) and for NUL bytes.
fn scan(text: &str, reading: Reading, mut f: impl FnMut(i32, usize, &[u8], &pg_sys::core_YYSTYPE)) {
    let c = CString::new(text)
        .unwrap_or_else(|_| error!("agent_guard: statement text contains a NUL byte"));
    unsafe {
        let mut extra: pg_sys::core_yy_extra_type = std::mem::zeroed();
        let scanner = pg_sys::scanner_init(
            c.as_ptr(),
            &mut extra,
            &raw const pg_sys::ScanKeywords,
            pg_sys::ScanKeywordTokens.as_ptr(),
        );
        // as pg_stat_statements does: no warnings for backslashes in strings
        extra.escape_string_warning = false;
        match reading {
            Reading::Session => {}
            Reading::Standard | Reading::Escaping => {
                extra.standard_conforming_strings = reading == Reading::Standard;
                extra.backslash_quote =
                    pg_sys::BackslashQuoteType::BACKSLASH_QUOTE_SAFE_ENCODING as i32;
            }
        }
        loop {
            let mut val: pg_sys::core_YYSTYPE = std::mem::zeroed();
            let mut loc: i32 = 0;
            let code = pg_sys::core_yylex(&mut val, &mut loc, scanner);
            if code == 0 {
                break;
            }
            let start = loc.max(0) as usize;
            // flex leaves a NUL after the current token in scanbuf
            let raw = CStr::from_ptr(extra.scanbuf.add(start)).to_bytes();
            f(code, start, raw, &val);
        }
        pg_sys::scanner_finish(scanner);
    }
}

/// The scanner's string value of a token, for the codes that have one.
fn str_value(code: i32, val: &pg_sys::core_YYSTYPE) -> Option<&[u8]> {
    match code {
        IDENT | UIDENT | FCONST | SCONST | USCONST | BCONST | XCONST | OP => {
            let p = unsafe { val.str_ };
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
        }
        _ => None,
    }
}

/// Lex `text` with PostgreSQL's scanner and default settings
/// ([`Reading::Standard`]). Raises PostgreSQL's error for unlexable text
/// (e.g. an unterminated quote) and for NUL bytes.
pub fn lex(text: &str) -> Vec<Lexeme> {
    lex_as(text, Reading::Standard)
}

fn lex_as(text: &str, reading: Reading) -> Vec<Lexeme> {
    let mut out = vec![];
    scan(text, reading, |code, _start, raw, val| {
        out.push(Lexeme {
            code,
            raw: raw.to_vec(),
            str_value: str_value(code, val).map(<[u8]>::to_vec),
            int_value: matches!(code, ICONST | PARAM).then_some(unsafe { val.ival }),
        })
    });
    out
}

/// Whether `text` lexes into the same tokens with `standard_conforming_strings`
/// on and off: then no setting can make it mean something else than what a
/// reader of its text sees. False also when either reading fails to lex.
pub fn reads_the_same_either_way(text: &str) -> bool {
    if !text.contains('\\') {
        return true; // backslashes are the only difference between the readings
    }
    let same = |a: &Lexeme, b: &Lexeme| {
        a.code == b.code && a.str_value == b.str_value && a.int_value == b.int_value
    };
    pgrx::PgTryBuilder::new(|| {
        let standard = lex_as(text, Reading::Standard);
        let escaping = lex_as(text, Reading::Escaping);
        standard.len() == escaping.len() && standard.iter().zip(&escaping).all(|(a, b)| same(a, b))
    })
    .catch_others(|_| false)
    .execute()
}

/// Literal spans for [`agent_guard_core::redact::redact`], with their values
/// as PostgreSQL reads them (`U&` escapes decoded, with a `UESCAPE` clause's
/// character); `None` if the text does not lex.
fn literals(text: &str) -> Option<Vec<agent_guard_core::redact::Literal>> {
    use agent_guard_core::redact::{decode_unicode_escapes, Literal};
    pgrx::PgTryBuilder::new(|| {
        let mut out: Vec<Literal> = vec![];
        // a U& constant waits for a possible UESCAPE 'c' after it
        let mut pending: Option<(Literal, u8)> = None;
        let finish = |out: &mut Vec<Literal>, pending: &mut Option<(Literal, u8)>, escape: char| {
            if let Some((mut lit, _)) = pending.take() {
                lit.value = decode_unicode_escapes(&lit.value, escape);
                out.push(lit);
            }
        };
        scan(text, Reading::Session, |code, start, raw, val| {
            if let Some((lit, state)) = pending.as_mut() {
                // state 0: after the constant; 1: after UESCAPE
                let is_uescape = code > 255 && raw.eq_ignore_ascii_case(b"uescape") && *state == 0;
                if is_uescape {
                    *state = 1;
                    lit.end = start + raw.len();
                    return;
                }
                if *state == 1 && code == SCONST {
                    let escape = str_value(code, val)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.chars().next())
                        .unwrap_or('\\');
                    lit.end = start + raw.len();
                    finish(&mut out, &mut pending, escape);
                    return;
                }
                finish(&mut out, &mut pending, '\\');
            }
            let value = match code {
                SCONST | USCONST | BCONST | XCONST | FCONST => {
                    str_value(code, val).map(|v| String::from_utf8_lossy(v).into_owned())
                }
                ICONST => Some(unsafe { val.ival }.to_string()),
                _ => None,
            };
            if let Some(value) = value {
                let lit = Literal {
                    start,
                    end: start + raw.len(),
                    value,
                };
                if code == USCONST {
                    pending = Some((lit, 0));
                } else {
                    out.push(lit);
                }
            }
        });
        finish(&mut out, &mut pending, '\\');
        Some(out)
    })
    .catch_others(|_| None)
    .execute()
}

/// The statement text with regulated (or, with `hide_all`, every) literal
/// hidden, and any regulated value left outside literals (a comment, a quoted
/// name). Text PostgreSQL's lexer rejects falls back to the quick scan.
pub fn redact(text: &str, hide_all: bool) -> String {
    use agent_guard_core::redact as r;
    if !hide_all && !r::may_hold_regulated(text) {
        return text.to_string();
    }
    let literals = literals(text).unwrap_or_else(|| r::scan_literals(text));
    r::redact_regulated(&r::redact(text, &literals, hide_all))
}

/// The tokens of `text` as (code, start, end, raw starts with a double
/// quote), as far as the text lexes; the flag is false when the rest does
/// not (an unterminated quote or comment, e.g. in a truncated text). Never
/// raises.
pub fn tokens(text: &str) -> (Vec<(i32, usize, usize, bool)>, bool) {
    let out = std::cell::RefCell::new(vec![]);
    let complete = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        scan(text, Reading::Standard, |code, start, raw, _| {
            out.borrow_mut()
                .push((code, start, start + raw.len(), raw.first() == Some(&b'"')))
        });
        true
    }))
    .catch_others(|_| false)
    .execute();
    (out.into_inner(), complete)
}

/// The offset just after the last `;` token of `text` (0 if none): where
/// the statement after it begins, its leading comments included. Never
/// raises: for text that does not lex, `None`. (Used by `compat` where
/// PostgreSQL's statement locations skip leading comments.)
#[allow(dead_code)]
pub fn after_last_semicolon(text: &str) -> Option<usize> {
    pgrx::PgTryBuilder::new(|| {
        let mut end = 0;
        scan(text, Reading::Session, |code, start, _raw, _val| {
            if code == b';' as i32 {
                end = start + 1;
            }
        });
        Some(end)
    })
    .catch_others(|_| None)
    .execute()
}
