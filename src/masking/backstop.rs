//! The executor-level backstop: defence in depth behind the planner rewrite.
//!
//! At ExecutorStart of an agent's statement, every relation entry of the
//! plan is checked. A plan is refused (42501) when it would read
//!
//! - a masked column (or the whole row) of a masked relation through an
//!   entry the rewrite did not mark — e.g. a path that escaped the planner
//!   hook, or a plan another extension produced;
//! - a materialized view built from masked columns that has no masking
//!   labels of its own (its contents were computed from real values);
//! - the TOAST table of a masked relation.
//!
//! A leak is worse than a refusal.

use super::rewrite::is_marked;
use agent_guard_core::Refusal;
use pgrx::pg_sys;
use pgrx::PgList;

fn refusal(message: String, detail: String, hint: &str) -> Refusal {
    Refusal {
        message,
        detail,
        hint: hint.to_string(),
        code: "unmasked_read",
    }
}

/// The refusal for a plan that would read masked data unmasked, if any.
///
/// # Safety
/// `pstmt` must be a valid `PlannedStmt`.
pub unsafe fn unmasked_read(pstmt: *mut pg_sys::PlannedStmt) -> Option<Refusal> {
    let rules = super::rules::rules();
    let agent = crate::identity::cached_agent()
        .map(|a| a.login_name.clone())
        .unwrap_or_default();
    unsafe {
        for rte in PgList::<pg_sys::RangeTblEntry>::from_pg((*pstmt).rtable).iter_ptr() {
            if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
                continue;
            }
            let relid = (*rte).relid;
            let selected =
                crate::extract::bitmap_members(crate::compat::rte_columns(pstmt, rte)[0]);
            if let Some(m) = rules.relation(relid) {
                if is_marked(rte) {
                    continue;
                }
                let cols: Vec<String> = m
                    .columns
                    .iter()
                    .filter(|(a, _)| selected.iter().any(|s| *s == 0 || *s == *a as i32))
                    .map(|(a, _)| {
                        super::cstr(pg_sys::get_attname(relid, *a, true)).unwrap_or_default()
                    })
                    .collect();
                if !cols.is_empty() {
                    let name = rules.name(relid);
                    return Some(refusal(
                        format!(
                            "agent \"{agent}\" may not read masked column {name}.{} unmasked",
                            super::quote_identifier(&cols[0])
                        ),
                        format!(
                            "The plan reads {} of {name} without agent_guard's masks (masked columns reach agents only masked).",
                            cols.iter().map(|c| super::quote_identifier(c)).collect::<Vec<_>>().join(", ")
                        ),
                        "Run the statement again (plans cached before the masking rules changed are replanned). If it is refused again, this read path is not supported for agents; read the table directly.",
                    ));
                }
            } else if let Some(from) = rules.tainted(relid) {
                if !selected.is_empty() {
                    let name = rules.name(relid);
                    return Some(refusal(
                        format!(
                            "agent \"{agent}\" may not read materialized view {name}: it is built from masked columns"
                        ),
                        format!("{name} was computed from real values of {from}, which agents see only masked."),
                        "Label its columns that carry regulated data (SECURITY LABEL FOR agent_guard ON COLUMN ...; see agent_guard.suggest_sensitive()); agents then read it masked.",
                    ));
                }
            } else if let Some(owner) = rules.toast_owner(relid) {
                let name = rules.name(owner);
                return Some(refusal(
                    format!(
                        "agent \"{agent}\" may not read the TOAST table of masked relation {name}"
                    ),
                    "TOAST tables hold raw column values.".into(),
                    "Read the table itself; its masked columns are masked.",
                ));
            }
        }
    }
    None
}
