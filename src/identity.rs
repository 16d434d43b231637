//! Who is acting: the session's agent, its sponsor, and the execution context.
//!
//! The agent registry is a set of security labels on roles in the shared
//! catalog `pg_shseclabel`, so it is the same in every database of the
//! cluster. A backend reads it once and again only when the shared generation
//! counter moves; the sponsor's ability to log in is looked up in the role
//! syscache for every agent statement, so a departed sponsor cuts the agent
//! off at its next statement.

use agent_guard_core::label::{parse_agent_label, AgentLabel};
use agent_guard_core::{Actor, SessionState, SponsorStatus};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::rc::Rc;

/// A registered agent, as this backend last read it.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    /// The role carrying the registration (the login role or a group it belongs to).
    pub agent_oid: pg_sys::Oid,
    pub agent_name: String,
    pub login_name: String,
    pub label: AgentLabel,
    /// The sponsor's role in this cluster (see
    /// [`agent_guard_core::label::resolve_sponsor`]); InvalidOid when no role
    /// is the sponsor any more (dropped).
    pub sponsor: pg_sys::Oid,
    /// Set when no label makes the role an agent, but a row of this
    /// database's agent registry that no label confirms points at it: why.
    /// Such a session fails closed (see [`crate::registry::unverified_suspects`]).
    pub unverified: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    valid: bool,
    generation: u64,
    session_user: pg_sys::Oid,
    agent: Option<Rc<AgentRecord>>,
    /// The login role itself is the agent (not a superuser impersonating one).
    agent_is_login: bool,
    guard_installed: bool,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static INTERNAL: Cell<u32> = const { Cell::new(0) };
}

/// Run `f` as agent_guard's own work: hooks pass such statements through,
/// and its SQL runs with `search_path = pg_catalog, pg_temp`
/// ([`crate::search_path`]). The depth is restored even when `f` raises an error.
pub fn internal<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    INTERNAL.with(|d| d.set(d.get() + 1));
    PgTryBuilder::new(|| crate::search_path::pinned(f))
        .finally(|| INTERNAL.with(|d| d.set(d.get().saturating_sub(1))))
        .execute()
}

/// agent_guard's own SPI is running.
pub fn in_internal() -> bool {
    INTERNAL.with(|d| d.get() > 0)
}

/// The agent as this backend last knew it (no catalog access).
pub fn cached_agent() -> Option<Rc<AgentRecord>> {
    CACHE.with(|c| c.borrow().agent.clone())
}

/// Whether `CREATE EXTENSION agent_guard` has been run in this database (a catalog lookup).
pub fn extension_installed() -> bool {
    unsafe { pg_sys::get_extension_oid(c"agent_guard".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Whether this backend last knew itself to be an agent session (no catalog access).
pub fn cached_is_agent() -> bool {
    CACHE.with(|c| c.borrow().agent.is_some())
}

/// [`cached_is_agent`] for callers inside PostgreSQL's error reporting, which
/// must not panic: `false` while the cache is being rewritten (never during a
/// user's statement).
pub fn cached_is_agent_in_error() -> bool {
    CACHE.with(|c| c.try_borrow().map(|c| c.agent.is_some()).unwrap_or(false))
}

/// A role's name, or `(role N)` when it no longer exists.
pub fn role_name(oid: pg_sys::Oid) -> String {
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("(role {})", oid.to_u32())
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Every role label of agent_guard in the cluster, unparsed: (role oid, label).
/// A scan of the shared catalog `pg_shseclabel` (see [`crate::catalog`]: no
/// query, no snapshot of the transaction's, works on a hot standby).
pub fn role_labels() -> Vec<(pg_sys::Oid, String)> {
    use crate::catalog::{col, scan, Key, SHARED_SECLABEL};
    let mut out = vec![];
    // The index leads with objoid; all of agent_guard's labels are wanted.
    scan(
        SHARED_SECLABEL,
        None,
        &[Key::oid(col::SHSECLABEL_CLASSOID, pg_sys::AuthIdRelationId)],
        |t| {
            if t.text(col::SHSECLABEL_PROVIDER).as_deref() == Some("agent_guard") {
                if let Some(label) = t.text(col::SHSECLABEL_LABEL) {
                    out.push((t.oid(col::SHSECLABEL_OBJOID), label));
                }
            }
        },
    );
    out
}

/// The registered agent labels of the cluster: (role oid, label).
pub fn read_agent_labels() -> Vec<(pg_sys::Oid, AgentLabel)> {
    role_labels()
        .into_iter()
        .filter_map(|(oid, label)| parse_agent_label(&label).ok().map(|l| (oid, l)))
        .collect()
}

/// This cluster's system identifier (what agent labels and registry rows
/// record with the OIDs they hold; the same on a streaming standby).
pub fn system_identifier() -> u64 {
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// A role's name, if the role exists.
pub fn role_name_opt(oid: u32) -> Option<String> {
    if oid == 0 {
        return None;
    }
    unsafe {
        let p = pg_sys::GetUserNameFromId(pg_sys::Oid::from(oid), true);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// A role's OID by name, if the role exists (a syscache lookup).
pub fn role_oid_opt(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let oid = unsafe { pg_sys::get_role_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then(|| oid.to_u32())
}

/// The sponsor role a label means in this cluster (InvalidOid: none).
pub fn resolve_sponsor(label: &AgentLabel) -> pg_sys::Oid {
    agent_guard_core::label::resolve_sponsor(
        label,
        system_identifier(),
        role_name_opt,
        role_oid_opt,
    )
    .map_or(pg_sys::InvalidOid, pg_sys::Oid::from)
}

fn record(agent: pg_sys::Oid, login: pg_sys::Oid, label: AgentLabel) -> AgentRecord {
    AgentRecord {
        agent_oid: agent,
        agent_name: role_name(agent),
        login_name: role_name(login),
        sponsor: resolve_sponsor(&label),
        label,
        unverified: None,
    }
}

/// Find the registration that makes `roles` (login role first) an agent.
fn agent_for(
    roles: &[pg_sys::Oid],
    labels: &[(pg_sys::Oid, AgentLabel)],
) -> Option<(pg_sys::Oid, AgentLabel)> {
    for &role in roles {
        if let Some((oid, l)) = labels.iter().find(|(oid, _)| *oid == role) {
            return Some((*oid, l.clone()));
        }
    }
    for &role in roles {
        for (oid, l) in labels {
            if unsafe { pg_sys::is_member_of_role_nosuper(role, *oid) } {
                return Some((*oid, l.clone()));
            }
        }
    }
    None
}

/// A role that no label makes an agent, but that an unconfirmed registry row
/// of this database points at (itself or a group it belongs to): a record
/// that fails closed.
fn unverified_for(role: pg_sys::Oid, labels: &[(pg_sys::Oid, AgentLabel)]) -> Option<AgentRecord> {
    let suspects = crate::registry::unverified_suspects(labels);
    let (suspect, row) = suspects.iter().find(|(s, _)| *s == role).or_else(|| {
        suspects
            .iter()
            .find(|(s, _)| unsafe { pg_sys::is_member_of_role_nosuper(role, *s) })
    })?;
    let name = role_name(*suspect);
    Some(AgentRecord {
        agent_oid: *suspect,
        agent_name: name.clone(),
        login_name: role_name(role),
        label: AgentLabel {
            sponsor_name: row.sponsor_name.clone(),
            kind: row.kind.clone(),
            sponsor_oid: None,
            cluster: None,
        },
        sponsor: pg_sys::InvalidOid,
        unverified: Some(agent_guard_core::registry::unverified_reason(row, &name)),
    })
}

/// Agent registration of an arbitrary role (for `classify(as_role)` and the
/// registry functions); an unverified one (see [`AgentRecord::unverified`]) too.
pub fn agent_of_role(role: pg_sys::Oid) -> Option<AgentRecord> {
    let labels = read_agent_labels();
    agent_for(&[role], &labels)
        .map(|(oid, label)| record(oid, role, label))
        .or_else(|| unverified_for(role, &labels))
}

fn refresh(generation: u64) {
    let (auth, session) = unsafe { (pg_sys::GetAuthenticatedUserId(), pg_sys::GetSessionUserId()) };
    let labels = read_agent_labels();
    let found = agent_for(&[auth], &labels).map(|a| (a, true)).or_else(|| {
        if session != auth {
            agent_for(&[session], &labels).map(|a| (a, false))
        } else {
            None
        }
    });
    let guard_installed = extension_installed();
    let (agent, agent_is_login) = match found {
        Some(((oid, label), is_login)) => (
            Some(record(oid, if is_login { auth } else { session }, label)),
            is_login,
        ),
        // not an agent by any label: unless an unconfirmed registry row of
        // this database points at the session's role (fail closed)
        None => match unverified_for(auth, &labels) {
            Some(r) => (Some(r), true),
            None if session != auth => (unverified_for(session, &labels), false),
            None => (None, false),
        },
    };
    CACHE.with(|c| {
        *c.borrow_mut() = Cache {
            valid: true,
            generation,
            session_user: session,
            agent: agent.map(Rc::new),
            agent_is_login,
            guard_installed,
        }
    });
}

/// The session's agent, re-reading the registry only when it changed.
/// Cost when nothing changed: one atomic load and one comparison.
pub fn current_agent() -> Option<Rc<AgentRecord>> {
    let generation = crate::shmem::generation();
    let session = unsafe { pg_sys::GetSessionUserId() };
    let fresh = CACHE.with(|c| {
        let c = c.borrow();
        c.valid && c.generation == generation && c.session_user == session
    });
    if !fresh && unsafe { pg_sys::IsTransactionState() } && !in_internal() {
        crate::shmem::catch_up();
        refresh(generation);
    }
    CACHE.with(|c| c.borrow().agent.clone())
}

/// Learn who the session is as soon as it can read the catalog: at the end of
/// the connection's startup transaction. Without this, the first statement of
/// an agent session would reach the server log (log_statement) before
/// agent_guard knew to redact it. Catalog reads only: no query runs (none
/// reaches other extensions' hooks or the server log as the session's), no
/// snapshot is pushed, no transaction id is needed (hot standbys too).
#[pg_guard]
unsafe extern "C-unwind" fn prime_on_first_commit(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    unsafe {
        if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
            || pg_sys::MyBackendType != pg_sys::BackendType::B_BACKEND
            || pg_sys::MyDatabaseId == pg_sys::InvalidOid
            || in_internal()
            || CACHE.with(|c| c.borrow().valid)
        {
            return;
        }
        // A login must never fail because of this early look: on any error
        // the cache stays empty and the first statement reads it instead.
        PgTryBuilder::new(|| {
            current_agent();
        })
        .catch_others(|_| ())
        .execute();
    }
}

/// Install the startup priming (from `_PG_init`).
pub fn init() {
    unsafe { pg_sys::RegisterXactCallback(Some(prime_on_first_commit), std::ptr::null_mut()) };
}

/// Fast check used by hooks before any other work.
pub fn is_agent_session() -> bool {
    let generation = crate::shmem::generation();
    let session = unsafe { pg_sys::GetSessionUserId() };
    let fresh = CACHE.with(|c| {
        let c = c.borrow();
        c.valid && c.generation == generation && c.session_user == session
    });
    if fresh {
        return CACHE.with(|c| c.borrow().agent.is_some());
    }
    current_agent().is_some()
}

/// Whether `role` is a member of the role named `group` (superusers are members of every role).
pub fn is_member_of(role: pg_sys::Oid, group: &CStr) -> bool {
    unsafe {
        let g = pg_sys::get_role_oid(group.as_ptr(), true);
        pg_sys::superuser_arg(role)
            || (g != pg_sys::InvalidOid && pg_sys::is_member_of_role(role, g))
    }
}

/// A superuser or a member of agent_guard_admin (who may manage the registry and run the review).
pub fn is_guard_admin(role: pg_sys::Oid) -> bool {
    is_member_of(role, c"agent_guard_admin")
}

/// Can `sponsor` still log in? Looked up in the role syscache (no SPI).
pub fn sponsor_status(sponsor: pg_sys::Oid) -> SponsorStatus {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            pg_sys::Datum::from(sponsor),
        );
        if tup.is_null() {
            return SponsorStatus::Dropped;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_authid>(tup);
        let can_login = (*form).rolcanlogin;
        let mut isnull = false;
        let valid_until = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            tup,
            pg_sys::Anum_pg_authid_rolvaliduntil as pg_sys::AttrNumber,
            &mut isnull,
        );
        let expired = !isnull && (valid_until.value() as i64) < pg_sys::GetCurrentTimestamp();
        pg_sys::ReleaseSysCache(tup);
        if !can_login {
            SponsorStatus::NoLogin
        } else if expired {
            SponsorStatus::Expired
        } else {
            SponsorStatus::Active
        }
    }
}

/// The policy view of an agent record.
pub fn actor(agent: &AgentRecord) -> Actor {
    Actor {
        agent: agent.agent_name.clone(),
        login: agent.login_name.clone(),
        sponsor: agent.label.sponsor_name.clone(),
        sponsor_status: sponsor_status(agent.sponsor),
        unverified: agent.unverified.clone(),
    }
}

/// Session facts that bear on every agent statement (no catalog access).
pub fn session_state() -> SessionState {
    let (guard_installed, agent_is_login) = CACHE.with(|c| {
        let c = c.borrow();
        (c.guard_installed, c.agent_is_login)
    });
    unsafe {
        let auth = pg_sys::GetAuthenticatedUserId();
        let session = pg_sys::GetSessionUserId();
        let outer = pg_sys::GetOuterUserId();
        SessionState {
            guard_installed,
            database: database_name(),
            role_switched: outer != session || (agent_is_login && session != auth),
            replication_role_changed: pg_sys::SessionReplicationRole
                != pg_sys::SESSION_REPLICATION_ROLE_ORIGIN as i32,
            on_standby: on_standby(),
            standby_forwarding: crate::audit::forward::enabled(),
        }
    }
}

/// The server is a hot standby (recovery in progress): no transaction ids,
/// no writes, so no audit trail here. Cheap once recovery has ended.
pub fn on_standby() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

/// This session's database name (a database cannot be renamed while anyone is connected to it).
pub fn database_name() -> String {
    thread_local! {
        static NAME: RefCell<Option<String>> = const { RefCell::new(None) };
    }
    if let Some(n) = NAME.with(|c| c.borrow().clone()) {
        return n;
    }
    let name = unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if p.is_null() {
            return String::new();
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    NAME.with(|c| *c.borrow_mut() = Some(name.clone()));
    name
}

/// The request id: a sqlcommenter comment in the top-level statement wins,
/// else `agent_guard.request_id`.
pub fn correlation() -> (Option<String>, Option<String>) {
    let text = unsafe {
        if pg_sys::debug_query_string.is_null() {
            std::borrow::Cow::Borrowed("")
        } else {
            CStr::from_ptr(pg_sys::debug_query_string).to_string_lossy()
        }
    };
    let c = agent_guard_core::request_id::from_comments(&text);
    (c.request_id.or_else(crate::gucs::request_id), c.traceparent)
}

/// The execution context of the current statement, as `current_context()` returns it.
pub fn context_json(nesting_level: i32) -> serde_json::Value {
    let agent = current_agent();
    let (request_id, traceparent) = correlation();
    unsafe {
        let app = if pg_sys::application_name.is_null() {
            String::new()
        } else {
            CStr::from_ptr(pg_sys::application_name)
                .to_string_lossy()
                .into_owned()
        };
        let client_addr = client_address_cached();
        let xid = pg_sys::GetCurrentTransactionIdIfAny();
        let pid = pg_sys::MyProcPid;
        let sponsor = agent.as_ref().map(|a| {
            let status = sponsor_status(a.sponsor);
            serde_json::json!({"name": a.label.sponsor_name, "status": status.as_str()})
        });
        serde_json::json!({
            "session_user": role_name(pg_sys::GetSessionUserId()),
            "current_user": role_name(pg_sys::GetUserId()),
            "is_agent": agent.is_some(),
            "agent": agent.as_ref().map(|a| a.agent_name.clone()),
            "agent_kind": agent.as_ref().map(|a| a.label.kind.clone()),
            "sponsor": sponsor.as_ref().map(|s| s["name"].clone()),
            "sponsor_status": sponsor.as_ref().map(|s| s["status"].clone()),
            "application_name": app,
            "client_addr": client_addr,
            "backend_pid": pid,
            "database": database_name(),
            "transaction_id": if xid.into_inner() == 0 { None } else { Some(xid.into_inner()) },
            "nesting_level": nesting_level,
            "request_id": request_id,
            "traceparent": traceparent,
        })
    }
}

thread_local! {
    static CLIENT_ADDR: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// The client's address, looked up once per session.
pub fn client_address_cached() -> Option<String> {
    if let Some(a) = CLIENT_ADDR.with(|c| c.borrow().clone()) {
        return a;
    }
    let a = client_address();
    CLIENT_ADDR.with(|c| *c.borrow_mut() = Some(a.clone()));
    a
}

/// Whether agent_guard is installed in this database (as of the last registry read).
pub fn guard_installed() -> bool {
    CACHE.with(|c| c.borrow().guard_installed)
}

/// The client's address (NULL for Unix-socket connections), without SQL.
fn client_address() -> Option<String> {
    crate::hooks::client_address()
}
