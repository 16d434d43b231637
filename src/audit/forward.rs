//! Hot standbys: agents' audit records go to the primary's trail.
//!
//! A standby cannot write `agent_guard.audit_log`, and agent_guard never lets
//! an agent statement run unrecorded. By default (`agent_guard.standby_audit
//! = refuse`) agents' statements on a hot standby are refused (all but
//! session housekeeping). With `agent_guard.standby_audit = forward`, which
//! a DBA sets, an agent backend on a hot standby sends its records
//! to the primary itself, over an ordinary libpq connection
//! (`agent_guard.forward_conninfo`, by default the standby's
//! `primary_conninfo` with the session's database; see `forward.c`), calling
//! `agent_guard.ingest_forwarded()` there, which appends them to
//! `agent_guard.audit_forwarded` in a hash chain of this standby's own
//! (`agent_guard.forward_sources`), idempotently by event key.
//!
//! Synchronous, like `audit_durability = sync`: an agent statement's record
//! is forwarded before the statement runs, in a transaction the primary
//! commits with a WAL flush, and then the backend waits until this standby
//! has *replayed* that commit. So every statement that ran has its record in
//! the primary's trail and in the standby's own copy of it: a promotion
//! cannot lose it (it is in the promoted server's WAL) and nothing is sent
//! again after one (nothing is held back). If the primary cannot take the
//! record in time (`agent_guard.audit_wait_timeout`), the statement is
//! refused. Ends of statements and transaction outcomes are collected and
//! sent at transaction end (and with the next record, and once more when the
//! session ends); a failure there only leaves the statement's outcome open
//! in the trail (a warning, and at the session's end a log line).
//!
//! Writes and schema changes stay refused on a standby either way (it is
//! read-only). The settings are PGC_SIGHUP; the connection string is visible
//! to superusers only (it may hold a password). The primary's side (the
//! `agent_guard_forwarder` role, `ingest_forwarded()`, `verify_forwarded()`)
//! is in `ingest.rs` and `sql/forward.sql`.

use super::Unavailable;
use agent_guard_core::Refusal;
use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

unsafe extern "C" {
    fn ag_fwd_connect(
        conninfo: *const c_char,
        dbname: *const c_char,
        appname: *const c_char,
        timeout_ms: c_int,
        err: *mut c_char,
        errlen: c_int,
    ) -> *mut c_void;
    fn ag_fwd_exec(
        conn: *mut c_void,
        sql: *const c_char,
        timeout_ms: c_int,
        out: *mut c_char,
        outlen: c_int,
        err: *mut c_char,
        errlen: c_int,
    ) -> c_int;
    fn ag_fwd_close(conn: *mut c_void);
}

/// `agent_guard.standby_audit`: 0 refuse (agents refused on standbys, the
/// default), 1 forward.
static mut STANDBY_AUDIT: i32 = 0;
/// `agent_guard.forward_conninfo` ('' = primary_conninfo).
static mut FORWARD_CONNINFO: *mut c_char = ptr::null_mut();
/// `agent_guard.forward_source_name` ('' = cluster_name, else host:port).
static mut FORWARD_SOURCE_NAME: *mut c_char = ptr::null_mut();

struct EnumEntries<const N: usize>([pg_sys::config_enum_entry; N]);
// SAFETY: immutable after construction; only read by PostgreSQL.
unsafe impl<const N: usize> Sync for EnumEntries<N> {}

static STANDBY_AUDIT_ENTRIES: EnumEntries<4> = EnumEntries([
    pg_sys::config_enum_entry {
        name: c"refuse".as_ptr(),
        val: 0,
        hidden: false,
    },
    pg_sys::config_enum_entry {
        name: c"off".as_ptr(),
        val: 0,
        hidden: true,
    },
    pg_sys::config_enum_entry {
        name: c"forward".as_ptr(),
        val: 1,
        hidden: false,
    },
    pg_sys::config_enum_entry {
        name: ptr::null(),
        val: 0,
        hidden: false,
    },
]);

/// Define the settings (from `_PG_init`).
pub fn init_gucs() {
    unsafe {
        pg_sys::DefineCustomEnumVariable(
            c"agent_guard.standby_audit".as_ptr(),
            c"What agent sessions on a hot standby may do: refuse (only session housekeeping, the default) or forward (reads, each recorded in the primary's audit trail first).".as_ptr(),
            c"forward: each agent statement's record is committed on the primary and replayed here before the statement runs; if that fails the statement is refused.".as_ptr(),
            &raw mut STANDBY_AUDIT,
            0,
            STANDBY_AUDIT_ENTRIES.0.as_ptr(),
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomStringVariable(
            c"agent_guard.forward_conninfo".as_ptr(),
            c"Connection string a hot standby uses to forward agents' audit records to the primary.".as_ptr(),
            c"Empty: primary_conninfo. The session's database replaces any dbname. The role must be a member of agent_guard_forwarder on the primary.".as_ptr(),
            &raw mut FORWARD_CONNINFO,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_SIGHUP,
            pg_sys::GUC_SUPERUSER_ONLY as i32,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomStringVariable(
            c"agent_guard.forward_source_name".as_ptr(),
            c"This standby's name in the primary's audit trail (a chain of its own).".as_ptr(),
            c"Empty: cluster_name, else host name and port.".as_ptr(),
            &raw mut FORWARD_SOURCE_NAME,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            None,
            None,
            None,
        );
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Agents on this hot standby work with their records forwarded.
pub fn enabled() -> bool {
    unsafe { STANDBY_AUDIT == 1 }
}

/// This standby's name in the primary's trail.
pub fn source_name() -> String {
    let configured = cstr(unsafe { FORWARD_SOURCE_NAME });
    if !configured.is_empty() {
        return configured;
    }
    let cluster = cstr(unsafe { pg_sys::cluster_name });
    if !cluster.is_empty() {
        return cluster;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", unsafe { pg_sys::PostPortNumber })
}

fn conninfo() -> String {
    let configured = cstr(unsafe { FORWARD_CONNINFO });
    if !configured.is_empty() {
        return configured;
    }
    cstr(unsafe { pg_sys::PrimaryConnInfo })
}

/// Events held for the primary at most; beyond, the oldest are dropped
/// (with a warning): only ends and transaction outcomes wait here.
const PENDING_LIMIT: usize = 10_000;
/// Events sent with one call at most.
const BATCH: usize = 500;
/// After a failed connection, fail at once for this long (ms).
const RETRY_AFTER_MS: i64 = 1000;

struct Forwarder {
    conn: *mut c_void,
    pending: Vec<Vec<u8>>,
    /// When connecting last failed (PostgreSQL µs), and why.
    failed_at: i64,
    last_error: String,
}

thread_local! {
    static FWD: RefCell<Forwarder> = const { RefCell::new(Forwarder {
        conn: ptr::null_mut(),
        pending: Vec::new(),
        failed_at: 0,
        last_error: String::new(),
    }) };
}

fn now_us() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn timeout_ms() -> i32 {
    crate::gucs::audit_wait_timeout_ms().max(100)
}

/// Queue `payload` (one event, JSON) for the primary; with `durable`, send
/// everything queued now and wait until the primary committed it and this
/// standby replayed that commit.
pub fn send(payload: Vec<u8>, durable: bool) -> Result<(), Unavailable> {
    if !enabled() {
        return Ok(());
    }
    register_exit_flush();
    FWD.with(|f| {
        let mut f = f.borrow_mut();
        f.pending.push(payload);
        if f.pending.len() > PENDING_LIMIT {
            let n = f.pending.len() - PENDING_LIMIT;
            f.pending.drain(..n);
            pgrx::warning!("agent_guard: {n} audit records for the primary were dropped (it did not take them)");
        }
        if !durable && f.pending.len() < BATCH {
            return Ok(());
        }
        match f.flush(true) {
            Ok(()) => Ok(()),
            Err(e) => {
                if durable {
                    // The statement is refused: its record is not kept for
                    // later. The primary may have committed it all the same
                    // (its answer, or this standby's replay of it, came too
                    // late): an end event saying it was refused follows with
                    // the next batch, and changes nothing if the record never
                    // arrived.
                    if let Some(end) = f.pending.pop().and_then(|p| refused_end(&p)) {
                        f.pending.push(end);
                    }
                }
                f.last_error = e;
                Err(Unavailable::Forwarding)
            }
        }
    })
}

/// The end event of a statement record (`payload`) refused on this standby
/// because the primary did not confirm it in time.
fn refused_end(payload: &[u8]) -> Option<Vec<u8>> {
    let e: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if e["k"].as_str() != Some("stmt") {
        return None;
    }
    let end = serde_json::json!({
        "k": "end", "sk": e["sk"], "n": e["n"], "ts": now_us(), "rows": null,
        "out": "error", "state": "42501",
        "msg": "refused on the standby: the primary did not confirm this record in time",
    });
    Some(end.to_string().into_bytes())
}

thread_local! {
    static EXIT_FLUSH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn register_exit_flush() {
    if !EXIT_FLUSH.with(|r| r.replace(true)) {
        unsafe { pg_sys::before_shmem_exit(Some(flush_at_exit), pg_sys::Datum::from(0)) };
    }
}

/// The session ends: one last try to send the statement ends and
/// transaction outcomes still queued (the primary was unreachable at
/// transaction end); what cannot be sent is named in the server log.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn flush_at_exit(_code: i32, _arg: pg_sys::Datum) {
    let lost = FWD.with(|f| {
        let Ok(mut f) = f.try_borrow_mut() else {
            return None;
        };
        if f.pending.is_empty() {
            return None;
        }
        // (a connection that failed moments ago is tried again)
        f.failed_at = 0;
        let r = f.flush(false).err().map(|e| (e, f.pending.len()));
        f.close();
        r
    });
    if let Some((e, n)) = lost {
        pgrx::log!(
            "agent_guard: session ended with {n} audit records (statement ends, transaction outcomes) the primary did not take; they are lost: {e}"
        );
    }
}

/// Send what is queued (at transaction end). Never raises an error: a
/// failure is a warning, and the events stay queued for the next try.
pub fn flush_quietly() {
    if !enabled() {
        return;
    }
    let failed = FWD.with(|f| {
        let Ok(mut f) = f.try_borrow_mut() else {
            return None;
        };
        if f.pending.is_empty() {
            return None;
        }
        match f.flush(false) {
            Ok(()) => None,
            Err(e) => {
                f.last_error = e.clone();
                Some((e, f.pending.len()))
            }
        }
    });
    if let Some((e, n)) = failed {
        // (a WARNING is allowed in a commit callback; an ERROR is not)
        pgrx::warning!("agent_guard: {n} audit records (statement ends, transaction outcomes) wait for the primary: {e}");
    }
}

/// The refusal of a statement whose record the primary did not take.
pub fn refusal() -> Refusal {
    let why = FWD.with(|f| f.borrow().last_error.clone());
    Refusal {
        message: "agent statement refused on a hot standby: agent_guard could not record it in the primary's audit trail".into(),
        detail: format!(
            "Forwarding the record to the primary failed: {why}. agent_guard refuses agent statements it cannot record (fail closed)."
        ),
        hint: "Check that the primary is up and that agent_guard.forward_conninfo (default: primary_conninfo) connects to it as a member of agent_guard_forwarder; or connect to the primary.".into(),
        code: "audit_unavailable",
    }
}

/// `s` as an SQL string literal (standard_conforming_strings is on for the connection).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Parse an LSN as PostgreSQL prints it (`16/B374D848`).
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl Forwarder {
    fn close(&mut self) {
        if !self.conn.is_null() {
            unsafe { ag_fwd_close(self.conn) };
            self.conn = ptr::null_mut();
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        if !self.conn.is_null() {
            return Ok(());
        }
        let now = now_us();
        if self.failed_at != 0 && now - self.failed_at < RETRY_AFTER_MS * 1000 {
            return Err(self.last_error.clone());
        }
        let info = conninfo();
        if info.is_empty() {
            self.failed_at = now;
            return Err("neither agent_guard.forward_conninfo nor primary_conninfo is set".into());
        }
        let to_c =
            |s: String| CString::new(s).map_err(|_| "a setting holds a NUL byte".to_string());
        let info = to_c(info)?;
        let db = to_c(crate::identity::database_name())?;
        let app = to_c(format!("agent_guard forwarder ({})", source_name()))?;
        let mut err = vec![0 as c_char; 1024];
        let conn = unsafe {
            ag_fwd_connect(
                info.as_ptr(),
                db.as_ptr(),
                app.as_ptr(),
                timeout_ms(),
                err.as_mut_ptr(),
                err.len() as c_int,
            )
        };
        if conn.is_null() {
            self.failed_at = now;
            return Err(cstr(err.as_ptr()));
        }
        self.failed_at = 0;
        self.conn = conn;
        Ok(())
    }

    /// Send every queued event, in batches; `interruptible`: a cancel may
    /// end the wait for replay (not in a transaction-end callback).
    fn flush(&mut self, interruptible: bool) -> Result<(), String> {
        while !self.pending.is_empty() {
            self.connect()?;
            let n = self.pending.len().min(BATCH);
            let mut events =
                String::with_capacity(64 + self.pending[..n].iter().map(Vec::len).sum::<usize>());
            events.push('[');
            for (i, e) in self.pending[..n].iter().enumerate() {
                if i > 0 {
                    events.push(',');
                }
                events.push_str(&String::from_utf8_lossy(e));
            }
            events.push(']');
            let system = unsafe { pg_sys::GetSystemIdentifier() }.to_string();
            // committed with a WAL flush (synchronous_commit = on for the
            // connection), then the flushed position, which this standby waits for
            let sql = format!(
                "BEGIN; SELECT agent_guard.ingest_forwarded({}, {}, {}::jsonb); COMMIT; \
                 SELECT pg_catalog.pg_current_wal_flush_lsn()::text",
                literal(&source_name()),
                literal(&system),
                literal(&events)
            );
            let sql = CString::new(sql).map_err(|_| "a record holds a NUL byte".to_string())?;
            let mut out = vec![0 as c_char; 64];
            let mut err = vec![0 as c_char; 1024];
            let rc = unsafe {
                ag_fwd_exec(
                    self.conn,
                    sql.as_ptr(),
                    timeout_ms(),
                    out.as_mut_ptr(),
                    out.len() as c_int,
                    err.as_mut_ptr(),
                    err.len() as c_int,
                )
            };
            if rc != 0 {
                self.close();
                return Err(cstr(err.as_ptr()));
            }
            let out = cstr(out.as_ptr());
            let lsn = parse_lsn(&out)
                .ok_or_else(|| format!("the primary answered {out:?}, not a WAL position"))?;
            wait_for_replay(lsn, interruptible)?;
            self.pending.drain(..n);
        }
        Ok(())
    }
}

/// Wait until this standby has replayed up to `lsn` (the primary's commit of
/// the forwarded records).
fn wait_for_replay(lsn: u64, interruptible: bool) -> Result<(), String> {
    let deadline = now_us() + timeout_ms() as i64 * 1000;
    loop {
        let replayed = unsafe { pg_sys::GetXLogReplayRecPtr(ptr::null_mut()) };
        if replayed >= lsn {
            return Ok(());
        }
        if !unsafe { pg_sys::RecoveryInProgress() } {
            return Err(
                "this server was promoted before it replayed the records it forwarded".into(),
            );
        }
        if now_us() > deadline {
            return Err(format!(
                "the primary committed the records, but this standby did not replay them within agent_guard.audit_wait_timeout (replayed up to {:X}/{:X}, needed {:X}/{:X}); does agent_guard.forward_conninfo lead to the primary this standby replicates from?",
                replayed >> 32,
                replayed & 0xffff_ffff,
                lsn >> 32,
                lsn & 0xffff_ffff
            ));
        }
        if interruptible {
            pgrx::check_for_interrupts!();
        }
        unsafe {
            pg_sys::WaitLatch(
                ptr::null_mut(),
                (pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                1,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_literals() {
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
