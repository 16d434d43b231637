//! Thin adapters between PostgreSQL's hooks and agent_guard.
//!
//! The hook entry points are C (`trampolines.c`, compiled by `build.rs`):
//! they call the previous hook or PostgreSQL's standard routine themselves,
//! so PostgreSQL's own errors never cross a Rust frame and reach the client
//! exactly as without agent_guard (SQLSTATE, CONTEXT, position). They call
//! the `ag_rs_*` functions below only for agent_guard's own work, which is:
//! skip agent_guard's own workers and SPI; ask [`crate::identity`] whether
//! this is an agent session (one atomic load when nothing changed); if so,
//! extract facts and let [`crate::enforce`] decide. The only errors raised
//! here are agent_guard's own refusals (SQLSTATE 42501), in agent sessions.
//!
//! Non-agent sessions pay, per hook, a call into Rust that returns after a
//! few loads and compares.

use agent_guard_core::Facts;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::c_char;

extern "C" {
    /// Statements executing right now (kept by the C trampolines).
    static ag_nesting_level: i32;
    fn ag_install_hooks();
    fn ag_client_address() -> *mut c_char;
    fn ag_in_integrity_query() -> bool;
}

thread_local! {
    /// This process is one of agent_guard's own background workers.
    static OWN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether this process is one of agent_guard's own background workers.
pub fn is_own_worker() -> bool {
    OWN_WORKER.with(|w| w.get())
}

/// How deeply the current statement is nested (0 = top level).
pub fn nesting_level() -> i32 {
    unsafe { ag_nesting_level }
}

/// Install every hook (from `_PG_init`, preload only).
pub fn install() {
    unsafe { ag_install_hooks() }
}

/// Mark this process as one of agent_guard's own background workers (the
/// audit writer, the activity sampler): hooks let their statements pass.
pub fn mark_own_worker() {
    OWN_WORKER.with(|w| w.set(true));
}

/// The client's address (NULL for Unix-socket connections), without SQL.
pub fn client_address() -> Option<String> {
    unsafe {
        let p = ag_client_address();
        if p.is_null() {
            return None;
        }
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        pg_sys::pfree(p.cast());
        Some(s)
    }
}

/// Work agent_guard must not inspect: its own workers and its own SPI.
/// (Parallel workers are not exempt: agents' plans never go parallel, and a
/// parallel worker that finds itself working for an agent refuses.)
/// Processes that never act for a client (autovacuum, startup, checkpointer,
/// ...) pass through too; client backends, WAL senders (replication
/// connections run SQL) and other extensions' background workers do not.
fn pass_through() -> bool {
    use pg_sys::BackendType::*;
    is_own_worker()
        || crate::identity::in_internal()
        || !matches!(
            unsafe { pg_sys::MyBackendType },
            B_BACKEND | B_BG_WORKER | B_WAL_SENDER
        )
}

fn in_parallel_worker() -> bool {
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
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
        && !in_parallel_worker()
        && crate::identity::guard_installed()
}

/// A parallel worker never runs an agent's statement: agents' plans are made
/// without parallelism (see [`ag_rs_planner_before`]); if one got here anyway
/// (a plan made before the session became an agent's), it is refused.
fn refuse_parallel_agent_work() {
    if in_parallel_worker() && !pass_through() && crate::identity::is_agent_session() {
        crate::enforce::refuse(&agent_guard_core::Refusal {
            message: "agent statements do not run in parallel workers".into(),
            detail: "agent_guard plans agents' queries without parallelism so that every statement is checked, masked and audited in the agent's own backend.".into(),
            hint: "Re-run the statement; its new plan will not be parallel.".into(),
            code: "parallel_agent",
        });
    }
}

/// The text of one statement of a (possibly multi-statement) query string.
unsafe fn statement_text(source: *const c_char, location: i32, len: i32) -> String {
    if source.is_null() {
        return String::new();
    }
    let full = unsafe { std::ffi::CStr::from_ptr(source) }.to_string_lossy();
    crate::compat::statement_text(&full, location, len).to_string()
}

/// The top-level query string of the session (for function-call refusals).
pub fn top_level_text() -> String {
    unsafe { statement_text(pg_sys::debug_query_string, -1, 0) }
}

/// Whether the statement being planned or started is one of PostgreSQL's own
/// referential-integrity queries (RI triggers run them as the table owner in
/// a security context of their own) — only those, never what runs nested
/// inside them (triggers, CHECK constraints, functions): see
/// `ag_in_integrity_query` in trampolines.c.
fn integrity_context() -> bool {
    unsafe { ag_in_integrity_query() }
}

#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    unsafe {
        refuse_parallel_agent_work();
        let explain_only = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0;
        if explain_only {
            return;
        }
        let agent = enforcing();
        // A materialized view's population notes what it reads (any session).
        let population = if pass_through() {
            None
        } else {
            crate::masking::population::observe((*query_desc).plannedstmt, agent)
        };
        if !agent && !auditing_humans() {
            return;
        }
        let integrity_check = integrity_context();
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
        if let (true, Some(r)) = (agent, population) {
            crate::enforce::refuse_recorded(&facts, &text, r);
        }
        crate::enforce::record_and_enforce(&facts, &text, query_desc as usize, agent);
    }
}

/// A top-level executor statement starts or resumes running (a portal can
/// be suspended and resumed while others run).
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_top_resume(query_desc: *mut pg_sys::QueryDesc) {
    // agent_guard's own SPI (run from inside a hook) is no statement of the session's
    if !pass_through() {
        crate::statement::set_running_top(query_desc as usize);
    }
}

#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_executor_end(query_desc: *mut pg_sys::QueryDesc) {
    unsafe {
        let key = query_desc as usize;
        if nesting_level() == 0 && crate::identity::cached_is_agent() {
            crate::grants::end_top(key);
        }
        if crate::audit::has_open(key) {
            let estate = (*query_desc).estate;
            let rows = if estate.is_null() {
                None
            } else {
                Some((*estate).es_processed)
            };
            crate::audit::statement_end(key, rows);
        }
    }
}

/// Statements after which every backend must re-read who is an agent
/// (`COMMIT PREPARED` too: the prepared transaction may have changed
/// registrations or labels, and its own backend's bump came at PREPARE,
/// before the change was visible).
fn changes_registry(node: *mut pg_sys::Node) -> bool {
    use pg_sys::NodeTag::*;
    let tag = unsafe { (*node).type_ };
    if tag == T_TransactionStmt {
        let kind = unsafe { (*(node as *mut pg_sys::TransactionStmt)).kind };
        return kind == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED;
    }
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

/// Flags `ag_rs_utility_before` hands to `ag_rs_utility_after`.
const UTILITY_AUDITED: u32 = 1;
const UTILITY_AGENT: u32 = 2;
const UTILITY_CHANGES_REGISTRY: u32 = 4;
const UTILITY_POPULATION: u32 = 8;

#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_utility_before(
    pstmt_ref: *mut *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    _params: pg_sys::ParamListInfo,
) -> u32 {
    unsafe {
        let pstmt = *pstmt_ref;
        let node = (*pstmt).utilityStmt;
        let mut flags = 0;
        if changes_registry(node) {
            flags |= UTILITY_CHANGES_REGISTRY;
        }
        if pass_through() {
            return flags;
        }
        if nesting_level() == 0 {
            crate::statement::set_running_top(0);
        }
        refuse_parallel_agent_work();
        let agent = enforcing();
        let audited = agent || auditing_humans();
        if audited {
            flags |= UTILITY_AUDITED;
            let facts = Facts::Utility(crate::extract::utility_facts(node));
            let text = statement_text(query_string, (*pstmt).stmt_location, (*pstmt).stmt_len);
            let text = crate::audit::StatementText {
                text: &text,
                params: None,
            };
            if agent {
                let masking = crate::masking::refresh::refusal(node)
                    .or_else(|| crate::masking::ddl::refusal(node));
                if let Some(r) = masking {
                    crate::enforce::refuse_recorded(&facts, &text, r);
                }
            }
            crate::enforce::record_and_enforce(&facts, &text, 0, agent);
        }
        // Masking views that would block an ALTER/DROP step aside (regenerated at its end).
        crate::masking::sync::before_utility(node);
        // A materialized view's population records what it reads.
        if crate::masking::population::begin(node) {
            flags |= UTILITY_POPULATION;
        }
        // An agent's COPY of a masked table runs as COPY (SELECT ...), through
        // the masks; EXECUTE finds plans made under old masking rules reset.
        if agent {
            flags |= UTILITY_AGENT;
            crate::masking::rules::rules();
            *pstmt_ref = crate::masking::copy::mask_copy(pstmt);
        }
        flags
    }
}

#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_utility_after(
    original: *mut pg_sys::Node,
    _pstmt: *mut pg_sys::PlannedStmt,
    qc: *mut pg_sys::QueryCompletion,
    flags: u32,
) {
    unsafe {
        if flags & UTILITY_AUDITED != 0 && crate::audit::has_open(0) {
            let rows = if qc.is_null() {
                None
            } else {
                Some((*qc).nprocessed)
            };
            crate::audit::statement_end(0, rows);
        }
        if flags & UTILITY_AGENT != 0 {
            crate::grants::after_utility(original);
        }
        if flags & UTILITY_POPULATION != 0 {
            crate::masking::population::finish(original);
        }
        if flags & UTILITY_CHANGES_REGISTRY != 0 {
            crate::shmem::bump_at_commit();
        }
    }
}

/// Function calls are checked as the executor initialises them (the
/// statement around them already refreshed the session's identity). A call
/// outside any statement is a fast-path call (libpq `PQfn`, the large-object
/// API): it is a statement of its own, classified, checked and recorded.
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_object_access(
    access: pg_sys::ObjectAccessType::Type,
    _class_id: pg_sys::Oid,
    object_id: pg_sys::Oid,
    _sub_id: i32,
    in_statement: bool,
) {
    if access != pg_sys::ObjectAccessType::OAT_FUNCTION_EXECUTE || pass_through() {
        return;
    }
    if in_statement {
        if crate::gucs::enabled() && crate::identity::cached_is_agent() {
            crate::enforce::check_function(object_id);
            crate::masking::activity::check_call(object_id);
        }
    } else if enforcing() || auditing_humans() {
        let agent = crate::identity::cached_is_agent();
        crate::enforce::fast_path_call(object_id, agent);
        if agent && crate::gucs::enabled() {
            crate::masking::activity::check_call(object_id);
        }
    }
}

/// Agents' queries read masked relations through their masks and are
/// planned without parallelism (every statement an agent causes runs in its
/// own backend, where it is checked, masked and audited). Returns the masking
/// views used (an OID list in the current memory context) or NIL.
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_planner_before(
    parse: *mut pg_sys::Query,
    cursor_options: *mut i32,
) -> *mut pg_sys::List {
    unsafe {
        // agent_guard's own SPI in an agent session is not parallel either:
        // a worker would find itself working for an agent and refuse.
        let agent_session = !is_own_worker() && crate::identity::cached_is_agent();
        // Nor is a materialized view's population that could run user code
        // in workers: its nested statements are recorded in this backend.
        if agent_session
            || enforcing()
            || (crate::masking::population::active()
                && crate::masking::population::needs_serial_plan(parse))
        {
            *cursor_options &= !(pg_sys::CURSOR_OPT_PARALLEL_OK as i32);
        }
        if !enforcing() {
            return std::ptr::null_mut();
        }
        if !crate::identity::guard_installed() || integrity_context() {
            return std::ptr::null_mut();
        }
        crate::enforce::check_query_calls(parse);
        let views = crate::masking::rewrite::mask_query(parse);
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for v in views {
            list = pg_sys::lappend_oid(list, v);
        }
        list
    }
}

#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_planner_after(
    stmt: *mut pg_sys::PlannedStmt,
    views: *mut pg_sys::List,
) {
    unsafe {
        let list = pgrx::PgList::<std::ffi::c_void>::from_pg(views);
        let oids: Vec<pg_sys::Oid> = (0..list.len()).filter_map(|i| list.get_oid(i)).collect();
        crate::masking::rewrite::add_dependencies(stmt, &oids);
    }
}

/// In agent sessions, set-returning SQL functions are not inlined into the
/// calling query (PostgreSQL skips inlining for functions a plugin hooks):
/// their bodies are planned by themselves and pass the masking planner hook.
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_needs_fmgr(fn_oid: pg_sys::Oid) -> bool {
    crate::identity::cached_is_agent()
        && !pass_through()
        && (crate::masking::rewrite::inlinable_sql_srf(fn_oid)
            || crate::functions::restricted_implicit_call(fn_oid))
}

/// A call of a function [`ag_rs_needs_fmgr`] flagged starts (or of a SECURITY
/// DEFINER function, or one with SET clauses, in any session): in an agent
/// session, the function rule applies to every call, also to those PostgreSQL
/// makes without an executor check of its own — trigger and event-trigger
/// functions an agent's write or DDL fires.
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_fmgr_start(fn_oid: pg_sys::Oid) {
    if crate::identity::cached_is_agent()
        && !pass_through()
        && crate::gucs::enabled()
        && crate::functions::restricted_implicit_call(fn_oid)
    {
        crate::enforce::check_function(fn_oid);
    }
}

/// A statement is being analysed: in an agent session whose masking rules
/// changed (or that just became an agent's), cached plans are reset before
/// `EXECUTE` or a cursor could reuse one made under the old rules. (A plan
/// reused by a bare Bind of the extended protocol meets the executor backstop.)
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_post_parse_analyze(
    pstate: *mut pg_sys::ParseState,
    query: *mut pg_sys::Query,
) {
    // Only with the statement's own snapshot (catalog reads need one; taking
    // one here could fix a REPEATABLE READ snapshot too early). Utility
    // statements (EXECUTE) are covered in ProcessUtility.
    if unsafe { pg_sys::ActiveSnapshotSet() } && enforcing() && crate::identity::guard_installed() {
        crate::masking::rules::rules();
    }
    // A plannable statement can fail while it is planned (`SELECT 1/0`), before
    // ExecutorStart: with errors kept out of the log it would leave no record.
    unsafe { refuse_unlogged_errors(pstate, query) };
}

/// Refuse an agent's plannable statement as it is analysed while its errors
/// would not be logged (see crate::gucs::errors_unlogged).
unsafe fn refuse_unlogged_errors(pstate: *mut pg_sys::ParseState, query: *mut pg_sys::Query) {
    unsafe {
        if query.is_null()
            || (*query).commandType == pg_sys::CmdType::CMD_UTILITY
            || !crate::gucs::errors_unlogged()
            || !enforcing()
        {
            return;
        }
        let Some(agent) = crate::identity::current_agent() else {
            return;
        };
        let facts = crate::extract::query_facts(query);
        let c = agent_guard_core::classify(&facts);
        let actor = crate::identity::actor(&agent);
        if let Some(agent_guard_core::Decision::Deny(r)) =
            agent_guard_core::policy::unlogged_errors_refusal(&actor, &c)
        {
            let source = if pstate.is_null() {
                std::ptr::null()
            } else {
                (*pstate).p_sourcetext
            };
            let text = statement_text(source, (*query).stmt_location, (*query).stmt_len);
            let text = crate::audit::StatementText {
                text: &text,
                params: None,
            };
            crate::enforce::refuse_recorded(&facts, &text, r);
        }
    }
}

/// The DETAIL that replaces an integrity-constraint violation's as it is
/// raised, or NULL (not an agent session): see crate::masking::errors.
#[no_mangle]
extern "C-unwind" fn ag_rs_row_values_hidden() -> *const c_char {
    crate::masking::errors::row_values_hidden().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Every server-log and client message passes here before it is sent:
/// agent sessions' messages are redacted, errors are remembered for the trail.
#[no_mangle]
#[pg_guard]
unsafe extern "C-unwind" fn ag_rs_emit_log(edata: *mut pg_sys::ErrorData) {
    if is_own_worker() {
        return;
    }
    unsafe {
        crate::masking::errors::on_emit_log(edata);
        crate::audit::on_emit_log(edata);
    }
}
