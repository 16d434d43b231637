//! Settings under the reserved `agent_guard.` prefix, and the PostgreSQL
//! settings that change how statement text is read.
//!
//! # Nothing an agent session can reach weakens agent_guard
//!
//! A setting can be given by the server (postgresql.conf, `ALTER SYSTEM`, the
//! postmaster's command line, the built-in default), by role and database
//! settings (`ALTER ROLE/DATABASE … SET`, GucSource PGC_S_GLOBAL …
//! PGC_S_DATABASE_USER), by the client's startup packet (`PGOPTIONS`,
//! PGC_S_CLIENT) or in the session (`SET`, `set_config()`, function `SET`
//! clauses: PGC_S_SESSION). Check hooks cannot tell an agent session from
//! another at startup — they run before the login role is known — so the
//! rule is kept where the values are read:
//!
//! - **`agent_guard.enabled` is PGC_SIGHUP**: only postgresql.conf /
//!   `ALTER SYSTEM` and a reload change it, cluster-wide. A startup packet
//!   asking for it is refused by PostgreSQL, role and database settings are
//!   rejected, `SET` fails for everyone.
//! - **The protective settings** below are PGC_SUSET. In an agent session the
//!   value in force is the *stricter* of the session's value (whatever its
//!   source) and the server's: the check hooks remember each value that
//!   comes from a server source (default, environment, configuration file,
//!   command line — GucSource up to PGC_S_ARGV) in a twin, and the accessors
//!   compare. So an administrator's `ALTER ROLE ci_bot SET
//!   agent_guard.audit_durability = sync` is honoured, and nothing makes an
//!   agent session weaker than the server says. Besides, the check hooks
//!   refuse every change from a non-server source once the session is known
//!   to be an agent's (SET, `set_config()`, function SET clauses), superuser
//!   or not.
//!
//!   | setting | stricter means |
//!   |---|---|
//!   | `agent_guard.audit_durability` | `sync` over `async` |
//!   | `agent_guard.audit_wait_timeout` | shorter (the server's value is a ceiling) |
//!   | `agent_guard.audit_non_agents` | more auditing (read in human sessions only) |
//!   | `agent_guard.require_distinct_sponsor` | more restrictive (read in approvers' sessions) |
//!   | `agent_guard.request_lifetime` | shorter |
//!
//!   Not protective: `agent_guard.request_id` (anyone), `audit_queue_size`
//!   (postmaster start), the activity sampler's settings (postgresql.conf).
//!   There are no masking settings: masking is on whenever enforcement is.
//! - **Lexer settings** (`standard_conforming_strings`, `backslash_quote`):
//!   with non-default values a statement an approver reads one way runs
//!   another way. agent_guard refuses every agent statement (but session
//!   housekeeping that puts them back) while they are not at their defaults,
//!   whatever route set them ([`nonstandard_lexer`]); fingerprints are always
//!   computed with the defaults (src/lexer.rs).
//!
//! The twin of a setting is updated by check-hook calls with a server
//! source, which PostgreSQL also makes when it validates a value it will not
//! apply (`ALTER SYSTEM` before the reload, `pg_file_settings`) — both out of
//! an agent's reach. A line removed from postgresql.conf while a role setting
//! overrides it leaves the twin at the removed value until the backend ends.

use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;

/// `agent_guard.enabled`: enforce policy in agent sessions (default on; PGC_SIGHUP).
static mut ENABLED: bool = true;
/// `agent_guard.request_id`: the request this session's statements serve.
static mut REQUEST_ID: *mut c_char = ptr::null_mut();

pub fn enabled() -> bool {
    unsafe { ENABLED }
}

/// The request id set with SET / SET LOCAL, if any.
pub fn request_id() -> Option<String> {
    unsafe {
        if REQUEST_ID.is_null() {
            return None;
        }
        let s = CStr::from_ptr(REQUEST_ID).to_string_lossy().into_owned();
        (!s.is_empty()).then_some(s)
    }
}

/// `agent_guard.audit_durability`: 0 = async, 1 = sync.
static mut AUDIT_DURABILITY: i32 = 0;
/// `agent_guard.audit_non_agents`: 0 none, 1 ddl, 2 write, 3 all.
static mut AUDIT_NON_AGENTS: i32 = 0;
/// `agent_guard.audit_queue_size` in kB per database (postmaster start only).
static mut AUDIT_QUEUE_KB: i32 = 1024;
/// `agent_guard.audit_queues`: how many databases can have an audit queue at
/// once (postmaster start only).
static mut AUDIT_QUEUES: i32 = 64;
/// `agent_guard.audit_writers`: how many audit writers may run at once
/// (-1: half of max_worker_processes).
static mut AUDIT_WRITERS: i32 = -1;
/// `agent_guard.audit_wait_timeout` in ms.
static mut AUDIT_WAIT_TIMEOUT_MS: i32 = 5000;

// The server's values of the protective settings (see the module docs).
static mut SERVER_AUDIT_DURABILITY: i32 = 0;
static mut SERVER_AUDIT_NON_AGENTS: i32 = 0;
static mut SERVER_AUDIT_WAIT_TIMEOUT_MS: i32 = 5000;
static mut SERVER_DISTINCT_SPONSOR: i32 = 1;
static mut SERVER_REQUEST_LIFETIME_S: i32 = 3600;

/// In an agent session, the stricter of the session's and the server's value.
fn guarded(session: i32, server: i32, stricter: fn(i32, i32) -> i32) -> i32 {
    if crate::identity::cached_is_agent() {
        stricter(session, server)
    } else {
        session
    }
}

struct EnumEntries<const N: usize>([pg_sys::config_enum_entry; N]);
// SAFETY: immutable after construction; only read by PostgreSQL.
unsafe impl<const N: usize> Sync for EnumEntries<N> {}

const fn entry(name: &'static CStr, val: i32) -> pg_sys::config_enum_entry {
    pg_sys::config_enum_entry {
        name: name.as_ptr(),
        val,
        hidden: false,
    }
}
const END: pg_sys::config_enum_entry = pg_sys::config_enum_entry {
    name: ptr::null(),
    val: 0,
    hidden: false,
};

static DURABILITY_ENTRIES: EnumEntries<3> =
    EnumEntries([entry(c"async", 0), entry(c"sync", 1), END]);
static NON_AGENT_ENTRIES: EnumEntries<5> = EnumEntries([
    entry(c"none", 0),
    entry(c"ddl", 1),
    entry(c"write", 2),
    entry(c"all", 3),
    END,
]);

const NON_AGENT_NAMES: [&str; 4] = ["none", "ddl", "write", "all"];

/// Whether every audited statement waits for its record (not only risky ones and refusals).
pub fn audit_durability_sync() -> bool {
    guarded(
        unsafe { AUDIT_DURABILITY },
        unsafe { SERVER_AUDIT_DURABILITY },
        i32::max,
    ) == 1
}

/// Which statements of non-agent sessions are audited.
pub enum NonAgentAudit {
    None,
    Ddl,
    Write,
    All,
}

fn audit_non_agents_value() -> i32 {
    guarded(
        unsafe { AUDIT_NON_AGENTS },
        unsafe { SERVER_AUDIT_NON_AGENTS },
        i32::max,
    )
}

pub fn audit_non_agents() -> NonAgentAudit {
    match audit_non_agents_value() {
        1 => NonAgentAudit::Ddl,
        2 => NonAgentAudit::Write,
        3 => NonAgentAudit::All,
        _ => NonAgentAudit::None,
    }
}

pub fn audit_queue_bytes() -> usize {
    unsafe { AUDIT_QUEUE_KB.max(64) as usize * 1024 }
}

/// How many audit queues (one per database that has one) shared memory holds.
pub fn audit_queues() -> usize {
    unsafe { AUDIT_QUEUES.max(1) as usize }
}

/// How many audit writers may run at once: `agent_guard.audit_writers`, or
/// by default half of `max_worker_processes` (at least 1), so that writers
/// never take the worker slots parallel query and other extensions need.
pub fn audit_writers() -> usize {
    let workers = unsafe { pg_sys::max_worker_processes }.max(1) as usize;
    match unsafe { AUDIT_WRITERS } {
        n if n < 0 => (workers / 2).max(1),
        n => (n as usize).clamp(1, workers),
    }
}

pub fn audit_wait_timeout_ms() -> i32 {
    guarded(
        unsafe { AUDIT_WAIT_TIMEOUT_MS },
        unsafe { SERVER_AUDIT_WAIT_TIMEOUT_MS },
        i32::min,
    )
}

/// `agent_guard.discovery_messages`: 0 off, 1 notice, 2 warning.
static mut DISCOVERY_MESSAGES: i32 = 0;

static DISCOVERY_ENTRIES: EnumEntries<4> = EnumEntries([
    entry(c"off", 0),
    entry(c"notice", 1),
    entry(c"warning", 2),
    END,
]);

const DISCOVERY_NAMES: [&str; 3] = ["off", "notice", "warning"];

/// How a DDL command that adds an unlabelled column whose name looks
/// regulated is told so: not at all (None, the default), or with a message
/// at this level.
pub fn discovery_messages() -> Option<pgrx::PgLogLevel> {
    match unsafe { DISCOVERY_MESSAGES } {
        1 => Some(pgrx::PgLogLevel::NOTICE),
        2 => Some(pgrx::PgLogLevel::WARNING),
        _ => None,
    }
}

/// `agent_guard.require_distinct_sponsor`: 0 off, 1 ddl, 2 always.
static mut DISTINCT_SPONSOR: i32 = 1;
/// `agent_guard.request_lifetime` in seconds: how long a request may wait for a decision.
static mut REQUEST_LIFETIME_S: i32 = 3600;

static DISTINCT_SPONSOR_ENTRIES: EnumEntries<4> =
    EnumEntries([entry(c"off", 0), entry(c"ddl", 1), entry(c"always", 2), END]);

/// When the agent's own sponsor may not approve its requests.
pub fn require_distinct_sponsor() -> agent_guard_core::grants::DistinctSponsor {
    use agent_guard_core::grants::DistinctSponsor;
    match guarded(
        unsafe { DISTINCT_SPONSOR },
        unsafe { SERVER_DISTINCT_SPONSOR },
        i32::max,
    ) {
        0 => DistinctSponsor::Off,
        2 => DistinctSponsor::Always,
        _ => DistinctSponsor::Ddl,
    }
}

/// How long a request may wait for a decision, in seconds.
pub fn request_lifetime_secs() -> i32 {
    guarded(
        unsafe { REQUEST_LIFETIME_S },
        unsafe { SERVER_REQUEST_LIFETIME_S },
        i32::min,
    )
}

/// Whether `standard_conforming_strings` is off or `backslash_quote` is on in
/// this session: string literals are then read otherwise than by default.
/// (`backslash_quote = off` only refuses more, so it is fine.)
pub fn nonstandard_lexer() -> bool {
    unsafe {
        !pg_sys::standard_conforming_strings
            || pg_sys::backslash_quote == pg_sys::BackslashQuoteType::BACKSLASH_QUOTE_ON as i32
    }
}

/// Whether errors of this session skip the server log (`log_min_messages`
/// `log`, `fatal` or `panic`): PostgreSQL then never calls `emit_log_hook`
/// for them, which is where agent_guard records and redacts them.
pub fn errors_unlogged() -> bool {
    let level = unsafe { pg_sys::log_min_messages };
    level == pg_sys::LOG as i32 || level > pg_sys::PGERROR as i32
}

/// Values from postgresql.conf, ALTER SYSTEM, the command line, the
/// environment or the built-in default: the server's own.
fn server_source(source: pg_sys::GucSource::Type) -> bool {
    source <= pg_sys::GucSource::PGC_S_ARGV
}

/// A check hook for a protective integer or enum setting: remembers the
/// server's value in `$twin`, refuses agent sessions' changes.
macro_rules! protected_int_hook {
    ($hook:ident, $twin:ident) => {
        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn $hook(
            newval: *mut i32,
            _extra: *mut *mut c_void,
            source: pg_sys::GucSource::Type,
        ) -> bool {
            unsafe {
                if server_source(source) {
                    $twin = *newval;
                }
                allow_protected_change(source)
            }
        }
    };
}

protected_int_hook!(check_audit_durability, SERVER_AUDIT_DURABILITY);
protected_int_hook!(check_audit_non_agents, SERVER_AUDIT_NON_AGENTS);
protected_int_hook!(check_audit_wait_timeout, SERVER_AUDIT_WAIT_TIMEOUT_MS);
protected_int_hook!(check_distinct_sponsor, SERVER_DISTINCT_SPONSOR);
protected_int_hook!(check_request_lifetime, SERVER_REQUEST_LIFETIME_S);

/// Check hook of a superuser setting that protects nothing but that agents
/// have no business changing (`discovery_messages`): no server twin.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_agent_may_not_change(
    _newval: *mut i32,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { allow_protected_change(source) }
}

/// Check hook of `agent_guard.enabled`: PGC_SIGHUP already keeps sessions out;
/// this only words the refusal for agents that try anyway.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_enabled(
    _newval: *mut bool,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { allow_protected_change(source) }
}

unsafe fn allow_protected_change(source: pg_sys::GucSource::Type) -> bool {
    // The server's own configuration; and sessions not (yet) known to be an
    // agent's (whose values the accessors bound by the server's anyway).
    if server_source(source) || !crate::identity::cached_is_agent() {
        return true;
    }
    unsafe {
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32);
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(
            c"agent sessions may not change agent_guard's protective settings".as_ptr(),
        );
        pg_sys::GUC_check_errhint_string =
            pg_sys::pstrdup(c"Only agent_guard.request_id may be set by agents.".as_ptr());
    }
    false
}

pub fn init() {
    unsafe {
        pg_sys::DefineCustomBoolVariable(
            c"agent_guard.enabled".as_ptr(),
            c"Enforce agent_guard's policy in agent sessions.".as_ptr(),
            c"When off, agent sessions are not restricted. Set in postgresql.conf or with ALTER SYSTEM and a reload only, for the whole cluster.".as_ptr(),
            &raw mut ENABLED,
            true,
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            Some(check_enabled),
            None,
            None,
        );
        pg_sys::DefineCustomStringVariable(
            c"agent_guard.request_id".as_ptr(),
            c"Identifier of the request or CI job the session's statements serve.".as_ptr(),
            c"A sqlcommenter comment request_id='...' in a statement takes precedence.".as_ptr(),
            &raw mut REQUEST_ID,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            0,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomEnumVariable(
            c"agent_guard.audit_durability".as_ptr(),
            c"Whether every agent statement waits until its audit record is committed.".as_ptr(),
            c"async: reads are queued and written shortly after; writes, schema changes, privilege and admin statements and every refusal always wait (sync). sync: every statement waits.".as_ptr(),
            &raw mut AUDIT_DURABILITY,
            0,
            DURABILITY_ENTRIES.0.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            0,
            Some(check_audit_durability),
            None,
            None,
        );
        pg_sys::DefineCustomEnumVariable(
            c"agent_guard.audit_non_agents".as_ptr(),
            c"Which statements of non-agent sessions go to the audit trail.".as_ptr(),
            c"none, ddl, write (and above) or all.".as_ptr(),
            &raw mut AUDIT_NON_AGENTS,
            0,
            NON_AGENT_ENTRIES.0.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            0,
            Some(check_audit_non_agents),
            None,
            None,
        );
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.audit_queue_size".as_ptr(),
            c"Shared-memory audit queue per database, in kB.".as_ptr(),
            ptr::null(),
            &raw mut AUDIT_QUEUE_KB,
            1024,
            64,
            1024 * 1024,
            pg_sys::GucContext::PGC_POSTMASTER,
            pg_sys::GUC_UNIT_KB as i32,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.audit_queues".as_ptr(),
            c"How many databases can have an audit queue at once.".as_ptr(),
            c"Shared memory holds this many queues of agent_guard.audit_queue_size each; a database gets one with its first audited statement and keeps it until another database needs it while it is empty. An agent statement of a database that cannot get one is refused.".as_ptr(),
            &raw mut AUDIT_QUEUES,
            64,
            1,
            10_000,
            pg_sys::GucContext::PGC_POSTMASTER,
            0,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.audit_writers".as_ptr(),
            c"How many audit writers (background workers, one per database) may run at once.".as_ptr(),
            c"-1 (the default): half of max_worker_processes. Writers leave their database when it is idle and another database needs a writer; an agent statement that cannot get a writer within agent_guard.audit_wait_timeout is refused.".as_ptr(),
            &raw mut AUDIT_WRITERS,
            -1,
            -1,
            10_000,
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.audit_wait_timeout".as_ptr(),
            c"How long an agent statement waits for the audit trail before it is refused.".as_ptr(),
            ptr::null(),
            &raw mut AUDIT_WAIT_TIMEOUT_MS,
            5000,
            10,
            600_000,
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GUC_UNIT_MS as i32,
            Some(check_audit_wait_timeout),
            None,
            None,
        );
        pg_sys::DefineCustomEnumVariable(
            c"agent_guard.require_distinct_sponsor".as_ptr(),
            c"When an agent's own sponsor may not approve its requests for grants.".as_ptr(),
            c"off: the sponsor may approve; ddl: not for schema changes; always: never.".as_ptr(),
            &raw mut DISTINCT_SPONSOR,
            1,
            DISTINCT_SPONSOR_ENTRIES.0.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            0,
            Some(check_distinct_sponsor),
            None,
            None,
        );
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.request_lifetime".as_ptr(),
            c"How long an agent's request for a grant may wait for a decision.".as_ptr(),
            c"A request not approved or denied in time expires.".as_ptr(),
            &raw mut REQUEST_LIFETIME_S,
            3600,
            1,
            7 * 24 * 3600,
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GUC_UNIT_S as i32,
            Some(check_request_lifetime),
            None,
            None,
        );
        pg_sys::DefineCustomEnumVariable(
            c"agent_guard.discovery_messages".as_ptr(),
            c"Whether DDL that adds an unlabelled column whose name looks regulated says so.".as_ptr(),
            c"off (the default): silent, see agent_guard.suggest_sensitive(); notice or warning: a message at that level naming the column, with the SECURITY LABEL statement that would mask it for agents.".as_ptr(),
            &raw mut DISCOVERY_MESSAGES,
            0,
            DISCOVERY_ENTRIES.0.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            0,
            Some(check_agent_may_not_change),
            None,
            None,
        );
        crate::compat::reserve_guc_prefix();
    }
}

/// The settings in force, for `agent_guard.status()`.
pub fn settings() -> serde_json::Value {
    serde_json::json!({
        "agent_guard.enabled": enabled(),
        "agent_guard.request_id": request_id(),
        "agent_guard.audit_durability": if audit_durability_sync() { "sync" } else { "async" },
        "agent_guard.audit_non_agents": NON_AGENT_NAMES[audit_non_agents_value().clamp(0, 3) as usize],
        "agent_guard.audit_queue_size_kb": unsafe { AUDIT_QUEUE_KB },
        "agent_guard.audit_queues": audit_queues(),
        "agent_guard.audit_writers": audit_writers(),
        "agent_guard.audit_wait_timeout_ms": audit_wait_timeout_ms(),
        "agent_guard.require_distinct_sponsor": require_distinct_sponsor().as_str(),
        "agent_guard.request_lifetime_s": request_lifetime_secs(),
        "agent_guard.discovery_messages": DISCOVERY_NAMES[unsafe { DISCOVERY_MESSAGES } as usize],
    })
}

/// Whether changing `name` with SET needs superuser rights (PGC_SUSET or stricter).
pub fn is_superuser_only(name: &str) -> bool {
    crate::compat::guc_context(name).is_some_and(|context| {
        !matches!(
            context,
            pg_sys::GucContext::PGC_USERSET | pg_sys::GucContext::PGC_BACKEND
        )
    })
}
