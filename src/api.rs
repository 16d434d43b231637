//! SQL functions for people and tools: version, status, classify, context.

use crate::extract;
use agent_guard_core::{classify as classify_facts, decide, Classification, Decision, Facts, Risk};
use pgrx::prelude::*;
use pgrx::{is_a, JsonB, PgList};
use std::ffi::CString;

/// The extension's version.
#[pg_extern(immutable, parallel_safe)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Whether the library was loaded by shared_preload_libraries (used by the install script).
#[pg_extern(parallel_safe)]
fn _preloaded() -> bool {
    crate::hooks_active()
}

/// Hooks, settings, the session's identity and agent_guard's background
/// workers (the audit writers and the activity sampler, as they run now), as jsonb.
#[pg_extern(parallel_safe)]
fn status() -> JsonB {
    JsonB(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hooks_active": crate::hooks_active(),
        "registry_generation": crate::shmem::generation(),
        "settings": crate::gucs::settings(),
        "session_is_agent": crate::identity::current_agent().is_some(),
        "background_workers": {
            "audit_writers": crate::audit::writers_status(),
            "activity_sampler": crate::review::sampler_status(),
        },
    }))
}

/// The execution context of the calling statement, as jsonb.
#[pg_extern(parallel_safe)]
fn current_context() -> JsonB {
    // The function runs one level below the statement that called it.
    JsonB(crate::identity::context_json(
        (crate::hooks::nesting_level() - 1).max(0),
    ))
}

/// Whether the calling session is an agent session.
#[pg_extern(parallel_safe)]
fn is_agent_session() -> bool {
    crate::identity::current_agent().is_some()
}

/// Status of a sponsor role: active, nologin, expired or dropped (also when
/// no role is given: a registration whose sponsor no longer exists here).
#[pg_extern(parallel_safe)]
fn sponsor_status(sponsor: Option<pg_sys::Oid>) -> &'static str {
    match sponsor {
        Some(oid) => crate::identity::sponsor_status(oid).as_str(),
        None => agent_guard_core::SponsorStatus::Dropped.as_str(),
    }
}

thread_local! {
    static CLASSIFYING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// `classify()` is planning a statement it will not run: the planner's checks
/// of an agent's calls ([`crate::enforce::check_query_calls`]) report instead of refusing.
pub fn classifying() -> bool {
    CLASSIFYING.with(|f| f.get() > 0)
}

/// Classify every Query a raw statement analyses and rewrites into; the riskiest wins.
///
/// This is the run-time path replayed without running anything: a utility
/// statement is judged from its parse node ([`extract::utility_facts`], as
/// ProcessUtility judges it), every query the statement would plan — itself,
/// or the query of EXPLAIN, DECLARE CURSOR, CREATE TABLE AS, `COPY (query)`,
/// a prepared statement — from its plan ([`extract::plan_facts`], as
/// ExecutorStart judges it), and every function it would call with
/// [`crate::functions`], as the object-access hook judges each call. `caller`
/// is the role the statement would run as (`as_role`, or the current user).
unsafe fn classify_raw(
    raw: *mut pg_sys::RawStmt,
    sql: &CString,
    caller: pg_sys::Oid,
) -> Classification {
    unsafe {
        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
            raw,
            sql.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        let sensitive = crate::labels::sensitive_columns();
        let mut best: Option<Classification> = None;
        for query in PgList::<pg_sys::Query>::from_pg(queries).iter_ptr() {
            let c = classify_facts(&query_to_facts(query, sql, &sensitive, caller));
            best = Some(match best {
                Some(b) if b.risk >= c.risk => b,
                _ => c,
            });
        }
        best.unwrap_or_else(|| classify_facts(&Facts::Plan(agent_guard_core::PlanFacts::select())))
    }
}

/// Facts of an analysed query the statement carries (planned when plannable).
unsafe fn inner_facts(
    node: *mut pg_sys::Node,
    sql: &CString,
    sensitive: &crate::labels::SensitiveColumns,
    caller: pg_sys::Oid,
) -> Option<Box<Facts>> {
    unsafe {
        if !is_a(node, pg_sys::NodeTag::T_Query) {
            return None;
        }
        // planning scribbles on its input: work on a copy
        let copy = pg_sys::copyObjectImpl(node as *const std::ffi::c_void) as *mut pg_sys::Query;
        Some(Box::new(query_to_facts(copy, sql, sensitive, caller)))
    }
}

unsafe fn query_to_facts(
    query: *mut pg_sys::Query,
    sql: &CString,
    sensitive: &crate::labels::SensitiveColumns,
    caller: pg_sys::Oid,
) -> Facts {
    use pg_sys::NodeTag::*;
    unsafe {
        let superuser = pg_sys::superuser_arg(caller);
        if (*query).commandType == pg_sys::CmdType::CMD_UTILITY {
            let node = (*query).utilityStmt;
            let mut u = extract::utility_facts(node);
            u.runs_as_superuser = superuser;
            match (*node).type_ {
                // EXECUTE: classify the prepared statement it runs.
                T_ExecuteStmt => {
                    let name = (*(node as *mut pg_sys::ExecuteStmt)).name;
                    let prepared = pg_sys::FetchPreparedStatement(name, true);
                    let inner =
                        PgList::<pg_sys::Query>::from_pg((*(*prepared).plansource).query_list);
                    if let Some(q) = inner.head() {
                        u.inner = inner_facts(q as *mut pg_sys::Node, sql, sensitive, caller);
                    }
                }
                T_ExplainStmt => {
                    let q = (*(node as *mut pg_sys::ExplainStmt)).query;
                    u.inner = inner_facts(q, sql, sensitive, caller).or(u.inner);
                }
                T_DeclareCursorStmt => {
                    let q = (*(node as *mut pg_sys::DeclareCursorStmt)).query;
                    u.inner = inner_facts(q, sql, sensitive, caller).or(u.inner);
                }
                T_CreateTableAsStmt => {
                    let q = (*(node as *mut pg_sys::CreateTableAsStmt)).query;
                    u.inner = inner_facts(q, sql, sensitive, caller);
                }
                // COPY (query) TO: the query is raw; analyse it as COPY does.
                T_CopyStmt => {
                    let s = node as *mut pg_sys::CopyStmt;
                    if !(*s).query.is_null() {
                        let raw = pg_sys::palloc0(std::mem::size_of::<pg_sys::RawStmt>())
                            as *mut pg_sys::RawStmt;
                        (*raw).type_ = T_RawStmt;
                        (*raw).stmt = pg_sys::copyObjectImpl((*s).query as *const std::ffi::c_void)
                            as *mut pg_sys::Node;
                        (*raw).stmt_location = -1;
                        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
                            raw,
                            sql.as_ptr(),
                            std::ptr::null_mut(),
                            0,
                            std::ptr::null_mut(),
                        );
                        if let Some(q) = PgList::<pg_sys::Query>::from_pg(queries).head() {
                            u.inner = Some(Box::new(query_to_facts(q, sql, sensitive, caller)));
                        }
                    }
                }
                // CALL: the procedure and its arguments are called.
                T_CallStmt => {
                    let f = (*(node as *mut pg_sys::CallStmt)).funcexpr;
                    if !f.is_null() {
                        u.functions = crate::functions::call_facts(f as *mut pg_sys::Node);
                    }
                }
                _ => {}
            }
            return Facts::Utility(u);
        }
        // The planner may rewrite the tree: collect calls first.
        let functions = crate::functions::call_facts(query as *mut pg_sys::Node);
        let plan = pg_sys::pg_plan_query(
            query,
            sql.as_ptr(),
            pg_sys::CURSOR_OPT_PARALLEL_OK as i32,
            std::ptr::null_mut(),
        );
        let mut facts = extract::plan_facts(plan, sensitive, false);
        facts.functions = functions;
        facts.runs_as_superuser = superuser;
        Facts::Plan(facts)
    }
}

fn decision_for(c: &Classification, as_role: Option<pg_sys::Oid>) -> Decision {
    match as_role {
        None => crate::enforce::decide_current_with(c, false),
        Some(role) => match crate::identity::agent_of_role(role) {
            None => Decision::NotEnforced,
            Some(agent) => {
                let actor = crate::identity::actor(&agent);
                let session = crate::enforce::SessionState {
                    guard_installed: true,
                    database: crate::identity::database_name(),
                    on_standby: crate::identity::on_standby(),
                    ..Default::default()
                };
                decide(
                    Some(&actor),
                    &session,
                    c,
                    &crate::grants::PgGrants::of_role(&agent, role),
                )
            }
        },
    }
}

/// One statement of a multi-statement string, by the raw parser's location and length.
fn statement_slice(sql: &str, location: i32, len: i32) -> Option<String> {
    Some(crate::compat::statement_text(sql, location, len).to_string()).filter(|s| !s.is_empty())
}

/// Classify each statement of `sql` without running it (the same code enforcement uses).
#[pg_extern(name = "_classify")]
#[allow(clippy::type_complexity)]
fn classify_sql(
    sql: &str,
    as_role: Option<pg_sys::Oid>,
) -> TableIterator<
    'static,
    (
        name!(statement_no, i32),
        name!(command, String),
        name!(risk, String),
        name!(objects, Vec<String>),
        name!(sensitive_columns, Vec<String>),
        name!(decision, String),
        name!(reason, String),
    ),
> {
    let csql = CString::new(sql)
        .unwrap_or_else(|_| error!("agent_guard.classify: the SQL text contains a NUL byte"));
    let mut rows = vec![];
    unsafe {
        let raws = pg_sys::raw_parser(csql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        for (i, raw) in PgList::<pg_sys::RawStmt>::from_pg(raws)
            .iter_ptr()
            .enumerate()
        {
            let caller = as_role.unwrap_or_else(|| pg_sys::GetUserId());
            CLASSIFYING.with(|f| f.set(f.get() + 1));
            let mut c = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
                classify_raw(raw, &csql, caller)
            }))
            .finally(|| CLASSIFYING.with(|f| f.set(f.get().saturating_sub(1))))
            .execute();
            c.statement = statement_slice(sql, (*raw).stmt_location, (*raw).stmt_len);
            let d = decision_for(&c, as_role);
            let (decision, reason) = match &d {
                Decision::NotEnforced => (
                    "allowed".to_string(),
                    format!("not an agent session; {}", c.reason),
                ),
                Decision::Allow { grant: Some(g), .. } => (
                    "allowed".to_string(),
                    format!("{}; covered by grant {}", c.reason, g.grant_id),
                ),
                Decision::Allow { .. } => ("allowed".to_string(), c.reason.clone()),
                Decision::Deny(r) => ("denied".to_string(), r.message.clone()),
            };
            rows.push((
                i as i32 + 1,
                c.command.clone(),
                c.risk.as_str().to_string(),
                c.objects.clone(),
                c.sensitive_columns.clone(),
                decision,
                reason,
            ));
        }
    }
    let _ = Risk::Read;
    TableIterator::new(rows)
}
