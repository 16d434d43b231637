//! The audit writer: one background worker per database, started on demand
//! by the first backend that queues an event there (so a new
//! `CREATE EXTENSION agent_guard` is served without a restart). It drains
//! its queue in batches, one transaction per batch (group commit), chains
//! the rows' hashes, writes the rows straight into the table ([`super::insert`]),
//! then advances the queue and wakes waiting backends. A busy writer collects
//! a batch for a moment; only batches that hold a record some backend waits
//! for wait for their WAL flush.
//!
//! Lifetime. A record someone waits for (every DDL of an audited session)
//! must cost about one WAL flush, never a background-worker start, so the
//! writer stays while its database is used: it leaves after
//! [`IDLE_EXIT`] without anything to write, and at once
//!
//! - when its database is wanted without other sessions: `DROP DATABASE`,
//!   `ALTER DATABASE … RENAME / SET TABLESPACE` and `CREATE DATABASE …
//!   TEMPLATE` lock the database object in a mode that conflicts with the
//!   lock every connecting session takes, then wait (5 s) for the others to
//!   go; the writer tries that lock without waiting at every turn of its loop
//!   (at least every [`IDLE_POLL`]) and leaves when it is taken, so it never
//!   makes such a command fail (`DROP DATABASE … WITH (FORCE)` terminates it
//!   like any session);
//! - when its queue slot is given to another database (all slots taken; the
//!   slot idle the longest, at least a second, goes, see [`queue::slot_for`]);
//! - when another database waits for a writer and every allowed one
//!   (`agent_guard.audit_writers`) runs: the idlest is asked to leave
//!   ([`queue::claim_start`]) and does once it has served [`MIN_SERVICE`];
//! - on SIGTERM (shutdown, `pg_terminate_backend`), after a last batch.
//!
//! Except at SIGTERM and for `DROP DATABASE`, it leaves only with an empty
//! queue and nothing reserved, atomically with the backends' admission
//! ([`queue::try_leave`]): a statement admitted while it ran is written by it.
//! Leaving keeps the slot (and its counters) for the database.

use super::insert;
use super::queue;
use super::row::{
    key, parse_complete_record, ts, write_outcome_content, write_row_content, End, Row, SessionCtx,
    Stmt, XactEnd,
};
use agent_guard_core::chain;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a writer with nothing to do stays (it holds a background-worker
/// slot, `max_worker_processes`, meanwhile).
const IDLE_EXIT: Duration = Duration::from_secs(600);

/// How often an idle writer looks whether its database is wanted without
/// other sessions (`DROP DATABASE` waits up to 5 s for them to go).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How long a writer serves its database at least before it leaves it to
/// another database that waits for a writer (so that writers do not spend
/// their time starting and leaving when more databases are busy than
/// `agent_guard.audit_writers` allows).
const MIN_SERVICE: Duration = Duration::from_millis(500);

/// How long a busy writer collects records before its next batch. Records
/// someone waits for do not wait for it.
const BATCH_DELAY: Duration = Duration::from_millis(10);

/// A row this writer inserted that still lacks its end or its
/// transaction's end: what the table holds of its outcome, so that a later
/// end or transaction event completes it, hash included, with one UPDATE
/// by id per batch instead of a search, an update and a re-seal each.
struct OpenRow {
    id: i64,
    row_hash: String,
    /// Its local transaction and subtransaction.
    x: u64,
    sx: u32,
    end: Option<End>,
    xo: Option<XactEnd>,
    /// Changed by this batch (listed in [`OpenRows::dirty`]).
    dirty: bool,
}

/// The writer's open rows by (session key, statement number), and the
/// statement numbers of each (session key, local transaction).
#[derive(Default)]
struct OpenRows {
    rows: HashMap<(String, u64), OpenRow>,
    by_xact: HashMap<(String, u64), Vec<u64>>,
    /// The rows this batch changed.
    dirty: Vec<(String, u64)>,
}

/// Open rows held at most (statements of transactions still running);
/// beyond, they are forgotten and completed through SQL like a
/// predecessor's rows.
const OPEN_ROWS_LIMIT: usize = 100_000;

thread_local! {
    /// Transactions with rows in the table lacking their transaction's end
    /// that [`OPEN`] does not hold (a predecessor's, or forgotten ones).
    static PENDING: RefCell<Option<HashSet<(String, u64)>>> = const { RefCell::new(None) };
    static OPEN: RefCell<OpenRows> = RefCell::new(OpenRows::default());
    /// The prepared UPDATE that completes open rows (see [`complete_open_rows`]).
    static COMPLETE_PLAN: RefCell<Option<pgrx::spi::OwnedPreparedStatement>> = const { RefCell::new(None) };
    static IS_WRITER: Cell<bool> = const { Cell::new(false) };
    /// Sequence of the last record queued when this writer started.
    static RECHECK_UNTIL: Cell<u64> = const { Cell::new(0) };
    static LAST_HASH: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether the writer's commits currently wait for their WAL flush.
    static COMMIT_FLUSH: Cell<Option<bool>> = const { Cell::new(None) };
    /// The audit_log the cached chain head and open transactions belong to
    /// (a re-created extension has a new one, starting a new chain).
    static TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// Each session's newest context and its row in agent_guard.audit_sessions
    /// (committed ones only: see [`NEW_SESSIONS`]).
    static SESSIONS: RefCell<HashMap<String, (SessionCtx, i64)>> = RefCell::new(HashMap::new());
    /// Session rows the batch being written added (known to [`SESSIONS`] once it commits).
    static NEW_SESSIONS: RefCell<Vec<(SessionCtx, i64)>> = const { RefCell::new(Vec::new()) };
}

/// Sessions whose context the writer remembers at most; beyond, it forgets
/// them all (a session seen again gets a new session row: correct, if
/// not as small).
const SESSIONS_LIMIT: usize = 10_000;

/// True in the audit writer process and while purge_audit() runs.
pub fn is_writer() -> bool {
    IS_WRITER.with(|w| w.get())
}

pub fn set_writer(on: bool) {
    IS_WRITER.with(|w| w.set(on));
}

/// Run `f` as the trail's writer (its writes pass the append-only
/// triggers), and no longer once it returns or raises.
pub fn as_writer<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    set_writer(true);
    pgrx::PgTryBuilder::new(f)
        .finally(|| set_writer(false))
        .execute()
}

static mut PREV_SHMEM_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_SHMEM_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev());
        }
    }
    queue::request(
        crate::gucs::audit_queue_bytes(),
        crate::gucs::audit_queues(),
    );
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev());
        }
    }
    queue::attach();
}

/// Reserve the queues' shared memory (from `_PG_init`).
pub fn init_shmem() {
    unsafe {
        match crate::compat::request_shmem_in_hook(shmem_request) {
            Some(prev) => PREV_SHMEM_REQUEST = prev,
            None => queue::request(
                crate::gucs::audit_queue_bytes(),
                crate::gucs::audit_queues(),
            ),
        }
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

/// Ask the postmaster for a writer for slot `i`. False if it refused.
pub fn start(i: usize) -> bool {
    BackgroundWorkerBuilder::new(&format!("agent_guard audit writer {i}"))
        .set_type("agent_guard audit writer")
        .set_library("agent_guard")
        .set_function("agent_guard_audit_writer")
        .set_argument(Some(pg_sys::Datum::from(i)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .is_ok()
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    let i = arg.value();
    super::head::settle(true);
    queue::with_slot(i, |s, _| {
        if s.worker_pid == unsafe { pg_sys::MyProcPid } {
            s.worker_pid = 0;
            s.worker_latch = std::ptr::null_mut();
            s.worker_state = queue::WORKER_NONE;
        }
    });
    // Killed (pg_terminate_backend) or failed with records still queued or
    // promised: a successor writes them now, not at the next statement.
    let db = unsafe { pg_sys::MyDatabaseId };
    if db != pg_sys::InvalidOid && queue::needs_writer(i, db) {
        let _ = crate::audit::ensure_worker(i);
    }
}

/// Whether a session wants database `db` to itself (DROP DATABASE and the
/// like hold, or wait for, a lock on it that conflicts with the one every
/// connecting session takes): tried without waiting, and released at once.
fn database_wanted_alone(db: pg_sys::Oid) -> bool {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: 0, // shared object
        locktag_field2: pg_sys::DatabaseRelationId.to_u32(),
        locktag_field3: db.to_u32(),
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    let mode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    unsafe {
        match pg_sys::LockAcquire(&tag, mode, true, true) {
            pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL => true,
            _ => {
                pg_sys::LockRelease(&tag, mode, true);
                false
            }
        }
    }
}

/// Entry point of the writer process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn agent_guard_audit_writer(arg: pg_sys::Datum) {
    let i = arg.value();
    set_writer(true);
    crate::hooks::mark_own_worker();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = queue::slot_dboid(i);
    if db == pg_sys::InvalidOid {
        return;
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    // the writer's SQL resolves nothing through the database's search_path
    crate::search_path::pin_for_worker();
    // its prepared statements run with one plan made once, not re-planned per batch
    unsafe {
        pg_sys::SetConfigOption(
            c"plan_cache_mode".as_ptr(),
            c"force_generic_plan".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
    let attached = unsafe {
        queue::with_slot(i, |s, _| {
            // the slot went to another database meanwhile, or has its writer already
            let other = s.worker_state == queue::WORKER_RUNNING
                && s.worker_pid != 0
                && s.worker_pid != pg_sys::MyProcPid;
            if s.dboid != db || other {
                return false;
            }
            RECHECK_UNTIL.with(|c| c.set(s.enqueued));
            s.worker_pid = pg_sys::MyProcPid;
            s.worker_latch = pg_sys::MyLatch;
            s.worker_state = queue::WORKER_RUNNING;
            s.worker_since = pg_sys::GetCurrentTimestamp();
            s.leave_requested = false;
            true
        })
    };
    if !attached {
        return;
    }
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(i)) };
    let installed = BackgroundWorker::transaction(crate::identity::extension_installed);
    if !installed {
        // Nothing can be written here; backends refuse agents in such databases anyway.
        discard_all(i, db);
        return;
    }
    let started = std::time::Instant::now();
    let mut idle_since = started;
    loop {
        let Some(n) = drain(i, db) else {
            break; // the slot serves another database now
        };
        if n > 0 {
            idle_since = std::time::Instant::now();
        }
        if database_wanted_alone(db) {
            // DROP DATABASE (or the like) waits for the other sessions to go
            drain(i, db);
            if !queue::release_if_empty(i, db) {
                queue::try_leave(i, db, true);
            }
            break;
        }
        // Leave when idle for long, or at once when another database waits
        // for a writer — but only with an empty queue and nothing reserved
        // (atomically with the backends' admission), so that every admitted
        // record is written. The slot stays this database's (with its
        // counters) until another database needs it.
        let leave = (queue::leave_requested(i) && started.elapsed() >= MIN_SERVICE)
            || idle_since.elapsed() > IDLE_EXIT;
        if n == 0 && leave && queue::try_leave(i, db, false) {
            break;
        }
        // After a batch, collect the next one for a moment (records someone
        // waits for, or a filling queue, wake the writer at once); on an
        // empty queue, sleep until a backend wakes it.
        let timeout = if n > 0 { BATCH_DELAY } else { IDLE_POLL };
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            // SIGTERM (shutdown, pg_terminate_backend): a last batch; what
            // arrives later is written by the next writer
            drain(i, db);
            queue::try_leave(i, db, true);
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

/// A batch holding a record some backend waits for commits with a WAL flush
/// (`synchronous_commit = on`, whatever the server's setting); other batches
/// do not wait for the disk (`off`): their records were asynchronous anyway.
fn set_commit_flush(flush: bool) {
    if COMMIT_FLUSH.with(|c| c.replace(Some(flush))) == Some(flush) {
        return;
    }
    let value = if flush { c"on" } else { c"off" };
    unsafe {
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

fn discard_all(i: usize, db: pg_sys::Oid) {
    queue::with_slot(i, |s, _| {
        if s.dboid == db {
            s.dropped += s.enqueued - s.durable;
            queue::totals()
                .dropped
                .fetch_add(s.enqueued - s.durable, Ordering::Relaxed);
            s.tail = s.head;
            s.durable = s.enqueued;
            s.oldest_ts = 0;
        }
    });
    broadcast(i);
    queue::release_if_empty(i, db);
}

fn broadcast(i: usize) {
    unsafe {
        pg_sys::ConditionVariableBroadcast(queue::cv_ptr(i, true));
        pg_sys::ConditionVariableBroadcast(queue::cv_ptr(i, false));
    }
}

/// Write everything queued now; returns how many events were written, or
/// None when the slot no longer belongs to this writer's database.
fn drain(i: usize, db: pg_sys::Oid) -> Option<usize> {
    let (batch, flush) = queue::take(i, db, 16 << 20)?;
    if batch.is_empty() {
        super::head::settle(false);
        return Some(0);
    }
    set_commit_flush(flush);
    let last_seq = batch.last_seq().unwrap_or(0);
    // Records queued before this writer started may already be in the table
    // (a predecessor died between its commit and advancing the queue).
    let recheck = batch
        .first_seq()
        .is_some_and(|seq| seq <= RECHECK_UNTIL.with(|c| c.get()));
    let (new_last, undecodable) = BackgroundWorker::transaction(|| write_batch(&batch, recheck));
    remember_sessions();
    super::head::committed(flush);
    LAST_HASH.with(|h| *h.borrow_mut() = Some(new_last));
    let n = batch.len();
    if undecodable > 0 {
        warning!("agent_guard: {undecodable} audit records could not be decoded and are counted as dropped");
    }
    // (a slot with records is never given to another database)
    queue::with_slot(i, |s, _| {
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        s.tail = batch.end;
        s.durable = last_seq;
        s.written += (n - undecodable) as u64;
        s.dropped += undecodable as u64;
        let t = queue::totals();
        t.written
            .fetch_add((n - undecodable) as u64, Ordering::Relaxed);
        t.dropped.fetch_add(undecodable as u64, Ordering::Relaxed);
        s.oldest_ts = if s.tail == s.head { 0 } else { now };
        s.last_active = now;
    });
    broadcast(i);
    Some(n)
}

/// Forget the chain head and the open transactions when agent_guard.audit_log
/// is not the table they were read from (the extension was dropped and
/// created again while this writer stayed).
fn check_table() {
    let relid = unsafe {
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"audit_log".as_ptr(), ns)
        }
    };
    if TABLE.with(|t| t.replace(relid)) != relid {
        LAST_HASH.with(|h| *h.borrow_mut() = None);
        PENDING.with(|p| *p.borrow_mut() = None);
        OPEN.with(|o| *o.borrow_mut() = OpenRows::default());
        COMPLETE_PLAN.with(|p| *p.borrow_mut() = None);
        SESSIONS.with(|s| s.borrow_mut().clear());
    }
}

/// The batch committed: its new session rows are the sessions' contexts now.
fn remember_sessions() {
    let new = NEW_SESSIONS.with(|n| std::mem::take(&mut *n.borrow_mut()));
    SESSIONS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() + new.len() > SESSIONS_LIMIT {
            s.clear();
        }
        for (ctx, id) in new {
            s.insert(ctx.sk.clone(), (ctx, id));
        }
    });
}

/// The agent_guard.audit_sessions row of `row`'s session context: the one
/// remembered, one this batch added, or a new one.
fn session_id(row: &Row) -> i64 {
    let known = SESSIONS.with(|s| {
        s.borrow()
            .get(row.sk)
            .filter(|(c, _)| row.has_ctx(c))
            .map(|(_, id)| *id)
    });
    if let Some(id) = known {
        return id;
    }
    let added = NEW_SESSIONS.with(|n| {
        n.borrow()
            .iter()
            .rev()
            .find(|(c, _)| row.has_ctx(c))
            .map(|(_, id)| *id)
    });
    if let Some(id) = added {
        return id;
    }
    let ctx = row.ctx();
    let id = Spi::get_one_with_args::<i64>(
        "INSERT INTO agent_guard.audit_sessions (session_key, session_user_name, login_role, sponsor, \
                                                application_name, client_addr, database_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            ctx.sk.as_str().into(),
            ctx.su.clone().into(),
            ctx.login.clone().into(),
            ctx.sponsor.clone().into(),
            ctx.app.clone().into(),
            ctx.addr.clone().into(),
            ctx.db.clone().into(),
        ],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| pgrx::error!("agent_guard: cannot record an audit session"));
    NEW_SESSIONS.with(|n| n.borrow_mut().push((ctx, id)));
    id
}

fn last_hash() -> String {
    LAST_HASH.with(|h| h.borrow().clone()).unwrap_or_else(|| {
        Spi::get_one::<String>(
            "SELECT agent_guard._hash_text(row_hash) FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1",
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| chain::GENESIS.to_string())
    })
}

/// Statement rows of transactions whose end the writer has not seen yet:
/// only these need an UPDATE when the transaction ends in a later batch.
fn pending_xacts() -> HashSet<(String, u64)> {
    PENDING.with(|p| p.borrow().clone()).unwrap_or_else(|| {
        let loaded: HashSet<(String, u64)> = Spi::connect(|c| {
            c.select(
                "SELECT DISTINCT session_key, local_xact FROM agent_guard.audit_log WHERE transaction_outcome IS NULL",
                None,
                &[],
            )
            .map(|t| {
                t.filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<i64>(2).ok()?? as u64)))
                    .collect()
            })
            .unwrap_or_default()
        });
        loaded
    })
}

/// Insert and update one batch in the current transaction; returns the new
/// chain head and how many records could not be decoded (never silently lost:
/// the caller counts them as dropped).
///
/// Events of one statement and its transaction that arrive in the same
/// batch are merged into one row, so under load a statement costs one
/// inserted row; only statements whose end comes in a later batch are updated.
fn write_batch(batch: &queue::Batch, recheck: bool) -> (String, usize) {
    check_table();
    NEW_SESSIONS.with(|n| n.borrow_mut().clear());
    // Rows in queue order: complete records as they are (borrowed from the
    // batch), statement events with the end and transaction events of the
    // same batch merged in (decoded into `events`).
    let mut order: Vec<Result<Row, usize>> = Vec::with_capacity(batch.len());
    let mut events: Vec<Stmt> = vec![];
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut by_xact: HashMap<(String, u64), Vec<usize>> = HashMap::new();
    let mut pending = pending_xacts();
    let mut open = OPEN.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let mut late: Vec<Value> = vec![];
    let mut undecodable = 0;
    let xact_of = |e: &Value| {
        (
            e["sk"].as_str().unwrap_or("").to_string(),
            e["x"].as_u64().unwrap_or(0),
        )
    };
    for p in batch.payloads() {
        if let Some(row) = parse_complete_record(p) {
            order.push(Ok(row));
            continue;
        }
        let Ok(e) = serde_json::from_slice::<Value>(p) else {
            undecodable += 1;
            continue;
        };
        match e["k"].as_str() {
            Some("stmt") => {
                let Ok(row) = serde_json::from_value::<Stmt>(e.clone()) else {
                    undecodable += 1;
                    continue;
                };
                let i = events.len();
                by_key.insert(row.event_key(), i);
                by_xact.entry(xact_of(&e)).or_default().push(i);
                events.push(row);
                order.push(Err(i));
            }
            Some("end") => {
                let in_batch = by_key.get(&key(&e["sk"], &e["n"])).copied();
                let open_key = (
                    e["sk"].as_str().unwrap_or("").to_string(),
                    e["n"].as_u64().unwrap_or(0),
                );
                if in_batch.is_none() && !open.rows.contains_key(&open_key) {
                    late.push(e);
                    continue;
                }
                let Ok(end) = serde_json::from_value::<End>(e) else {
                    undecodable += 1;
                    continue;
                };
                match in_batch {
                    Some(i) => events[i].end = Some(end),
                    None => open.end(&open_key, end),
                }
            }
            Some("xact") => {
                let x = xact_of(&e);
                match serde_json::from_value::<XactEnd>(e.clone()) {
                    Ok(xo) => {
                        for &i in by_xact.get(&x).map(Vec::as_slice).unwrap_or(&[]) {
                            events[i].set_transaction(&xo);
                        }
                        open.transaction_end(&x, &xo);
                    }
                    Err(_) => undecodable += 1,
                }
                if pending.remove(&x) {
                    late.push(e);
                }
            }
            Some("sub") => {
                let x = xact_of(&e);
                let (sx, upto) = (e["sx"].as_u64(), e["upto"].as_u64());
                for &i in by_xact.get(&x).map(Vec::as_slice).unwrap_or(&[]) {
                    let r = &mut events[i];
                    if Some(r.sx as u64) >= sx && Some(r.n) <= upto && r.xo.is_none() {
                        r.xo = Some(XactEnd {
                            out: "rolled back to savepoint".into(),
                            xid: None,
                        });
                    }
                }
                if let (Some(sx), Some(upto)) = (sx, upto) {
                    open.savepoint_rollback(&x, sx, upto);
                }
                if pending.contains(&x) {
                    late.push(e);
                }
            }
            _ => undecodable += 1,
        }
    }
    let mut rows: Vec<Row> = order
        .into_iter()
        .map(|r| r.unwrap_or_else(|i| events[i].row()))
        .collect();
    if recheck {
        // Records queued before this writer started may already be in the
        // table: a predecessor that died between its commit and advancing the
        // queue wrote at most one row per record of this batch (it started at
        // the same place), and its rows are the newest ones.
        // (session_key, statement_no) identifies a statement
        let newest = batch.len() as i64;
        let already: HashSet<(String, i64)> = Spi::connect(|c| {
            c.select(
                "SELECT a.session_key, a.statement_no FROM agent_guard.audit_log a \
                 ORDER BY a.id DESC LIMIT $1",
                None,
                &[newest.into()],
            )
            .map(|t| {
                t.filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<i64>(2).ok()??)))
                    .collect()
            })
            .unwrap_or_default()
        });
        if !already.is_empty() {
            rows.retain(|r| !already.contains(&(r.sk.to_string(), r.n as i64)));
        }
    }
    let mut prev = last_hash();
    let mut touched: Vec<i64> = vec![];
    // rows of earlier batches completed by this one's events (before the
    // SQL updates below, which then find them complete and pass them by)
    complete_open_rows(&mut open);
    if !rows.is_empty() {
        // retention (issue 14.6b): the partition for these ids exists
        super::retention::prepare(rows.len());
        super::retention::maybe_start_worker();
        let table = insert::AuditTable::open();
        let mut sealed: Vec<insert::Sealed> = Vec::with_capacity(rows.len());
        let mut content = String::with_capacity(1024);
        for row in &rows {
            // each row's hash covers its id, so ids come first
            let id = table.next_id();
            let session_id = session_id(row);
            content.clear();
            write_row_content(id, session_id, row, &mut content);
            let head = sealed.last().map_or(prev.as_str(), |s| s.row_hash.as_str());
            let row_hash = chain::link_hex(head, &content);
            let outcome_hash = row.has_outcome().then(|| {
                content.clear();
                write_outcome_content(row, &mut content);
                chain::link_hex(row_hash.as_str(), &content)
            });
            sealed.push(insert::Sealed {
                id,
                session_id,
                row_hash,
                outcome_hash,
                row,
            });
        }
        table.insert(&prev, &sealed);
        table.close();
        if let Some(last) = sealed.last() {
            prev = last.row_hash.as_str().to_string();
            super::head::inserted(last.id, &prev);
        }
        for s in &sealed {
            open.add(s);
        }
    }
    open.limit(&mut pending);
    for e in late {
        let sql = match e["k"].as_str() {
            Some("end") => "UPDATE agent_guard.audit_log SET ended_at = ($1->>'ended_at')::timestamptz, \
                 rows_affected = ($1->>'rows')::bigint, outcome = $1->>'out', sqlstate = $1->>'state', \
                 error_message = $1->>'msg' \
                 WHERE session_key = $1->>'sk' AND statement_no = ($1->>'n')::bigint AND outcome IS NULL \
                 RETURNING id",
            Some("xact") => "UPDATE agent_guard.audit_log SET transaction_outcome = $1->>'out', \
                 transaction_id = ($1->>'xid')::bigint \
                 WHERE session_key = $1->>'sk' AND local_xact = ($1->>'x')::bigint \
                   AND transaction_outcome IS NULL RETURNING id",
            Some("sub") => "UPDATE agent_guard.audit_log SET transaction_outcome = 'rolled back to savepoint' \
                 WHERE session_key = $1->>'sk' AND local_xact = ($1->>'x')::bigint \
                   AND subxact >= ($1->>'sx')::int AND statement_no <= ($1->>'upto')::bigint \
                   AND transaction_outcome IS NULL RETURNING id",
            _ => continue,
        };
        let mut arg = e.clone();
        if let Some(o) = arg.as_object_mut() {
            o.insert("ended_at".into(), ts(&e["ts"]));
            o.insert("key".into(), json!(key(&e["sk"], &e["n"])));
        }
        let ids: Vec<i64> = Spi::connect_mut(|c| {
            c.update(sql, None, &[pgrx::JsonB(arg).into()])
                .map(|t| t.filter_map(|r| r.get::<i64>(1).ok().flatten()).collect())
                .unwrap_or_default()
        });
        touched.extend(ids);
    }
    if !touched.is_empty() {
        Spi::run_with_args(
            "UPDATE agent_guard.audit_log a SET outcome_hash = agent_guard._hash_bytes(agent_guard._link(agent_guard._hash_text(a.row_hash), agent_guard._outcome_content(a))) \
             WHERE a.id = ANY($1) AND (a.outcome IS NOT NULL OR a.transaction_outcome IS NOT NULL)",
            &[touched.into()],
        )
        .expect("agent_guard: cannot seal audit outcomes");
    }
    PENDING.with(|p| *p.borrow_mut() = Some(pending));
    OPEN.with(|o| *o.borrow_mut() = open);
    (prev, undecodable)
}

impl OpenRows {
    /// Hold a row just inserted if it lacks its end or its transaction's end.
    fn add(&mut self, s: &insert::Sealed) {
        let row = s.row;
        let end = row.outcome().map(|e| End {
            ts: e.ts,
            rows: e.rows,
            out: e.out.to_string(),
            state: e.state.map(str::to_string),
            msg: e.msg.map(str::to_string),
        });
        let xo = row.xo.map(|x| XactEnd {
            out: x.out.to_string(),
            xid: x.xid,
        });
        if end.is_some() && xo.is_some() {
            return;
        }
        let sk = row.sk.to_string();
        self.by_xact
            .entry((sk.clone(), row.x))
            .or_default()
            .push(row.n);
        self.rows.insert(
            (sk, row.n),
            OpenRow {
                id: s.id,
                row_hash: s.row_hash.as_str().to_string(),
                x: row.x,
                sx: row.sx,
                end,
                xo,
                dirty: false,
            },
        );
    }

    /// A statement's end (as the SQL path: only a row without one takes it).
    fn end(&mut self, key: &(String, u64), end: End) {
        if let Some(r) = self.rows.get_mut(key) {
            if r.end.is_none() {
                r.end = Some(end);
                if !std::mem::replace(&mut r.dirty, true) {
                    self.dirty.push(key.clone());
                }
            }
        }
    }

    /// A transaction's end, for its rows without one.
    fn transaction_end(&mut self, x: &(String, u64), xo: &XactEnd) {
        for n in self.by_xact.get(x).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(r) = self.rows.get_mut(&(x.0.clone(), *n)) {
                if r.xo.is_none() {
                    r.xo = Some(xo.clone());
                    if !std::mem::replace(&mut r.dirty, true) {
                        self.dirty.push((x.0.clone(), *n));
                    }
                }
            }
        }
    }

    /// A rollback to a savepoint: the transaction's rows of subtransaction
    /// `sx` or later, numbered up to `upto`, without a transaction end.
    fn savepoint_rollback(&mut self, x: &(String, u64), sx: u64, upto: u64) {
        for n in self.by_xact.get(x).map(Vec::as_slice).unwrap_or(&[]) {
            if *n > upto {
                continue;
            }
            if let Some(r) = self.rows.get_mut(&(x.0.clone(), *n)) {
                if r.sx as u64 >= sx && r.xo.is_none() {
                    r.xo = Some(XactEnd {
                        out: "rolled back to savepoint".into(),
                        xid: None,
                    });
                    if !std::mem::replace(&mut r.dirty, true) {
                        self.dirty.push((x.0.clone(), *n));
                    }
                }
            }
        }
    }

    /// Forget every row once more are held than [`OPEN_ROWS_LIMIT`]: the
    /// SQL path completes them (their transactions go to `pending`).
    fn limit(&mut self, pending: &mut HashSet<(String, u64)>) {
        if self.rows.len() <= OPEN_ROWS_LIMIT {
            return;
        }
        for ((sk, x), ns) in self.by_xact.drain() {
            let lacks_xact_end = ns.iter().any(|n| {
                self.rows
                    .get(&(sk.clone(), *n))
                    .is_some_and(|r| r.xo.is_none())
            });
            if lacks_xact_end {
                pending.insert((sk, x));
            }
        }
        self.rows.clear();
        self.dirty.clear();
    }
}

/// Write the outcome of every open row this batch changed — ended_at,
/// rows, outcome, SQLSTATE, message, transaction id and outcome, and the
/// outcome hash over them — with one prepared UPDATE by id; forget the rows
/// that are complete now.
fn complete_open_rows(open: &mut OpenRows) {
    let mut ids: Vec<i64> = vec![];
    let mut ended_at: Vec<Option<String>> = vec![];
    let mut rows_affected: Vec<Option<i64>> = vec![];
    let mut outcome: Vec<Option<String>> = vec![];
    let mut sqlstate: Vec<Option<String>> = vec![];
    let mut message: Vec<Option<String>> = vec![];
    let mut xid: Vec<Option<i64>> = vec![];
    let mut xact_outcome: Vec<Option<String>> = vec![];
    let mut outcome_hash: Vec<Option<String>> = vec![];
    let mut content = String::with_capacity(256);
    let mut complete: Vec<(String, u64)> = vec![];
    let dirty = std::mem::take(&mut open.dirty);
    for k in &dirty {
        let Some(r) = open.rows.get_mut(k) else {
            continue;
        };
        r.dirty = false;
        let row = Row {
            end: r.end.as_ref().map(|e| super::row::EndOf {
                ts: e.ts,
                rows: e.rows,
                out: e.out.as_str(),
                state: e.state.as_deref(),
                msg: e.msg.as_deref(),
            }),
            xo: r.xo.as_ref().map(|x| super::row::XactEndOf {
                out: x.out.as_str(),
                xid: x.xid,
            }),
            ..Default::default()
        };
        content.clear();
        write_outcome_content(&row, &mut content);
        ids.push(r.id);
        ended_at.push(r.end.as_ref().map(|e| super::row::iso_utc(e.ts)));
        rows_affected.push(r.end.as_ref().and_then(|e| e.rows).map(|n| n as i64));
        outcome.push(r.end.as_ref().map(|e| e.out.clone()));
        sqlstate.push(r.end.as_ref().and_then(|e| e.state.clone()));
        message.push(r.end.as_ref().and_then(|e| e.msg.clone()));
        xid.push(r.xo.as_ref().and_then(|x| x.xid).map(|n| n as i64));
        xact_outcome.push(r.xo.as_ref().map(|x| x.out.clone()));
        outcome_hash.push(Some(
            chain::link_hex(&r.row_hash, &content).as_str().to_string(),
        ));
        if r.end.is_some() && r.xo.is_some() {
            complete.push(k.clone());
        }
    }
    for (sk, n) in complete {
        let Some(r) = open.rows.remove(&(sk.clone(), n)) else {
            continue;
        };
        let x = (sk, r.x);
        if let Some(ns) = open.by_xact.get_mut(&x) {
            ns.retain(|m| *m != n);
            if ns.is_empty() {
                open.by_xact.remove(&x);
            }
        }
    }
    if ids.is_empty() {
        return;
    }
    COMPLETE_PLAN.with(|plan| {
        let mut plan = plan.borrow_mut();
        Spi::connect_mut(|c| {
            if plan.is_none() {
                let (int8s, texts) = (pg_sys::INT8ARRAYOID, pg_sys::TEXTARRAYOID);
                let types: Vec<pgrx::PgOid> = [
                    int8s, texts, int8s, texts, texts, texts, int8s, texts, texts,
                ]
                .into_iter()
                .map(pgrx::PgOid::from)
                .collect();
                let prepared = c
                    .prepare_mut(
                        "UPDATE agent_guard.audit_log a SET ended_at = u.ended_at::pg_catalog.timestamptz, \
                         rows_affected = u.rows_affected, outcome = u.outcome, sqlstate = u.sqlstate, \
                         error_message = u.error_message, transaction_id = u.transaction_id, \
                         transaction_outcome = u.transaction_outcome, \
                         outcome_hash = pg_catalog.decode(u.outcome_hash, 'hex') \
                         FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), \
                                         pg_catalog.unnest($3), pg_catalog.unnest($4), \
                                         pg_catalog.unnest($5), pg_catalog.unnest($6), \
                                         pg_catalog.unnest($7), pg_catalog.unnest($8), \
                                         pg_catalog.unnest($9)) \
                           AS u(id, ended_at, rows_affected, outcome, sqlstate, error_message, \
                                transaction_id, transaction_outcome, outcome_hash) \
                         WHERE a.id OPERATOR(pg_catalog.=) u.id",
                        &types,
                    )
                    .expect("agent_guard: cannot prepare the audit writer's outcome update");
                *plan = Some(prepared.keep());
            }
            let stmt = plan.as_ref().expect("prepared above");
            c.update(
                stmt,
                None,
                &[
                    ids.into(),
                    ended_at.into(),
                    rows_affected.into(),
                    outcome.into(),
                    sqlstate.into(),
                    message.into(),
                    xid.into(),
                    xact_outcome.into(),
                    outcome_hash.into(),
                ],
            )
            .expect("agent_guard: cannot write audit outcomes");
        })
    });
}
