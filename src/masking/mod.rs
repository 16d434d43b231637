//! Inline masking: regulated values reach agent sessions only masked, on
//! every read path.
//!
//! ```text
//! SECURITY LABEL (labels.rs -> label.rs)   validated from PostgreSQL's raw parse tree
//!   -> event triggers (sync.rs)            one masking view per masked relation in
//!                                          agent_guard_masked (security_invoker)
//!   -> rules cache (rules.rs)              per backend, re-read when the generation moves
//!   -> planner hook (rewrite.rs)           every range-table entry of a masked relation,
//!                                          after view expansion, becomes a subquery over
//!                                          the masking view's expressions
//!   -> ExecutorStart (backstop.rs)         a plan that would still read a masked column
//!                                          unmasked is refused (42501)
//! ```
//!
//! Why the planner hook rather than post-parse analysis: PostgreSQL expands
//! views *after* parse analysis (the hole PostgreSQL Anonymizer has: table
//! rules silently not applied through views). The planner hook receives every
//! plannable query once the rewriter has expanded views and applied row-level
//! security: top-level statements, SPI from PL/pgSQL and SECURITY DEFINER
//! functions, SQL function bodies (also SQL-standard ones), cursors,
//! prepared statements and the extended protocol, `COPY (query)`,
//! `CREATE TABLE AS`, `EXPLAIN`. Set-returning SQL functions, which the
//! planner would otherwise inline *inside* planning, are kept from being
//! inlined in agent sessions (`needs_fmgr_hook`), so their bodies are planned
//! on their own and pass the hook too. `COPY t TO` (which has no plan) is
//! rewritten to `COPY (SELECT …) TO` (copy.rs). Masks never run elevated:
//! the masking subquery keeps the original entry's permission checks and
//! row-level security, and mask functions are plain functions of trusted
//! schemas, executed as whoever runs the query.
//!
//! Post-parse analysis still has a part: it is where an agent session notices
//! that the masking rules moved (or that it just became an agent's) before
//! `EXECUTE` or a cursor reuses a plan made under the old rules; the rules
//! cache then resets the backend's plan cache. Label changes also invalidate
//! the labelled relation's relcache entry, so every backend replans.
//!
//! Materialized views are judged by what their population actually read
//! (population.rs records it at every ExecutorStart while one runs;
//! effective.rs derives the taints; the backstop refuses agents' reads of
//! tainted views and refresh.rs their refreshes).
//!
//! Other sessions' query texts (`pg_stat_activity`, `pg_stat_statements`)
//! are masked by the same planner rewrite: their functions' `FROM` entries
//! become redacting subqueries (activity.rs). Writes never store masks
//! (writeback.rs).
//!
//! Errors that quote row values (constraint violations) lose their DETAIL in
//! agent sessions (errors.rs); sensitive-data discovery is discover.rs.

pub mod activity;
pub mod backstop;
pub mod copy;
pub mod ddl;
pub mod discover;
pub mod effective;
pub mod errors;
pub mod functions;
pub mod label;
pub mod population;
pub mod refresh;
pub mod rewrite;
pub mod rules;
pub mod sync;
pub mod writeback;

use pgrx::pg_sys;
use std::ffi::{c_char, CStr, CString};

/// The schema of the generated masking views.
pub const MASKED_SCHEMA: &str = "agent_guard_masked";

/// Install masking's callbacks (from `_PG_init`, preload only).
pub fn init() {}

pub(crate) fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// PostgreSQL's own `quote_identifier`.
pub(crate) fn quote_identifier(name: &str) -> String {
    let c = CString::new(name).unwrap_or_default();
    cstr(unsafe { pg_sys::quote_identifier(c.as_ptr()) }).unwrap_or_default()
}

/// The OID of a relation `schema.name`, if it exists.
pub(crate) fn relation_oid(schema: &str, name: &str) -> Option<pg_sys::Oid> {
    let s = CString::new(schema).ok()?;
    let n = CString::new(name).ok()?;
    unsafe {
        let nsp = pg_sys::get_namespace_oid(s.as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(n.as_ptr(), nsp);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}

/// The owner of a relation (from the relcache).
pub(crate) fn relation_owner(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    unsafe {
        let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return None;
        }
        let owner = (*(*rel).rd_rel).relowner;
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        Some(owner)
    }
}
