//! Other sessions' query texts reach agents redacted, or not at all.
//!
//! A superuser agent (or one in `pg_read_all_stats`) reads every session's
//! current statement in `pg_stat_activity.query`, and `pg_stat_statements`
//! keeps statement texts too (utility statements with their literals).
//! Those texts come from shared memory only through PostgreSQL's
//! `pg_stat_get_activity` and `pg_stat_get_backend_activity`, and from
//! pg_stat_statements' query file only through its module's functions. So
//! the rule is on those implementations — recognised by what they run
//! (`prosrc` of an internal function; the library `probin` of a C function),
//! not by their SQL names — and every route to them is covered: the views
//! (`pg_stat_activity`, `pg_stat_statements`, views of one's own over them),
//! the functions under any name or schema, SQL and PL/pgSQL functions
//! reading them (planned through the same hook).
//!
//! - In an agent's query, a `FROM` entry calling `pg_stat_get_activity` or a
//!   pg_stat_statements function becomes `SELECT …, agent_guard.redact_query(query), …
//!   FROM <the same entry>`: the `query` column reads redacted (every
//!   literal replaced, comments dropped; see `agent_guard_core::query_text`).
//! - Called anywhere else (in a target list, a WHERE clause, an argument),
//!   they are refused at planning; `pg_stat_get_backend_activity` is refused
//!   whenever an agent calls it (checked as the executor initialises the
//!   call, so inlined SQL functions and fast-path calls are covered).

use agent_guard_core::query_text::{self, Token, TokenKind};
use agent_guard_core::Refusal;
use pgrx::pg_sys::{self, NodeTag};
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::{c_void, CStr};

/// How a function reads query texts.
pub enum QueryText {
    /// Set-returning: these output columns (attribute numbers of its result) hold query texts.
    Columns(Vec<i16>),
    /// Returns one session's query text: refused for agents.
    Refuse,
}

const INTERNAL_LANGUAGE: u32 = 12;
const C_LANGUAGE: u32 = 13;

unsafe fn proc_text(tup: pg_sys::HeapTuple, attr: u32) -> Option<String> {
    unsafe {
        let mut isnull = false;
        let d = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            tup,
            attr as pg_sys::AttrNumber,
            &mut isnull,
        );
        if isnull {
            return None;
        }
        let p = pg_sys::text_to_cstring(d.cast_mut_ptr());
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        pg_sys::pfree(p.cast());
        Some(s)
    }
}

/// Whether (and how) function `func` reads other sessions' query texts.
pub fn query_text(func: pg_sys::Oid) -> Option<QueryText> {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(func),
        );
        if tup.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tup);
        let lang = (*form).prolang.to_u32();
        let reader = match lang {
            INTERNAL_LANGUAGE => match proc_text(tup, pg_sys::Anum_pg_proc_prosrc).as_deref() {
                Some("pg_stat_get_backend_activity") => {
                    pg_sys::ReleaseSysCache(tup);
                    return Some(QueryText::Refuse);
                }
                Some("pg_stat_get_activity") => true,
                _ => false,
            },
            C_LANGUAGE => proc_text(tup, pg_sys::Anum_pg_proc_probin).is_some_and(|bin| {
                let file = bin.rsplit('/').next().unwrap_or(&bin);
                let file = file.strip_suffix(".so").unwrap_or(file);
                file == "pg_stat_statements"
            }),
            _ => false,
        };
        if !reader {
            pg_sys::ReleaseSysCache(tup);
            return None;
        }
        let desc = pg_sys::build_function_result_tupdesc_t(tup);
        pg_sys::ReleaseSysCache(tup);
        if desc.is_null() {
            return None;
        }
        let mut cols = vec![];
        for i in 0..(*desc).natts as usize {
            let att = crate::compat::tuple_desc_attr(desc, i);
            if CStr::from_ptr((*att).attname.data.as_ptr()).to_bytes() == b"query" {
                cols.push(i as i16 + 1);
            }
        }
        (!cols.is_empty()).then_some(QueryText::Columns(cols))
    }
}

/// The refusal for an agent's call of a query-text function outside `FROM`.
pub fn refusal(func: pg_sys::Oid) -> Refusal {
    let name = unsafe { super::cstr(pg_sys::get_func_name(func)) }.unwrap_or_default();
    Refusal {
        message: format!(
            "agents may not call {name}() here: it returns other sessions' query texts"
        ),
        detail: "Query texts of other sessions (their literals too) reach agents only redacted, through pg_stat_activity, pg_stat_statements or a FROM clause calling their functions.".into(),
        hint: "Select from pg_stat_activity (or pg_stat_statements): their query column is redacted for agents.".into(),
        code: "query_text",
    }
}

/// For the object-access check of an agent's function call.
pub fn check_call(func: pg_sys::Oid) {
    if let Some(QueryText::Refuse) = query_text(func) {
        crate::enforce::refuse(&refusal(func));
    }
}

/// `agent_guard.redact_query` (NULL if the extension lacks it).
fn redact_function() -> pg_sys::Oid {
    unsafe {
        let names = [c"agent_guard", c"redact_query"];
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for n in names {
            list = pg_sys::lappend(list, pg_sys::makeString(pg_sys::pstrdup(n.as_ptr())).cast());
        }
        let args = [pg_sys::TEXTOID];
        pg_sys::LookupFuncName(list, 1, args.as_ptr(), true)
    }
}

/// Whether a `FROM` entry calls a query-text function at its top level;
/// if so, turn it into a subquery over a copy of itself whose query-text
/// columns are redacted, and return true. `walk` visits the expressions
/// left to mask (the functions' arguments).
///
/// # Safety
/// `rte` must be a valid RTE_FUNCTION entry of a query being planned.
pub unsafe fn mask_function_entry(
    rte: *mut pg_sys::RangeTblEntry,
    mut walk: impl FnMut(*mut pg_sys::Node),
) -> bool {
    unsafe {
        // output columns (of the entry) to redact
        let mut offset: i32 = 0;
        let mut redacted: Vec<i32> = vec![];
        let mut any = false;
        let funcs: Vec<*mut pg_sys::RangeTblFunction> =
            PgList::<pg_sys::RangeTblFunction>::from_pg((*rte).functions)
                .iter_ptr()
                .collect();
        for f in &funcs {
            let e = (**f).funcexpr;
            if !e.is_null() && (*e).type_ == NodeTag::T_FuncExpr {
                let fe = e as *mut pg_sys::FuncExpr;
                match query_text((*fe).funcid) {
                    Some(QueryText::Columns(cols)) => {
                        any = true;
                        redacted.extend(cols.iter().map(|c| offset + *c as i32));
                        walk((*fe).args as *mut pg_sys::Node);
                    }
                    Some(QueryText::Refuse) => crate::enforce::refuse(&refusal((*fe).funcid)),
                    None => walk(e),
                }
            } else {
                walk(e);
            }
            offset += (**f).funccolcount;
        }
        if !any {
            return false;
        }
        let redact = redact_function();
        if redact == pg_sys::InvalidOid {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "agent_guard cannot redact other sessions' query texts: agent_guard.redact_query(text) is missing",
                "Run ALTER EXTENSION agent_guard UPDATE, or reinstall it."
            );
        }
        let inner = pg_sys::copyObjectImpl(rte as *const c_void) as *mut pg_sys::RangeTblEntry;
        (*inner).security_barrier = true;
        (*inner).lateral = false;
        // the functions' arguments now sit one query level deeper
        pg_sys::IncrementVarSublevelsUp((*inner).functions as *mut pg_sys::Node, 1, 0);
        let mut names: *mut pg_sys::List = std::ptr::null_mut();
        let mut vars: *mut pg_sys::List = std::ptr::null_mut();
        crate::compat::expand_rte(inner, 1, 0, &mut names, &mut vars);
        let names = PgList::<pg_sys::Node>::from_pg(names);
        let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
        for (i, v) in PgList::<pg_sys::Node>::from_pg(vars).iter_ptr().enumerate() {
            let resno = i as i32 + 1;
            let mut expr = v;
            if redacted.contains(&resno) {
                if pg_sys::exprType(v) != pg_sys::TEXTOID {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        "agent_guard cannot redact a query-text column that is not of type text"
                    );
                }
                expr = pg_sys::makeFuncExpr(
                    redact,
                    pg_sys::TEXTOID,
                    pg_sys::lappend(std::ptr::null_mut(), v.cast()),
                    pg_sys::InvalidOid,
                    pg_sys::DEFAULT_COLLATION_OID,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                ) as *mut pg_sys::Node;
            }
            let name = names
                .get_ptr(i)
                .filter(|n| !n.is_null() && (**n).type_ == NodeTag::T_String)
                .map(|n| (*(n as *mut pg_sys::String)).sval)
                .unwrap_or(std::ptr::null_mut());
            let name = if name.is_null() {
                c"?column?".as_ptr().cast_mut()
            } else {
                name
            };
            tlist = pg_sys::lappend(
                tlist,
                pg_sys::makeTargetEntry(
                    expr as *mut pg_sys::Expr,
                    resno as i16,
                    pg_sys::pstrdup(name),
                    false,
                )
                .cast(),
            );
        }
        let sub = pg_sys::palloc0(std::mem::size_of::<pg_sys::Query>()) as *mut pg_sys::Query;
        (*sub).type_ = NodeTag::T_Query;
        (*sub).commandType = pg_sys::CmdType::CMD_SELECT;
        (*sub).querySource = pg_sys::QuerySource::QSRC_ORIGINAL;
        (*sub).canSetTag = true;
        (*sub).stmt_location = -1;
        (*sub).rtable = pg_sys::lappend(std::ptr::null_mut(), inner.cast());
        let rtr =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
        (*rtr).type_ = NodeTag::T_RangeTblRef;
        (*rtr).rtindex = 1;
        (*sub).jointree = pg_sys::makeFromExpr(
            pg_sys::lappend(std::ptr::null_mut(), rtr.cast()),
            std::ptr::null_mut(),
        );
        (*sub).targetList = tlist;
        (*sub).hasSubLinks = pg_sys::checkExprHasSubLink((*inner).functions as *mut pg_sys::Node);
        (*rte).rtekind = pg_sys::RTEKind::RTE_SUBQUERY;
        (*rte).subquery = sub;
        (*rte).functions = std::ptr::null_mut();
        (*rte).funcordinality = false;
        (*rte).security_barrier = false;
        true
    }
}

/// What an agent reads of a query text (see `agent_guard_core::query_text`).
#[pg_extern(name = "redact_query", stable, strict, parallel_safe)]
fn redact_query(text: &str) -> String {
    let (tokens, complete) = crate::lexer::tokens(text);
    let tokens: Vec<Token> = tokens
        .into_iter()
        .map(|(code, start, end, quoted)| Token {
            start,
            end,
            kind: match code {
                crate::lexer::SCONST
                | crate::lexer::FCONST
                | crate::lexer::BCONST
                | crate::lexer::XCONST
                | crate::lexer::ICONST
                | crate::lexer::USCONST => TokenKind::Literal,
                crate::lexer::IDENT if quoted => TokenKind::QuotedIdentifier,
                crate::lexer::UIDENT => TokenKind::QuotedIdentifier,
                _ => TokenKind::Other,
            },
        })
        .collect();
    query_text::redact_query_text(text, &tokens, complete)
}
