//! Thin adapters between PostgreSQL's hooks and agent_guard.
//!
//! Each hook: skip our own SPI, parallel and background workers; ask
//! [`crate::identity`] whether this is an agent session (one atomic load
//! when nothing changed); if so, extract facts and let [`crate::enforce`]
//! decide; then pass control on, to the previous hook through
//! `pg_guard_ffi_boundary` or to PostgreSQL's standard routine.

use agent_guard_core::Facts;
use pgrx::pg_sys::{self, ffi::pg_guard_ffi_boundary};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::cell::Cell;

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREV_OBJECT_ACCESS: pg_sys::object_access_hook_type = None;
static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_NEEDS_FMGR: pg_sys::needs_fmgr_hook_type = None;
static mut PREV_POST_PARSE_ANALYZE: pg_sys::post_parse_analyze_hook_type = None;

thread_local! {
    /// Statements currently running (executor runs and utility commands): the nesting level.
    static DEPTH: Cell<i32> = const { Cell::new(0) };
}

/// How deeply the current statement is nested (0 = top level).
pub fn nesting_level() -> i32 {
    DEPTH.with(|d| d.get())
}

pub fn install() {
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREV_OBJECT_ACCESS = pg_sys::object_access_hook;
        pg_sys::object_access_hook = Some(object_access);
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_NEEDS_FMGR = pg_sys::needs_fmgr_hook;
        pg_sys::needs_fmgr_hook = Some(needs_fmgr);
        PREV_POST_PARSE_ANALYZE = pg_sys::post_parse_analyze_hook;
        pg_sys::post_parse_analyze_hook = Some(post_parse_analyze);
    }
}

/// Work agent_guard must not inspect: its own SPI, parallel workers, background workers.
fn pass_through() -> bool {
    (unsafe { pg_sys::ParallelWorkerNumber >= 0 || pg_sys::IsBackgroundWorker })
        || crate::identity::in_internal()
}

/// Run `f` one nesting level deeper, restoring the level on error too.
/// The level matters only where statements are recorded (agent sessions, or
/// humans under agent_guard.audit_non_agents); elsewhere `f` runs directly,
/// without the cost of an error trap.
fn nested<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let tracked = crate::identity::cached_is_agent()
        || !matches!(
            crate::gucs::audit_non_agents(),
            crate::gucs::NonAgentAudit::None
        );
    if !tracked {
        return f();
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    PgTryBuilder::new(f)
        .finally(|| DEPTH.with(|d| d.set(d.get() - 1)))
        .execute()
}

fn enforcing() -> bool {
    !pass_through() && crate::gucs::enabled() && crate::identity::is_agent_session()
}

/// Human sessions are audited too when agent_guard.audit_non_agents asks for it.
fn auditing_humans() -> bool {
    !matches!(
        crate::gucs::audit_non_agents(),
        crate::gucs::NonAgentAudit::None
    ) && !pass_through()
        && crate::identity::guard_installed()
}

/// The text of one statement of a (possibly multi-statement) query string.
unsafe fn statement_text(source: *const std::ffi::c_char, location: i32, len: i32) -> String {
    if source.is_null() {
        return String::new();
    }
    let full = unsafe { std::ffi::CStr::from_ptr(source) }.to_string_lossy();
    let start = if location > 0 {
        (location as usize).min(full.len())
    } else {
        0
    };
    let end = if len > 0 {
        (start + len as usize).min(full.len())
    } else {
        full.len()
    };
    full.get(start..end).unwrap_or(&full).trim().to_string()
}

/// The top-level query string of the session (for function-call refusals).
pub fn top_level_text() -> String {
    unsafe { statement_text(pg_sys::debug_query_string, -1, 0) }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    unsafe {
        let explain_only = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0;
        let agent = !explain_only && enforcing();
        if agent || (!explain_only && auditing_humans()) {
            let mut user = pg_sys::InvalidOid;
            let mut sec_context = 0;
            pg_sys::GetUserIdAndSecContext(&mut user, &mut sec_context);
            let integrity_check = sec_context & pg_sys::SECURITY_NOFORCE_RLS as i32 != 0;
            let facts = Facts::Plan(crate::extract::plan_facts(
                (*query_desc).plannedstmt,
                &crate::labels::sensitive_columns(),
                integrity_check,
            ));
            let pstmt = (*query_desc).plannedstmt;
            let text = statement_text(
                (*query_desc).sourceText,
                (*pstmt).stmt_location,
                (*pstmt).stmt_len,
            );
            let params = crate::audit::params_as_text((*query_desc).params);
            let text = crate::audit::StatementText {
                text: &text,
                params,
            };
            // Masking backstop: a plan reading masked data unmasked is refused.
            if agent && !integrity_check {
                if let Some(r) = crate::masking::backstop::unmasked_read(pstmt) {
                    crate::enforce::refuse_recorded(&facts, &text, r);
                }
            }
            crate::enforce::record_and_enforce(&facts, &text, query_desc as usize, agent);
        }
        match PREV_EXECUTOR_START {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc, eflags)),
            None => pg_sys::standard_ExecutorStart(query_desc, eflags),
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    let qd = query_desc as usize;
    nested(move || unsafe {
        let query_desc = qd as *mut pg_sys::QueryDesc;
        match PREV_EXECUTOR_RUN {
            Some(prev) => {
                pg_guard_ffi_boundary(|| prev(query_desc, direction, count, execute_once))
            }
            None => pg_sys::standard_ExecutorRun(query_desc, direction, count, execute_once),
        }
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    let qd = query_desc as usize;
    nested(move || unsafe {
        let query_desc = qd as *mut pg_sys::QueryDesc;
        match PREV_EXECUTOR_FINISH {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc)),
            None => pg_sys::standard_ExecutorFinish(query_desc),
        }
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    unsafe {
        let key = query_desc as usize;
        if crate::audit::has_open(key) {
            let estate = (*query_desc).estate;
            let rows = if estate.is_null() {
                None
            } else {
                Some((*estate).es_processed)
            };
            crate::audit::statement_end(key, rows);
        }
        match PREV_EXECUTOR_END {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc)),
            None => pg_sys::standard_ExecutorEnd(query_desc),
        }
    }
}

/// Statements after which every backend must re-read who is an agent.
fn changes_registry(node: *mut pg_sys::Node) -> bool {
    use pg_sys::NodeTag::*;
    let tag = unsafe { (*node).type_ };
    matches!(
        tag,
        T_CreateRoleStmt
            | T_AlterRoleStmt
            | T_DropRoleStmt
            | T_GrantRoleStmt
            | T_RenameStmt
            | T_CreateExtensionStmt
            | T_AlterExtensionStmt
            | T_DropStmt
            | T_ReassignOwnedStmt
    )
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        let node = (*pstmt).utilityStmt;
        let agent = enforcing();
        let audited = agent || auditing_humans();
        if audited {
            let facts = Facts::Utility(crate::extract::utility_facts(node));
            let text = statement_text(query_string, (*pstmt).stmt_location, (*pstmt).stmt_len);
            let text = crate::audit::StatementText {
                text: &text,
                params: None,
            };
            if agent {
                if let Some(r) = crate::masking::refresh::refusal(node) {
                    crate::enforce::refuse_recorded(&facts, &text, r);
                }
            }
            crate::enforce::record_and_enforce(&facts, &text, 0, agent);
        }
        let changes = changes_registry(node);
        if !pass_through() {
            // Masking views that would block an ALTER/DROP step aside (regenerated at its end).
            crate::masking::sync::before_utility(node);
        }
        // An agent's COPY of a masked table runs as COPY (SELECT ...), through
        // the masks; EXECUTE finds plans made under old masking rules reset.
        let pstmt = if agent {
            crate::masking::rules::rules();
            crate::masking::copy::mask_copy(pstmt)
        } else {
            pstmt
        };
        let (p, q, pa, qe, de, qcp) = (
            pstmt as usize,
            query_string as usize,
            params as usize,
            query_env as usize,
            dest as usize,
            qc as usize,
        );
        nested(move || {
            let (pstmt, query_string, params, query_env, dest, qc) = (
                p as *mut pg_sys::PlannedStmt,
                q as *const std::ffi::c_char,
                pa as pg_sys::ParamListInfo,
                qe as *mut pg_sys::QueryEnvironment,
                de as *mut pg_sys::DestReceiver,
                qcp as *mut pg_sys::QueryCompletion,
            );
            match PREV_PROCESS_UTILITY {
                Some(prev) => pg_guard_ffi_boundary(|| {
                    prev(
                        pstmt,
                        query_string,
                        read_only_tree,
                        context,
                        params,
                        query_env,
                        dest,
                        qc,
                    )
                }),
                None => pg_sys::standard_ProcessUtility(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
            }
        });
        if audited && crate::audit::has_open(0) {
            let rows = if qc.is_null() {
                None
            } else {
                Some((*qc).nprocessed)
            };
            crate::audit::statement_end(0, rows);
        }
        if agent {
            crate::grants::after_utility(node);
        }
        if changes {
            crate::shmem::bump_at_commit();
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn object_access(
    access: pg_sys::ObjectAccessType::Type,
    class_id: pg_sys::Oid,
    object_id: pg_sys::Oid,
    sub_id: i32,
    arg: *mut std::ffi::c_void,
) {
    unsafe {
        if let Some(prev) = PREV_OBJECT_ACCESS {
            pg_guard_ffi_boundary(|| prev(access, class_id, object_id, sub_id, arg));
        }
        // Function calls are checked as the executor initialises them; the
        // statement around them already refreshed the session's identity.
        if access == pg_sys::ObjectAccessType::OAT_FUNCTION_EXECUTE
            && !pass_through()
            && crate::gucs::enabled()
            && crate::identity::cached_is_agent()
        {
            crate::enforce::check_function(object_id);
        }
    }
}

/// Whether the statement being planned is a referential-integrity check
/// (PostgreSQL's RI triggers run as the table owner with this context).
fn integrity_context() -> bool {
    let mut user = pg_sys::InvalidOid;
    let mut sec_context = 0;
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec_context) };
    sec_context & pg_sys::SECURITY_NOFORCE_RLS as i32 != 0
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: i32,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    unsafe {
        // Agents' queries read masked relations through their masks.
        let views = if enforcing() && crate::identity::guard_installed() && !integrity_context() {
            crate::masking::rewrite::mask_query(parse)
        } else {
            vec![]
        };
        let stmt = match PREV_PLANNER {
            Some(prev) => {
                pg_guard_ffi_boundary(|| prev(parse, query_string, cursor_options, bound_params))
            }
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        };
        crate::masking::rewrite::add_dependencies(stmt, &views);
        stmt
    }
}

/// In agent sessions, set-returning SQL functions are not inlined into the
/// calling query (PostgreSQL skips inlining for functions a plugin hooks):
/// their bodies are planned by themselves and pass the masking planner hook.
#[pg_guard]
unsafe extern "C-unwind" fn needs_fmgr(fn_oid: pg_sys::Oid) -> bool {
    unsafe {
        if let Some(prev) = PREV_NEEDS_FMGR {
            if pg_guard_ffi_boundary(|| prev(fn_oid)) {
                return true;
            }
        }
    }
    crate::identity::cached_is_agent()
        && !pass_through()
        && crate::masking::rewrite::inlinable_sql_srf(fn_oid)
}

/// A statement is being analysed: in an agent session whose masking rules
/// changed (or that just became an agent's), cached plans are reset before
/// `EXECUTE` or a cursor could reuse one made under the old rules. (A plan
/// reused by a bare Bind of the extended protocol meets the executor backstop.)
#[pg_guard]
unsafe extern "C-unwind" fn post_parse_analyze(
    pstate: *mut pg_sys::ParseState,
    query: *mut pg_sys::Query,
    jstate: *mut pg_sys::JumbleState,
) {
    unsafe {
        if let Some(prev) = PREV_POST_PARSE_ANALYZE {
            pg_guard_ffi_boundary(|| prev(pstate, query, jstate));
        }
    }
    // Only with the statement's own snapshot (catalog reads need one; taking
    // one here could fix a REPEATABLE READ snapshot too early). Utility
    // statements (EXECUTE) are covered in ProcessUtility.
    if unsafe { pg_sys::ActiveSnapshotSet() } && enforcing() && crate::identity::guard_installed() {
        crate::masking::rules::rules();
    }
}
