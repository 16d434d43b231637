//! PostgreSQL's own lexer, for text-level work only: literal redaction in the
//! audit trail and statement fingerprints for single-statement grants.
//! Nothing here decides allow or deny.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

// Token codes from PostgreSQL's gram.h (the same in 13–17).
pub const IDENT: i32 = 258;
const UIDENT: i32 = 259;
pub const FCONST: i32 = 260;
pub const SCONST: i32 = 261;
const USCONST: i32 = 262;
pub const BCONST: i32 = 263;
pub const XCONST: i32 = 264;
pub const OP: i32 = 265;
pub const ICONST: i32 = 266;
pub const PARAM: i32 = 267;

/// One token as the scanner returns it.
#[derive(Clone, Debug)]
pub struct Lexeme {
    pub code: i32,
    /// Byte offset in the text.
    pub start: usize,
    /// The token's text as written.
    pub raw: Vec<u8>,
    /// The scanner's value for identifiers, string/bit/float constants and operators.
    pub str_value: Option<Vec<u8>>,
    /// The scanner's value for integer constants and `$n` parameters.
    pub int_value: Option<i32>,
}

impl Lexeme {
    pub fn end(&self) -> usize {
        self.start + self.raw.len()
    }

    fn literal(&self) -> Option<String> {
        match self.code {
            SCONST | USCONST | BCONST | XCONST | FCONST => self
                .str_value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            ICONST => self.int_value.map(|v| v.to_string()),
            _ => None,
        }
    }
}

/// Lex `text` with PostgreSQL's scanner. Raises PostgreSQL's error for
/// unlexable text (e.g. an unterminated quote) and for NUL bytes.
pub fn lex(text: &str) -> Vec<Lexeme> {
    let c = CString::new(text)
        .unwrap_or_else(|_| error!("agent_guard: statement text contains a NUL byte"));
    let mut out = vec![];
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
            let raw = CStr::from_ptr(extra.scanbuf.add(start)).to_bytes().to_vec();
            let str_value = match code {
                IDENT | UIDENT | FCONST | SCONST | USCONST | BCONST | XCONST | OP
                    if !val.str_.is_null() =>
                {
                    Some(CStr::from_ptr(val.str_).to_bytes().to_vec())
                }
                _ => None,
            };
            let int_value = matches!(code, ICONST | PARAM).then_some(val.ival);
            out.push(Lexeme {
                code,
                start,
                raw,
                str_value,
                int_value,
            });
        }
        pg_sys::scanner_finish(scanner);
    }
    out
}

/// Literal spans for [`agent_guard_core::redact::redact`]; empty if the text does not lex.
pub fn literals(text: &str) -> Vec<agent_guard_core::redact::Literal> {
    let text = text.to_string();
    pgrx::PgTryBuilder::new(move || {
        lex(&text)
            .into_iter()
            .filter_map(|t| {
                let value = t.literal()?;
                Some(agent_guard_core::redact::Literal {
                    start: t.start,
                    end: t.end(),
                    value,
                })
            })
            .collect()
    })
    .catch_others(|_| vec![])
    .execute()
}

/// The statement text with regulated (or, with `hide_all`, every) literal hidden.
pub fn redact(text: &str, hide_all: bool) -> String {
    agent_guard_core::redact::redact(text, &literals(text), hide_all)
}
