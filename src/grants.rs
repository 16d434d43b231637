//! Just-in-time grants in the database: requests, human decisions, and the
//! grant lookup that enforcement asks for every write or schema change of an
//! agent.
//!
//! - [`PgGrants`] is the [`GrantSource`] policy consults. It reads the
//!   agent's live grants for each write/ddl statement (no cache, so a
//!   revocation or expiry takes effect at the next statement), with the
//!   latest committed state even inside a REPEATABLE READ transaction, lets
//!   [`agent_guard_core::grants`] judge coverage, and counts the use on the
//!   grant's usage row (row-locked: two sessions cannot both use a
//!   single-use grant). Reads never get here.
//! - Statement fingerprints come from PostgreSQL's own lexer
//!   (`scanner_init`/`core_yylex`, as pg_stat_statements uses it): token codes
//!   and values, hashed with SHA-256.
//! - Nested statements are judged with their top-level statement: the
//!   fingerprint compared is the top-level one, a grant the top-level
//!   statement used covers its nested statements without a second use, and
//!   a refusal suggests a request for the whole top-level statement.
//! - `request_access()`, `approve()`, `deny()`, `revoke()` (sql/grants.sql
//!   wraps them) write the requests and decisions, with four-eyes checks,
//!   row locks so that exactly one concurrent decision wins, and a
//!   `NOTIFY agent_guard` for each.

use crate::identity::{self, AgentRecord};
use crate::identity::{is_member_of, role_name};
use agent_guard_core::grants::{self as core_grants, Grant, Need, Suggestion, Token};
use agent_guard_core::policy::{Actor, GrantSource, GrantUse, NotCovered};
use agent_guard_core::{Classification, Risk};
use pgrx::datum::Interval;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum, PgLogLevel, PgSqlErrorCode};
use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::CString;

// ---- errors --------------------------------------------------------------------

fn fail(code: PgSqlErrorCode, message: String, detail: Option<String>, hint: Option<&str>) -> ! {
    let mut r = ErrorReport::new(code, message, "agent_guard");
    if let Some(d) = detail {
        r = r.set_detail(d);
    }
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

// ---- the top-level statement ------------------------------------------------------

/// What agent_guard knows about the top-level statement being run.
#[derive(Default)]
struct Top {
    /// Its text (the one a single-statement grant's fingerprint is compared with).
    text: Option<String>,
    /// Grants it (or its nested statements) used: they cover its nested statements too.
    used: Vec<i64>,
    /// Relations it and its nested statements write, qualified, for the suggested request.
    objects: Vec<String>,
    /// The highest risk among them.
    risk: Option<Risk>,
}

/// Top-level statements of this session that are open (a suspended portal
/// or cursor stays open while others run), by statement key: the
/// `QueryDesc` of an executor statement, 0 for utility and fast-path calls.
/// Nested statements belong to the one whose execution is on the stack
/// ([`crate::statement::running_top`]), never to the one that started last.
#[derive(Default)]
struct Tops {
    open: Vec<(usize, Top)>,
}

/// How many open top-level statements are remembered (oldest forgotten first).
const TOPS_LIMIT: usize = 64;

impl Tops {
    fn current(&mut self) -> &mut Top {
        let key = crate::statement::running_top();
        match self.open.iter().position(|(k, _)| *k == key) {
            Some(i) => &mut self.open[i].1,
            None => {
                // A statement agent_guard did not see start (e.g. planned
                // before the session became an agent's): it has used nothing.
                self.start(key, Top::default());
                &mut self.open.last_mut().unwrap().1
            }
        }
    }

    fn start(&mut self, key: usize, top: Top) {
        self.open.retain(|(k, _)| *k != key);
        if self.open.len() >= TOPS_LIMIT {
            self.open.remove(0);
        }
        self.open.push((key, top));
    }
}

fn with_top<R>(f: impl FnOnce(&mut Top) -> R) -> R {
    TOP.with(|t| f(t.borrow_mut().current()))
}

/// A top-level statement ended (its `ExecutorEnd`): forget it.
pub fn end_top(key: usize) {
    TOP.with(|t| t.borrow_mut().open.retain(|(k, _)| *k != key));
}

thread_local! {
    static TOP: RefCell<Tops> = RefCell::new(Tops::default());
    /// DDL statements allowed under a grant limited to objects, by nesting
    /// level: what they create is added to the grant when they succeed.
    static DDL_UNDER_GRANT: RefCell<Vec<(i32, i64)>> = const { RefCell::new(Vec::new()) };
}

/// Called for every statement of an agent session before policy decides:
/// a statement at nesting level 0 starts a new top-level statement.
pub fn begin_statement(c: &Classification, key: usize) {
    if crate::hooks::nesting_level() != 0 {
        return;
    }
    crate::statement::set_running_top(key);
    TOP.with(|t| {
        t.borrow_mut().start(
            key,
            Top {
                text: c.statement.clone(),
                ..Top::default()
            },
        )
    });
    DDL_UNDER_GRANT.with(|d| d.borrow_mut().clear());
}

fn note_in_top(c: &Classification) {
    if !matches!(c.risk, Risk::Write | Risk::Ddl) {
        return;
    }
    with_top(|t| {
        for r in &c.written {
            let q = r.qualified();
            if !t.objects.contains(&q) {
                t.objects.push(q);
            }
        }
        t.risk = Some(t.risk.map_or(c.risk, |r| r.max(c.risk)));
    });
}

// ---- fingerprints -------------------------------------------------------------------

thread_local! {
    /// Token codes of PostgreSQL's keywords (they carry no value of their own).
    static KEYWORDS: std::rc::Rc<HashSet<i32>> = std::rc::Rc::new(unsafe {
        let n = pg_sys::ScanKeywords.num_keywords.max(0) as usize;
        let tokens = pg_sys::ScanKeywordTokens.as_ptr();
        (0..n).map(|i| *tokens.add(i) as i32).collect()
    });
}

/// The statement's tokens as the fingerprint sees them.
pub fn tokens(text: &str) -> Vec<Token> {
    use crate::lexer::{BCONST, FCONST, ICONST, IDENT, OP, PARAM, SCONST, XCONST};
    let keywords = KEYWORDS.with(|k| k.clone());
    crate::lexer::lex(text)
        .into_iter()
        .map(|t| {
            let code = t.code;
            let value = if code < 256 || keywords.contains(&code) {
                None
            } else if code == ICONST || code == PARAM {
                t.int_value.map(|v| v.to_string().into_bytes())
            } else if [IDENT, FCONST, SCONST, BCONST, XCONST, OP].contains(&code) {
                Some(t.str_value.unwrap_or(t.raw))
            } else {
                // any other multi-character token: its exact text
                Some(t.raw)
            };
            Token { code, value }
        })
        .collect()
}

/// SHA-256 (hex) of the statement's canonical token stream.
pub fn fingerprint(text: &str) -> String {
    let bytes = core_grants::canonical_tokens(&tokens(text));
    let digest: Vec<u8> = unsafe {
        pgrx::direct_function_call::<Vec<u8>>(pg_sys::sha256_bytea, &[bytes.into_datum()])
    }
    .unwrap_or_default();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly one statement of `text`, as the raw parser delimits it (syntax errors are raised).
fn single_statement(text: &str) -> String {
    let c = CString::new(text)
        .unwrap_or_else(|_| error!("agent_guard: statement text contains a NUL byte"));
    unsafe {
        let raws = pgrx::PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            c.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        if raws.len() != 1 {
            fail(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "statement must be exactly one SQL statement, not {}",
                    raws.len()
                ),
                None,
                Some(
                    "Request one statement at a time, or leave statement out and name the objects.",
                ),
            );
        }
        let raw = raws.get_ptr(0).unwrap();
        crate::compat::statement_text(text, (*raw).stmt_location, (*raw).stmt_len).to_string()
    }
}

// ---- SPI with the latest committed state ------------------------------------------------

/// One result row of [`latest`].
struct Row {
    desc: pg_sys::TupleDesc,
    tuple: pg_sys::HeapTuple,
}

impl Row {
    fn get<T: FromDatum>(&self, col: i32) -> Option<T> {
        unsafe {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(self.tuple, self.desc, col, &mut isnull);
            T::from_datum(d, isnull)
        }
    }
}

thread_local! {
    /// Prepared plans of the grant queries, kept for the session (the plan
    /// cache re-plans them when agent_guard's tables change).
    static PLANS: RefCell<std::collections::HashMap<&'static str, usize>> = RefCell::new(Default::default());
}

/// The session's saved plan for `query` (prepared on first use). Call inside an SPI connection.
unsafe fn saved_plan(query: &'static str, types: &mut [pg_sys::Oid]) -> pg_sys::SPIPlanPtr {
    if let Some(plan) = PLANS.with(|p| p.borrow().get(query).copied()) {
        return plan as pg_sys::SPIPlanPtr;
    }
    let q = CString::new(query).expect("query without NUL");
    unsafe {
        let plan = pg_sys::SPI_prepare(q.as_ptr(), types.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            let code = pg_sys::SPI_result;
            error!("agent_guard: cannot prepare grant query (SPI error {code})");
        }
        if pg_sys::SPI_keepplan(plan) != 0 {
            error!("agent_guard: cannot keep the grant query's plan");
        }
        PLANS.with(|p| p.borrow_mut().insert(query, plan as usize));
        plan
    }
}

/// Run `query` against the latest committed state rather than the
/// transaction's snapshot, so that approvals, revocations and uses by other
/// sessions count at the agent's next statement even in REPEATABLE READ.
/// Runs as agent_guard's own work (hooks pass it through).
fn latest<R>(
    query: &'static str,
    args: Vec<(pg_sys::Oid, Option<pg_sys::Datum>)>,
    read_only: bool,
    mut each: impl FnMut(&Row) -> R,
) -> Vec<R> {
    let each = std::panic::AssertUnwindSafe(&mut each);
    identity::internal(std::panic::AssertUnwindSafe(|| {
        as_guard(std::panic::AssertUnwindSafe(|| {
            Spi::connect(|_client| unsafe {
                let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
                let mut values: Vec<pg_sys::Datum> = args
                    .iter()
                    .map(|a| a.1.unwrap_or(pg_sys::Datum::from(0usize)))
                    .collect();
                let nulls: Vec<std::ffi::c_char> = args
                    .iter()
                    .map(|a| {
                        if a.1.is_some() {
                            b' ' as std::ffi::c_char
                        } else {
                            b'n' as std::ffi::c_char
                        }
                    })
                    .collect();
                let plan = saved_plan(query, &mut types);
                let rc = pg_sys::SPI_execute_snapshot(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    pg_sys::GetLatestSnapshot(),
                    std::ptr::null_mut(),
                    read_only,
                    true,
                    0,
                );
                if rc < 0 {
                    error!("agent_guard: grant query failed (SPI error {rc})");
                }
                let table = pg_sys::SPI_tuptable;
                let mut out = vec![];
                if !table.is_null() {
                    for i in 0..pg_sys::SPI_processed as usize {
                        let row = Row {
                            desc: (*table).tupdesc,
                            tuple: *(*table).vals.add(i),
                        };
                        out.push((each.0)(&row));
                    }
                }
                out
            })
        }))
    }))
}

/// Run `f` as agent_guard's owner would: as the bootstrap superuser (the
/// agent's own role may not read agent_guard's tables), restored afterwards.
/// (Callers run inside [`identity::internal`], which pins the search path.)
fn as_guard<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    pgrx::PgTryBuilder::new(f)
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(user, context) })
        .execute()
}

fn arg<T: IntoDatum>(v: T) -> (pg_sys::Oid, Option<pg_sys::Datum>) {
    (T::type_oid(), v.into_datum())
}

// ---- the grant source ----------------------------------------------------------------

/// The live grants of an agent login, soonest-expiring first. The roles'
/// names must match too: a grant restored from another cluster's dump
/// carries that cluster's OIDs, which may be other roles here.
fn live_grants(agent: pg_sys::Oid, login: pg_sys::Oid) -> Vec<Grant> {
    let (agent_name, login_name) = (identity::role_name(agent), identity::role_name(login));
    latest(
        "SELECT r.id, r.risk, r.objects::pg_catalog.oid[]::pg_catalog.int8[], \
                u.created_objects::pg_catalog.oid[]::pg_catalog.int8[], r.fingerprint, r.max_statements, u.uses \
         FROM agent_guard.access_requests r JOIN agent_guard.grant_usage u ON u.request = r.id \
         WHERE r.agent = $1 AND r.login = $2 AND r.status = 'approved' \
           AND r.agent_name = $3::pg_catalog.name AND r.login_name = $4::pg_catalog.name \
           AND r.expires_at > pg_catalog.clock_timestamp() \
         ORDER BY r.expires_at, r.id",
        vec![arg(agent), arg(login), arg(agent_name.as_str()), arg(login_name.as_str())],
        true,
        |row| {
            let objects = row.get::<Vec<Option<i64>>>(3).map(|v| v.into_iter().flatten().map(|o| o as u32).collect::<Vec<_>>());
            let created: Vec<u32> = row.get::<Vec<Option<i64>>>(4).unwrap_or_default().into_iter().flatten().map(|o| o as u32).collect();
            Grant {
                id: row.get::<i64>(1).unwrap_or_default(),
                risk: row.get::<String>(2).and_then(|r| Risk::parse(&r)).unwrap_or(Risk::Write),
                objects,
                created,
                object_names: vec![],
                fingerprint: row.get::<String>(5),
                max_statements: row.get::<i32>(6).map(i64::from),
                uses: row.get::<i64>(7).unwrap_or_default(),
            }
        },
    )
    .into_iter()
    .map(|mut g| {
        if let Some(objects) = &g.objects {
            g.object_names = objects
                .iter()
                .chain(g.created.iter())
                .filter(|o| unsafe { !pg_sys::get_rel_name(pg_sys::Oid::from(**o)).is_null() })
                .map(|o| crate::extract::relation(pg_sys::Oid::from(*o)).qualified())
                .collect();
        }
        g
    })
    .collect()
}

/// Count one use of grant `g`; false if it was used up meanwhile (or is gone).
fn use_grant(g: &Grant) -> bool {
    !latest(
        "UPDATE agent_guard.grant_usage SET uses = uses + 1, last_used_at = pg_catalog.clock_timestamp() \
         WHERE request = $1 AND ($2::pg_catalog.int8 IS NULL OR uses < $2) RETURNING uses",
        vec![arg(g.id), arg(g.max_statements)],
        false,
        |row| row.get::<i64>(1),
    )
    .is_empty()
}

/// The grants of one agent login, as policy asks for them.
pub struct PgGrants {
    agent: pg_sys::Oid,
    login: pg_sys::Oid,
    /// Enforcement counts uses and tracks the top-level statement;
    /// `classify()` only looks.
    consume: bool,
}

impl PgGrants {
    /// The current session's grants.
    pub fn session(agent: &AgentRecord, consume: bool) -> PgGrants {
        PgGrants {
            agent: agent.agent_oid,
            login: unsafe { pg_sys::GetSessionUserId() },
            consume,
        }
    }

    /// The grants `login` would have (for `classify(as_role)`); never counts a use.
    pub fn of_role(agent: &AgentRecord, login: pg_sys::Oid) -> PgGrants {
        PgGrants {
            agent: agent.agent_oid,
            login,
            consume: false,
        }
    }
}

impl GrantSource for PgGrants {
    fn covering(&self, actor: &Actor, statement: &Classification) -> Option<GrantUse> {
        self.lookup(actor, statement).ok()
    }

    fn lookup(&self, _actor: &Actor, c: &Classification) -> Result<GrantUse, NotCovered> {
        if !unsafe { pg_sys::IsTransactionState() } {
            return Err(NotCovered::default());
        }
        let (text, used) = if self.consume {
            // Outside any client statement (a fastpath function call): nothing
            // from an earlier statement may carry over.
            if unsafe { pg_sys::debug_query_string.is_null() } {
                with_top(|t| *t = Top::default());
            }
            note_in_top(c);
            with_top(|t| (t.text.clone(), t.used.clone()))
        } else {
            (c.statement.clone(), vec![])
        };
        let grants = live_grants(self.agent, self.login);
        // A statement whose meaning depends on standard_conforming_strings
        // has no fingerprint: no single-statement grant covers it.
        let fp = if core_grants::needs_fingerprint(&grants, &used) {
            text.as_deref()
                .filter(|t| crate::lexer::reads_the_same_either_way(t))
                .map(fingerprint)
        } else {
            None
        };
        let need = Need {
            statement: c,
            fingerprint: fp.as_deref(),
            used_by_statement: &used,
        };
        let (ok, misses) = core_grants::covering(&grants, &need);
        let mut why: Vec<String> = misses.iter().map(|m| m.describe()).collect();
        for g in ok {
            if !self.consume {
                return Ok(GrantUse { grant_id: g.id });
            }
            if used.contains(&g.id) || use_grant(g) {
                with_top(|t| {
                    if !t.used.contains(&g.id) {
                        t.used.push(g.id);
                    }
                });
                if c.risk == Risk::Ddl && g.objects.is_some() {
                    let level = crate::hooks::nesting_level();
                    DDL_UNDER_GRANT.with(|d| {
                        let mut d = d.borrow_mut();
                        d.retain(|(l, _)| *l < level);
                        d.push((level, g.id));
                    });
                }
                return Ok(GrantUse { grant_id: g.id });
            }
            why.push(format!(
                "Grant {} was used up by another session meanwhile.",
                g.id
            ));
        }
        let suggestion = self.consume.then(|| {
            with_top(|t| {
                let mut s = Suggestion::for_statement(c);
                if let Some(risk) = t.risk {
                    s.risk = if risk >= Risk::Ddl {
                        Risk::Ddl
                    } else {
                        Risk::Write
                    };
                }
                s.objects = t.objects.clone();
                s.statement = t.text.clone();
                s
            })
        });
        Err(NotCovered { why, suggestion })
    }
}

/// After a utility statement succeeded: a relation it created under a grant
/// limited to objects becomes one of the grant's objects.
///
/// # Safety
/// `node` must be the utility statement that just ran.
pub unsafe fn after_utility(node: *mut pg_sys::Node) {
    let level = crate::hooks::nesting_level();
    let grant = DDL_UNDER_GRANT.with(|d| {
        let mut d = d.borrow_mut();
        d.retain(|(l, _)| *l <= level);
        match d.last() {
            Some((l, g)) if *l == level => {
                let g = *g;
                d.pop();
                Some(g)
            }
            _ => None,
        }
    });
    let Some(grant) = grant else { return };
    let Some(created) = (unsafe { created_relation(node) }) else {
        return;
    };
    latest(
        "UPDATE agent_guard.grant_usage \
         SET created_objects = pg_catalog.array_append(created_objects, $2::pg_catalog.regclass) \
         WHERE request = $1 AND NOT ($2::pg_catalog.regclass = ANY (created_objects)) RETURNING 1",
        vec![arg(grant), arg(created)],
        false,
        |_| (),
    );
}

/// The relation a CREATE statement made, if it made one.
unsafe fn created_relation(node: *mut pg_sys::Node) -> Option<pg_sys::Oid> {
    use pg_sys::NodeTag::*;
    unsafe {
        let lookup = |rv: *mut pg_sys::RangeVar| -> Option<pg_sys::Oid> {
            if rv.is_null() {
                return None;
            }
            let oid = pg_sys::RangeVarGetRelidExtended(
                rv,
                pg_sys::NoLock as i32,
                pg_sys::RVROption::RVR_MISSING_OK,
                None,
                std::ptr::null_mut(),
            );
            (oid != pg_sys::InvalidOid).then_some(oid)
        };
        match (*node).type_ {
            T_CreateStmt => lookup((*(node as *mut pg_sys::CreateStmt)).relation),
            T_CreateForeignTableStmt => lookup(
                (*(node as *mut pg_sys::CreateForeignTableStmt))
                    .base
                    .relation,
            ),
            T_CreateTableAsStmt => {
                let into = (*(node as *mut pg_sys::CreateTableAsStmt)).into;
                if into.is_null() {
                    None
                } else {
                    lookup((*into).rel)
                }
            }
            T_ViewStmt => lookup((*(node as *mut pg_sys::ViewStmt)).view),
            T_CreateSeqStmt => lookup((*(node as *mut pg_sys::CreateSeqStmt)).sequence),
            T_IndexStmt => {
                let s = node as *mut pg_sys::IndexStmt;
                let table = lookup((*s).relation)?;
                if (*s).idxname.is_null() {
                    return None;
                }
                let oid = pg_sys::get_relname_relid((*s).idxname, pg_sys::get_rel_namespace(table));
                (oid != pg_sys::InvalidOid).then_some(oid)
            }
            _ => None,
        }
    }
}

// ---- requests and decisions ------------------------------------------------------------

/// `NOTIFY agent_guard, '<json>'` about request `id` (delivered at commit),
/// and the same event in the audit trail.
fn notify(id: i64, event: &str) {
    let who = role_name(unsafe { pg_sys::GetSessionUserId() });
    crate::audit::record_event(
        &format!("ACCESS REQUEST {}", event.to_uppercase()),
        agent_guard_core::Risk::Privilege,
        vec![format!("agent_guard.access_requests {id}")],
        &format!("request {id}: {event} by {who}"),
    );
    let event = event.to_string();
    identity::internal(move || {
        Spi::run_with_args(
            "WITH p AS ( \
               SELECT pg_catalog.jsonb_build_object( \
                 'event', $2::pg_catalog.text, 'request', r.id, 'database', r.database_name, \
                 'agent', r.agent_name, 'requester', r.login_name, 'sponsor', r.sponsor_name, \
                 'risk', r.risk, 'status', r.status, 'expires_at', r.expires_at, \
                 'max_statements', r.max_statements, 'request_id', r.request_id, \
                 'decided_by', COALESCE(r.revoked_by, r.decided_by)) AS brief, \
               pg_catalog.jsonb_build_object( \
                 'objects', (SELECT pg_catalog.jsonb_agg(pg_catalog.format('%I.%I', n.nspname, c.relname)) \
                             FROM pg_catalog.unnest(r.objects) AS o(oid) \
                             JOIN pg_catalog.pg_class c ON c.oid = o.oid \
                             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace), \
                 'reason', pg_catalog.left(r.reason, 1000), 'ttl', r.ttl::pg_catalog.text, \
                 'statement', pg_catalog.left(r.statement, 1000), \
                 'note', pg_catalog.left(COALESCE(r.revoke_note, r.decision_note), 1000)) AS more \
               FROM agent_guard.access_requests r WHERE r.id = $1) \
             SELECT pg_catalog.pg_notify('agent_guard', \
                 CASE WHEN pg_catalog.octet_length((brief || more)::pg_catalog.text) < 7900 \
                      THEN (brief || more)::pg_catalog.text \
                      ELSE (brief || '{\"truncated\": true}'::pg_catalog.jsonb)::pg_catalog.text END) \
             FROM p",
            &[id.into(), event.as_str().into()],
        )
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot send the notification: {e}"));
}

/// An agent asks for a grant.
#[pg_extern(name = "_request_access")]
fn request_access(
    risk: &str,
    objects: Option<Vec<Option<pg_sys::Oid>>>,
    reason: Option<&str>,
    ttl: Option<Interval>,
    statement: Option<&str>,
) -> i64 {
    let Some(agent) = identity::current_agent() else {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "agent_guard.request_access() is for agent sessions; role \"{}\" is not a registered agent",
                role_name(unsafe { pg_sys::GetSessionUserId() })
            ),
            None,
            Some("Human sessions need no grant. Register an agent with agent_guard.register_agent()."),
        );
    };
    let Some(risk_value) = Risk::parse(risk) else {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown risk \"{risk}\""),
            None,
            Some("Request 'write' (data changes) or 'ddl' (schema changes, which include writes)."),
        );
    };
    if let Err(why) = core_grants::check_grantable(risk_value) {
        let code = if risk_value > Risk::Ddl {
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
        } else {
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
        };
        fail(
            code,
            format!(
                "agent \"{}\" may not request {risk_value} access: {why}",
                agent.agent_name
            ),
            None,
            None,
        );
    }
    let objects: Option<Vec<pg_sys::Oid>> = objects.map(|list| {
        let mut out: Vec<pg_sys::Oid> = vec![];
        for o in list {
            let Some(o) = o else {
                fail(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    "objects must not contain NULL".into(),
                    None,
                    None,
                );
            };
            let rel = crate::extract::relation(o);
            if agent_guard_core::classify::is_protected_schema(&rel.schema) {
                fail(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "{} is never granted to agents: PostgreSQL's catalogs and agent_guard's own objects are changed by humans only",
                        rel.qualified()
                    ),
                    None,
                    Some("Writes and schema changes of pg_catalog, pg_toast, information_schema and agent_guard are administration."),
                );
            }
            if !out.contains(&o) {
                out.push(o);
            }
        }
        out
    });
    if objects.as_ref().is_some_and(|o| o.is_empty()) {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "objects must name at least one relation, or be NULL for any".into(),
            None,
            None,
        );
    }
    let ttl = ttl.filter(|t| t.as_micros() > 0).unwrap_or_else(|| {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "ttl must be a positive interval".into(),
            None,
            None,
        )
    });
    let (statement, fingerprint) = match statement.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => {
            let one = single_statement(s);
            if !crate::lexer::reads_the_same_either_way(&one) {
                fail(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    "the statement reads differently with standard_conforming_strings off: it cannot be approved as one statement".into(),
                    Some("A backslash in a '...' string means itself with the standard setting and escapes the next character otherwise, so the approver could read another statement than the one that would run.".into()),
                    Some("Write backslashes in E'...' strings (E'\\\\' for one backslash), or request the objects instead of the statement."),
                );
            }
            let fp = fingerprint(&one);
            (Some(one), Some(fp))
        }
        None => (None, None),
    };
    let (request_id, traceparent) = identity::correlation();
    let login = unsafe { pg_sys::GetSessionUserId() };
    let lifetime = crate::gucs::request_lifetime_secs();
    let args: Vec<pgrx::datum::DatumWithOid> = vec![
        agent.agent_oid.into(),
        agent.agent_name.as_str().into(),
        login.into(),
        agent.login_name.as_str().into(),
        agent.sponsor.into(),
        agent.label.sponsor_name.as_str().into(),
        request_id.as_deref().into(),
        traceparent.as_deref().into(),
        risk_value.as_str().into(),
        objects.into(),
        reason.into(),
        ttl.into(),
        statement.as_deref().into(),
        fingerprint.as_deref().into(),
        lifetime.into(),
    ];
    let id = identity::internal(std::panic::AssertUnwindSafe(|| {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO agent_guard.access_requests (agent, agent_name, login, login_name, sponsor, sponsor_name, \
                 request_id, traceparent, risk, objects, reason, ttl, statement, fingerprint, answer_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::pg_catalog.regclass[], $11, $12, $13, $14, \
                 pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => $15)) \
             RETURNING id",
            &args,
        )
    }))
    .unwrap_or_else(|e| error!("agent_guard: cannot record the request: {e}"))
    .unwrap_or_else(|| error!("agent_guard: cannot record the request"));
    notify(id, "request");
    id
}

/// A request row, locked for a decision.
struct Locked {
    status: String,
    agent: pg_sys::Oid,
    agent_name: String,
    login: pg_sys::Oid,
    sponsor: pg_sys::Oid,
    sponsor_name: String,
    risk: Risk,
    has_statement: bool,
    unanswered_too_long: bool,
    grant_expired: bool,
    decided_by: Option<String>,
    revoked_by: Option<String>,
    /// The requested relations (none: any).
    objects: Vec<pg_sys::Oid>,
}

fn lock_request(id: i64) -> Locked {
    let row = identity::internal(move || {
        Spi::connect_mut(|client| {
            let t = client.update(
                "SELECT status, agent, agent_name::pg_catalog.text, login, sponsor, sponsor_name::pg_catalog.text, risk, \
                        statement IS NOT NULL, answer_by <= pg_catalog.clock_timestamp(), \
                        COALESCE(expires_at <= pg_catalog.clock_timestamp(), false), \
                        decided_by::pg_catalog.text, revoked_by::pg_catalog.text, objects::pg_catalog.oid[] \
                 FROM agent_guard.access_requests WHERE id = $1 FOR UPDATE",
                None,
                &[id.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let r = t.first();
            Ok(Some(Locked {
                status: r.get::<String>(1)?.unwrap_or_default(),
                agent: r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                agent_name: r.get::<String>(3)?.unwrap_or_default(),
                login: r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                sponsor: r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                sponsor_name: r.get::<String>(6)?.unwrap_or_default(),
                risk: r.get::<String>(7)?.and_then(|s| Risk::parse(&s)).unwrap_or(Risk::Ddl),
                has_statement: r.get::<bool>(8)?.unwrap_or(false),
                unanswered_too_long: r.get::<bool>(9)?.unwrap_or(false),
                grant_expired: r.get::<bool>(10)?.unwrap_or(false),
                decided_by: r.get::<String>(11)?,
                revoked_by: r.get::<String>(12)?,
                objects: r
                    .get::<Vec<Option<pg_sys::Oid>>>(13)?
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect(),
            }))
        })
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot read request {id}: {e}"));
    row.unwrap_or_else(|| {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("request {id} does not exist"),
            None,
            None,
        )
    })
}

/// Refuse to decide a request that is not pending any more.
fn require_pending(id: i64, r: &Locked) {
    let decided = |what: &str, by: &Option<String>| -> ! {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "request {id} was already {what} by {}",
                by.as_deref().unwrap_or("someone")
            ),
            None,
            Some("See agent_guard.requests for its state."),
        )
    };
    match r.status.as_str() {
        "pending" if r.unanswered_too_long => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "request {id} has expired: it was not decided within agent_guard.request_lifetime"
            ),
            None,
            Some("The agent can file a new request."),
        ),
        "pending" => {}
        "approved" => decided("approved", &r.decided_by),
        "denied" => decided("denied", &r.decided_by),
        _ => decided("revoked", &r.revoked_by),
    }
}

/// Who decides: (outer role, session user). Agents never do.
fn human_decider(action: &str) -> (pg_sys::Oid, pg_sys::Oid) {
    if let Some(a) = identity::current_agent() {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "agent sessions may not {action} requests (this session is agent \"{}\")",
                a.agent_name
            ),
            None,
            Some("Four eyes: a human member of agent_guard_approver decides."),
        );
    }
    unsafe { (pg_sys::GetOuterUserId(), pg_sys::GetSessionUserId()) }
}

fn is_approver(role: pg_sys::Oid) -> bool {
    let superuser = unsafe { pg_sys::superuser_arg(role) };
    superuser || is_member_of(role, c"agent_guard_approver")
}

fn require_approver(role: pg_sys::Oid, action: &str, id: i64) {
    if !is_approver(role) {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {action} request {id}: role \"{}\" is not a member of agent_guard_approver", role_name(role)),
            None,
            Some("Ask a superuser to GRANT agent_guard_approver to you."),
        );
    }
}

/// Four eyes: neither the caller nor the session is, or acts as, the requesting agent.
fn require_not_the_agent(id: i64, r: &Locked, caller: pg_sys::Oid, session: pg_sys::Oid) {
    for who in [caller, session] {
        let is_agent = who == r.agent
            || who == r.login
            || (r.agent != pg_sys::InvalidOid
                && unsafe { pg_sys::is_member_of_role_nosuper(who, r.agent) });
        if is_agent {
            fail(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "role \"{}\" may not decide on request {id} of agent \"{}\": it is that agent",
                    role_name(who),
                    r.agent_name
                ),
                None,
                Some("Four eyes: a human other than the agent decides."),
            );
        }
    }
}

fn positive(ttl: &Interval) -> bool {
    ttl.as_micros() > 0
}

/// A human approver approves a pending request; returns the grant id.
#[pg_extern(name = "_approve")]
fn approve(
    request: i64,
    ttl: Option<Interval>,
    note: Option<&str>,
    max_statements: Option<i32>,
) -> i64 {
    let (caller, session) = human_decider("approve");
    require_approver(caller, "approve", request);
    let r = lock_request(request);
    require_pending(request, &r);
    require_not_the_agent(request, &r, caller, session);
    // requests filed before catalogs were protected, or by a direct insert
    for o in &r.objects {
        let rel = crate::extract::relation(*o);
        if agent_guard_core::classify::is_protected_schema(&rel.schema) {
            fail(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "request {request} names {}, which is never granted to agents",
                    rel.qualified()
                ),
                Some("Writes and schema changes of PostgreSQL's catalogs (pg_catalog, pg_toast, information_schema) and of agent_guard are administration; no grant covers them.".into()),
                Some("Deny the request; a human administrator must make such a change."),
            );
        }
    }
    let rule = crate::gucs::require_distinct_sponsor();
    if rule.applies(r.risk) {
        // the sponsor recorded with the request and the agent's sponsor now
        let current = identity::agent_of_role(r.agent).map(|a| a.sponsor);
        for who in [caller, session] {
            if who == r.sponsor || Some(who) == current {
                fail(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "role \"{}\" may not approve request {request}: it sponsors the requesting agent \"{}\"",
                        role_name(who),
                        r.agent_name
                    ),
                    Some(format!(
                        "agent_guard.require_distinct_sponsor = {}: {} requests need an approver other than the agent's sponsor (\"{}\").",
                        rule.as_str(),
                        r.risk,
                        r.sponsor_name
                    )),
                    Some("Ask another member of agent_guard_approver."),
                );
            }
        }
    }
    if let Some(t) = &ttl {
        if !positive(t) {
            fail(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "ttl must be a positive interval".into(),
                None,
                None,
            );
        }
    }
    if max_statements.is_some_and(|m| m < 1) {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "max_statements must be at least 1".into(),
            None,
            None,
        );
    }
    let max = max_statements.or(r.has_statement.then_some(1));
    let approver = role_name(caller);
    let args: Vec<pgrx::datum::DatumWithOid> = vec![
        request.into(),
        ttl.into(),
        note.into(),
        max.into(),
        approver.as_str().into(),
    ];
    identity::internal(std::panic::AssertUnwindSafe(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE agent_guard.access_requests SET status = 'approved', decided_by = $5, \
                     decided_at = pg_catalog.clock_timestamp(), decision_note = $3, \
                     expires_at = pg_catalog.clock_timestamp() + COALESCE($2, ttl), max_statements = $4 \
                 WHERE id = $1 AND status = 'pending'",
                None,
                &args,
            )?;
            client.update("INSERT INTO agent_guard.grant_usage (request) VALUES ($1)", None, &[request.into()])?;
            Ok::<_, pgrx::spi::Error>(())
        })
    }))
    .unwrap_or_else(|e| error!("agent_guard: cannot record the approval: {e}"));
    notify(request, "approved");
    request
}

/// A human approver denies a pending request.
#[pg_extern(name = "_deny")]
fn deny(request: i64, note: Option<&str>) {
    let (caller, session) = human_decider("deny");
    require_approver(caller, "deny", request);
    let r = lock_request(request);
    require_pending(request, &r);
    require_not_the_agent(request, &r, caller, session);
    let by = role_name(caller);
    let args: Vec<pgrx::datum::DatumWithOid> =
        vec![request.into(), note.into(), by.as_str().into()];
    identity::internal(std::panic::AssertUnwindSafe(|| {
        Spi::run_with_args(
            "UPDATE agent_guard.access_requests SET status = 'denied', decided_by = $3, \
                 decided_at = pg_catalog.clock_timestamp(), decision_note = $2 \
             WHERE id = $1 AND status = 'pending'",
            &args,
        )
    }))
    .unwrap_or_else(|e| error!("agent_guard: cannot record the denial: {e}"));
    notify(request, "denied");
}

/// Revoke a grant (or withdraw a pending request): approvers, administrators
/// and the agent's sponsor may.
#[pg_extern(name = "_revoke")]
fn revoke(grant_or_request: i64, note: Option<&str>) {
    let id = grant_or_request;
    let (caller, _session) = human_decider("revoke");
    let r = lock_request(id);
    let allowed =
        is_approver(caller) || is_member_of(caller, c"agent_guard_admin") || caller == r.sponsor;
    if !allowed {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to revoke grant {id}: role \"{}\" is neither a member of agent_guard_approver or agent_guard_admin nor the agent's sponsor",
                role_name(caller)
            ),
            None,
            None,
        );
    }
    match r.status.as_str() {
        "pending" => require_pending(id, &r),
        "approved" if r.grant_expired => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("grant {id} has already expired"),
            None,
            None,
        ),
        "approved" => {}
        "denied" => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "request {id} was denied by {}; there is no grant to revoke",
                r.decided_by.as_deref().unwrap_or("someone")
            ),
            None,
            None,
        ),
        _ => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "grant {id} was already revoked by {}",
                r.revoked_by.as_deref().unwrap_or("someone")
            ),
            None,
            None,
        ),
    }
    let by = role_name(caller);
    let args: Vec<pgrx::datum::DatumWithOid> = vec![id.into(), note.into(), by.as_str().into()];
    identity::internal(std::panic::AssertUnwindSafe(|| {
        Spi::run_with_args(
            "UPDATE agent_guard.access_requests SET status = 'revoked', revoked_by = $3, \
                 revoked_at = pg_catalog.clock_timestamp(), revoke_note = $2 \
             WHERE id = $1 AND status IN ('pending', 'approved')",
            &args,
        )
    }))
    .unwrap_or_else(|e| error!("agent_guard: cannot record the revocation: {e}"));
    notify(id, "revoked");
}

/// The fingerprint agent_guard computes for a statement (for tests and for
/// people comparing a request with what ran).
#[pg_extern(name = "statement_fingerprint", parallel_safe)]
fn statement_fingerprint(statement: &str) -> String {
    fingerprint(&single_statement(statement))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn fp(sql: &str) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT agent_guard.statement_fingerprint($1)",
            &[sql.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn fingerprints_ignore_whitespace_comments_case_and_literal_formatting() {
        let base = fp("DELETE FROM orders WHERE id = 7 AND note = 'it''s'");
        assert_eq!(base.len(), 64);
        for same in [
            "delete   from ORDERS\n where id=7 and note='it''s';",
            "/* request_id='x' */ DELETE FROM orders -- trailing\n WHERE id = 007 AND note = E'it\\'s'",
            "DELETE FROM orders WHERE id = 7 AND note = $$it's$$",
        ] {
            assert_eq!(fp(same), base, "{same}");
        }
        for different in [
            "DELETE FROM orders WHERE id = 8 AND note = 'it''s'",
            "DELETE FROM \"Orders\" WHERE id = 7 AND note = 'it''s'",
            "DELETE FROM orders WHERE id = 7 OR note = 'it''s'",
            "DELETE FROM orders WHERE id >= 7 AND note = 'it''s'",
            "DELETE FROM orders WHERE id = 7 AND note = 'its'",
        ] {
            assert_ne!(fp(different), base, "{different}");
        }
    }

    #[pg_test(error = "statement must be exactly one SQL statement, not 2")]
    fn fingerprints_are_of_one_statement() {
        fp("SELECT 1; SELECT 2");
    }
}
