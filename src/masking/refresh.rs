//! `REFRESH MATERIALIZED VIEW` by an agent, of a materialized view computed
//! from masked columns, is refused: in an agent session its query would read
//! masked values, and the view — which humans read too — would be rewritten
//! with masks in place of real data. (Reads of such views are handled by the
//! backstop; creating one is a copy, like `CREATE TABLE AS`.)

use agent_guard_core::Refusal;
use pgrx::is_a;
use pgrx::pg_sys::{self, NodeTag};

/// The refusal for an agent's utility statement that masking cannot allow.
///
/// # Safety
/// `node` must be a valid utility parse node.
pub unsafe fn refusal(node: *mut pg_sys::Node) -> Option<Refusal> {
    unsafe {
        if !is_a(node, NodeTag::T_RefreshMatViewStmt) {
            return None;
        }
        let rv = (*(node as *mut pg_sys::RefreshMatViewStmt)).relation;
        let relid = crate::extract::range_var_relid(rv)?;
        let rules = super::rules::rules();
        let from = rules.built_from_masked(relid)?;
        let name = crate::extract::relation(relid).qualified();
        Some(Refusal {
            message: format!(
                "agents may not refresh materialized view {name}: it is computed from masked columns"
            ),
            detail: format!(
                "Refreshed by an agent, {name} would be computed from the masked values of {from} and keep them, for every reader."
            ),
            hint: "A human can refresh it.".into(),
            code: "masked_refresh",
        })
    }
}
