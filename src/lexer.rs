//! PostgreSQL's own lexer, for text-level work only: literal redaction in the
//! audit trail and statement fingerprints for single-statement grants.
//! Nothing here decides allow or deny.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

// Token codes from PostgreSQL's gram.h (the same in 13–17).
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

/// Run PostgreSQL's scanner over `text`, calling `f(code, start, raw, value)`
/// for each token. Raises PostgreSQL's error for unlexable text (e.g. an
/// unterminated quote) and for NUL bytes.
fn scan(text: &str, mut f: impl FnMut(i32, usize, &[u8], &pg_sys::core_YYSTYPE)) {
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

/// Lex `text` with PostgreSQL's scanner. Raises PostgreSQL's error for
/// unlexable text (e.g. an unterminated quote) and for NUL bytes.
pub fn lex(text: &str) -> Vec<Lexeme> {
    let mut out = vec![];
    scan(text, |code, _start, raw, val| {
        out.push(Lexeme {
            code,
            raw: raw.to_vec(),
            str_value: str_value(code, val).map(<[u8]>::to_vec),
            int_value: matches!(code, ICONST | PARAM).then_some(unsafe { val.ival }),
        })
    });
    out
}

/// Literal spans for [`agent_guard_core::redact::redact`]; empty if the text does not lex.
pub fn literals(text: &str) -> Vec<agent_guard_core::redact::Literal> {
    pgrx::PgTryBuilder::new(|| {
        let mut out = vec![];
        scan(text, |code, start, raw, val| {
            let value = match code {
                SCONST | USCONST | BCONST | XCONST | FCONST => {
                    str_value(code, val).map(|v| String::from_utf8_lossy(v).into_owned())
                }
                ICONST => Some(unsafe { val.ival }.to_string()),
                _ => None,
            };
            if let Some(value) = value {
                out.push(agent_guard_core::redact::Literal {
                    start,
                    end: start + raw.len(),
                    value,
                });
            }
        });
        out
    })
    .catch_others(|_| vec![])
    .execute()
}

/// The statement text with regulated (or, with `hide_all`, every) literal hidden.
pub fn redact(text: &str, hide_all: bool) -> String {
    if !hide_all && !agent_guard_core::redact::may_hold_regulated(text) {
        return text.to_string();
    }
    agent_guard_core::redact::redact(text, &literals(text), hide_all)
}

/// The tokens of `text` as (code, start, end, raw starts with a double
/// quote), as far as the text lexes; the flag is false when the rest does
/// not (an unterminated quote or comment, e.g. in a truncated text). Never
/// raises.
pub fn tokens(text: &str) -> (Vec<(i32, usize, usize, bool)>, bool) {
    let out = std::cell::RefCell::new(vec![]);
    let complete = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        scan(text, |code, start, raw, _| {
            out.borrow_mut()
                .push((code, start, start + raw.len(), raw.first() == Some(&b'"')))
        });
        true
    }))
    .catch_others(|_| false)
    .execute();
    (out.into_inner(), complete)
}
