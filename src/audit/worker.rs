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
//!   slot idle the longest goes, see [`queue::slot_for`]);
//! - on SIGTERM (shutdown, `pg_terminate_backend`), after a last batch.

use super::insert;
use super::queue;
use super::row::{
    key, parse_complete_record, ts, write_outcome_content, write_row_content, End, Row, Stmt,
    XactEnd,
};
use agent_guard_core::chain;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long a writer with nothing to do stays (it holds a background-worker
/// slot, `max_worker_processes`, meanwhile).
const IDLE_EXIT: Duration = Duration::from_secs(600);

/// How often an idle writer looks whether its database is wanted without
/// other sessions (`DROP DATABASE` waits up to 5 s for them to go).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How long a busy writer collects records before its next batch. Records
/// someone waits for do not wait for it.
const BATCH_DELAY: Duration = Duration::from_millis(10);

thread_local! {
    static PENDING: RefCell<Option<HashSet<(String, u64)>>> = const { RefCell::new(None) };
    static IS_WRITER: Cell<bool> = const { Cell::new(false) };
    /// Sequence of the last record queued when this writer started.
    static RECHECK_UNTIL: Cell<u64> = const { Cell::new(0) };
    static LAST_HASH: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether the writer's commits currently wait for their WAL flush.
    static COMMIT_FLUSH: Cell<Option<bool>> = const { Cell::new(None) };
    /// The audit_log the cached chain head and open transactions belong to
    /// (a re-created extension has a new one, starting a new chain).
    static TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// True in the audit writer process and while purge_audit() runs.
pub fn is_writer() -> bool {
    IS_WRITER.with(|w| w.get())
}

pub fn set_writer(on: bool) {
    IS_WRITER.with(|w| w.set(on));
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
    queue::request(crate::gucs::audit_queue_bytes());
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
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        queue::request(crate::gucs::audit_queue_bytes());
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
    queue::with_slot(i, |s, _| {
        if s.worker_pid == unsafe { pg_sys::MyProcPid } {
            s.worker_pid = 0;
            s.worker_latch = std::ptr::null_mut();
            s.worker_state = queue::WORKER_NONE;
        }
    });
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
    let mut idle_since = std::time::Instant::now();
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
            queue::release_if_empty(i, db);
            break;
        }
        if n == 0 && idle_since.elapsed() > IDLE_EXIT && queue::release_if_empty(i, db) {
            break;
        }
        // After a batch, collect the next one for a moment (records someone
        // waits for, or a filling queue, wake the writer at once); on an
        // empty queue, sleep until a backend wakes it.
        let timeout = if n > 0 { BATCH_DELAY } else { IDLE_POLL };
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            drain(i, db);
            queue::release_if_empty(i, db);
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
    }
}

fn last_hash() -> String {
    LAST_HASH.with(|h| h.borrow().clone()).unwrap_or_else(|| {
        Spi::get_one::<String>(
            "SELECT row_hash FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1",
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
    // Rows in queue order: complete records as they are (borrowed from the
    // batch), statement events with the end and transaction events of the
    // same batch merged in (decoded into `events`).
    let mut order: Vec<Result<Row, usize>> = Vec::with_capacity(batch.len());
    let mut events: Vec<Stmt> = vec![];
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut by_xact: HashMap<(String, u64), Vec<usize>> = HashMap::new();
    let mut pending = pending_xacts();
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
            Some("end") => match by_key.get(&key(&e["sk"], &e["n"])) {
                Some(&i) => match serde_json::from_value::<End>(e.clone()) {
                    Ok(end) => events[i].end = Some(end),
                    Err(_) => undecodable += 1,
                },
                None => late.push(e),
            },
            Some("xact") => {
                let x = xact_of(&e);
                match serde_json::from_value::<XactEnd>(e.clone()) {
                    Ok(xo) => {
                        for &i in by_xact.get(&x).map(Vec::as_slice).unwrap_or(&[]) {
                            events[i].set_transaction(&xo);
                        }
                    }
                    Err(_) => undecodable += 1,
                }
                if pending.remove(&x) {
                    late.push(e);
                }
            }
            Some("sub") => {
                let x = xact_of(&e);
                for &i in by_xact.get(&x).map(Vec::as_slice).unwrap_or(&[]) {
                    let r = &mut events[i];
                    if Some(r.sx as u64) >= e["sx"].as_u64()
                        && Some(r.n) <= e["upto"].as_u64()
                        && r.xo.is_none()
                    {
                        r.xo = Some(XactEnd {
                            out: "rolled back to savepoint".into(),
                            xid: None,
                        });
                    }
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
        let keys: Vec<String> = rows.iter().map(Row::event_key).collect();
        let newest = batch.len() as i64;
        let already: HashSet<String> = Spi::connect(|c| {
            c.select(
                "SELECT n.event_key FROM (SELECT a.event_key FROM agent_guard.audit_log a \
                                          ORDER BY a.id DESC LIMIT $2) n \
                 WHERE n.event_key = ANY($1)",
                None,
                &[keys.into(), newest.into()],
            )
            .map(|t| {
                t.filter_map(|r| r.get::<String>(1).ok().flatten())
                    .collect()
            })
            .unwrap_or_default()
        });
        if !already.is_empty() {
            rows.retain(|r| !already.contains(&r.event_key()));
        }
    }
    for r in &rows {
        if r.xo.is_none() {
            pending.insert((r.sk.to_string(), r.x));
        }
    }

    let mut prev = last_hash();
    let mut touched: Vec<i64> = vec![];
    if !rows.is_empty() {
        let table = insert::AuditTable::open();
        let mut sealed: Vec<insert::Sealed> = Vec::with_capacity(rows.len());
        let mut content = String::with_capacity(1024);
        for row in &rows {
            // each row's hash covers its id, so ids come first
            let id = table.next_id();
            content.clear();
            write_row_content(id, row, &mut content);
            let head = sealed.last().map_or(prev.as_str(), |s| s.row_hash.as_str());
            let row_hash = chain::link_hex(head, &content);
            let outcome_hash = row.has_outcome().then(|| {
                content.clear();
                write_outcome_content(row, &mut content);
                chain::link_hex(row_hash.as_str(), &content)
            });
            sealed.push(insert::Sealed {
                id,
                row_hash,
                outcome_hash,
                row,
            });
        }
        table.insert(&prev, &sealed);
        table.close();
        if let Some(last) = sealed.last() {
            prev = last.row_hash.as_str().to_string();
        }
    }
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
            "UPDATE agent_guard.audit_log a SET outcome_hash = agent_guard._link(a.row_hash, agent_guard._outcome_content(a)) \
             WHERE a.id = ANY($1) AND (a.outcome IS NOT NULL OR a.transaction_outcome IS NOT NULL)",
            &[touched.into()],
        )
        .expect("agent_guard: cannot seal audit outcomes");
    }
    PENDING.with(|p| *p.borrow_mut() = Some(pending));
    (prev, undecodable)
}
