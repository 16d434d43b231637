//! PostgreSQL's own lexer, for text-level work only (literal redaction,
//! statement fingerprints). Nothing here decides allow or deny.

use pgrx::pg_sys;
use std::ffi::{CStr, CString};

// Token codes from PostgreSQL's gram.h (stable across 13–17).
const IDENT: i32 = 258;
const FCONST: i32 = 260;
const SCONST: i32 = 261;
const USCONST: i32 = 262;
const BCONST: i32 = 263;
const XCONST: i32 = 264;
const ICONST: i32 = 266;

/// One token: its code, byte span in the text, and literal value when it is a constant.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token code (gram.h), for fingerprints of the token stream.
    #[allow(dead_code)]
    pub code: i32,
    pub start: usize,
    pub end: usize,
    pub literal: Option<String>,
}

/// Lex `text` with PostgreSQL's scanner. Stops quietly at the first lexical error.
pub fn tokens(text: &str) -> Vec<Token> {
    let Ok(c) = CString::new(text) else {
        return vec![];
    };
    let mut out = vec![];
    let result = pgrx::PgTryBuilder::new(|| unsafe {
        let mut extra: pg_sys::core_yy_extra_type = std::mem::zeroed();
        let scanner = pg_sys::scanner_init(
            c.as_ptr(),
            &mut extra,
            &raw const pg_sys::ScanKeywords,
            pg_sys::ScanKeywordTokens.as_ptr(),
        );
        let mut toks = vec![];
        loop {
            let mut val: pg_sys::core_YYSTYPE = std::mem::zeroed();
            let mut loc: i32 = 0;
            let code = pg_sys::core_yylex(&mut val, &mut loc, scanner);
            if code == 0 {
                break;
            }
            let start = loc.max(0) as usize;
            // flex leaves a NUL after the current token in scanbuf
            let len = CStr::from_ptr(extra.scanbuf.add(start)).to_bytes().len();
            let literal = match code {
                SCONST | USCONST | BCONST | XCONST | FCONST | IDENT => {
                    if val.str_.is_null() {
                        None
                    } else {
                        Some(CStr::from_ptr(val.str_).to_string_lossy().into_owned())
                    }
                }
                ICONST => Some(val.ival.to_string()),
                _ => None,
            };
            let literal = if code == IDENT { None } else { literal };
            toks.push(Token {
                code,
                start,
                end: (start + len).min(text.len()),
                literal,
            });
        }
        pg_sys::scanner_finish(scanner);
        toks
    })
    .catch_others(|_| vec![])
    .execute();
    out.extend(result);
    out
}

/// Literal spans for [`agent_guard_core::redact::redact`].
pub fn literals(text: &str) -> Vec<agent_guard_core::redact::Literal> {
    tokens(text)
        .into_iter()
        .filter_map(|t| {
            t.literal.map(|value| agent_guard_core::redact::Literal {
                start: t.start,
                end: t.end,
                value,
            })
        })
        .collect()
}

/// The statement text with regulated (or, with `hide_all`, every) literal hidden.
pub fn redact(text: &str, hide_all: bool) -> String {
    agent_guard_core::redact::redact(text, &literals(text), hide_all)
}
