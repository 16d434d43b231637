//! The audit writer: one background worker per database, started on demand
//! by the first backend that queues an event there (so a new
//! `CREATE EXTENSION agent_guard` is served without a restart). It drains
//! its queue in batches, one transaction per batch (group commit), chains
//! the rows' hashes, then advances the queue and wakes waiting backends.

use super::queue;
use agent_guard_core::chain;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// How long a writer with nothing to do stays.
const IDLE_EXIT: Duration = Duration::from_secs(2);

thread_local! {
    static IS_WRITER: Cell<bool> = const { Cell::new(false) };
    static LAST_HASH: RefCell<Option<String>> = const { RefCell::new(None) };
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

/// Entry point of the writer process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn agent_guard_audit_writer(arg: pg_sys::Datum) {
    let i = arg.value();
    set_writer(true);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = queue::slot_dboid(i);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    unsafe {
        queue::with_slot(i, |s, _| {
            s.worker_pid = pg_sys::MyProcPid;
            s.worker_latch = pg_sys::MyLatch;
            s.worker_state = queue::WORKER_RUNNING;
        });
        pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(i));
    }
    let installed = BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'agent_guard')",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    });
    if !installed {
        // Nothing can be written here; backends refuse agents in such databases anyway.
        discard_all(i);
        return;
    }
    // Exit when idle, so DROP DATABASE is never blocked by the writer and the
    // slot can serve another database; the next event starts a writer again.
    let mut idle_since = std::time::Instant::now();
    loop {
        let n = drain(i);
        if n > 0 {
            idle_since = std::time::Instant::now();
        } else if idle_since.elapsed() > IDLE_EXIT && queue::release_if_empty(i) {
            break;
        }
        let timeout = if n > 0 {
            Duration::from_millis(0)
        } else {
            Duration::from_millis(250)
        };
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            drain(i);
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

fn discard_all(i: usize) {
    queue::with_slot(i, |s, _| {
        s.dropped += s.enqueued - s.durable;
        s.tail = s.head;
        s.durable = s.enqueued;
        s.oldest_ts = 0;
    });
    broadcast(i);
    queue::release_if_empty(i);
}

fn broadcast(i: usize) {
    unsafe {
        pg_sys::ConditionVariableBroadcast(queue::cv_ptr(i, true));
        pg_sys::ConditionVariableBroadcast(queue::cv_ptr(i, false));
    }
}

/// Write everything queued now; returns how many events were written.
fn drain(i: usize) -> usize {
    let (end, records) = queue::with_slot(i, |s, buf| queue::peek_all(s, buf, 16 << 20));
    if records.is_empty() {
        return 0;
    }
    let last_seq = records.last().map(|r| r.0).unwrap_or(0);
    let events: Vec<Value> = records
        .iter()
        .filter_map(|(_, p)| serde_json::from_slice(p).ok())
        .collect();
    let new_last = BackgroundWorker::transaction(move || write_batch(&events));
    LAST_HASH.with(|h| *h.borrow_mut() = Some(new_last));
    let n = records.len();
    queue::with_slot(i, |s, _| {
        s.tail = end;
        s.durable = last_seq;
        s.written += n as u64;
        s.oldest_ts = if s.tail == s.head {
            0
        } else {
            unsafe { pg_sys::GetCurrentTimestamp() }
        };
    });
    broadcast(i);
    n
}

/// PostgreSQL-epoch microseconds as an ISO timestamp in UTC.
pub fn iso_utc(pg_us: i64) -> String {
    let unix_us = pg_us + 946_684_800_000_000;
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}+00",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

fn ts(v: &Value) -> Value {
    v.as_i64()
        .map_or(Value::Null, |t| Value::String(iso_utc(t)))
}

fn key(sk: &Value, n: &Value) -> String {
    format!("{}:{}", sk.as_str().unwrap_or(""), n)
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

fn outcome_of(row: &mut Map<String, Value>, e: &Value) {
    row.insert("ended_at".into(), ts(&e["ts"]));
    row.insert("rows_affected".into(), e["rows"].clone());
    row.insert("outcome".into(), e["out"].clone());
    row.insert("sqlstate".into(), e["state"].clone());
    row.insert("error_message".into(), e["msg"].clone());
}

/// Insert and update one batch in the current transaction; returns the new chain head.
fn write_batch(events: &[Value]) -> String {
    let mut rows: Vec<Map<String, Value>> = vec![];
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    let mut late: Vec<Value> = vec![];
    for e in events {
        match e["k"].as_str() {
            Some("stmt") => {
                let mut r = Map::new();
                let k = key(&e["sk"], &e["n"]);
                r.insert("event_key".into(), json!(k));
                r.insert("session_key".into(), e["sk"].clone());
                r.insert("statement_no".into(), e["n"].clone());
                r.insert("local_xact".into(), e["x"].clone());
                r.insert("subxact".into(), e["sx"].clone());
                r.insert("parent_statement".into(), e["parent"].clone());
                r.insert("nesting_level".into(), e["lvl"].clone());
                r.insert("started_at".into(), ts(&e["ts"]));
                r.insert("session_user_name".into(), e["su"].clone());
                r.insert("current_user_name".into(), e["cu"].clone());
                r.insert("agent".into(), e["agent"].clone());
                r.insert("login_role".into(), e["login"].clone());
                r.insert("sponsor".into(), e["sponsor"].clone());
                r.insert("application_name".into(), e["app"].clone());
                r.insert("client_addr".into(), e["addr"].clone());
                r.insert("backend_pid".into(), e["pid"].clone());
                r.insert("database_name".into(), e["db"].clone());
                r.insert("request_id".into(), e["rid"].clone());
                r.insert("traceparent".into(), e["tp"].clone());
                r.insert("command".into(), e["cmd"].clone());
                r.insert("risk".into(), e["risk"].clone());
                r.insert("objects".into(), e["obj"].clone());
                r.insert("decision".into(), e["dec"].clone());
                r.insert("reason".into(), e["why"].clone());
                r.insert("grant_id".into(), e["grant"].clone());
                r.insert("statement_text".into(), e["text"].clone());
                r.insert("parameters".into(), e["params"].clone());
                if e["dec"] == "denied" {
                    r.insert("ended_at".into(), ts(&e["ts"]));
                    r.insert("outcome".into(), json!("denied"));
                    r.insert("sqlstate".into(), json!("42501"));
                }
                index.insert(k, rows.len());
                rows.push(r);
            }
            Some("end") => match index.get(&key(&e["sk"], &e["n"])) {
                Some(&i) => outcome_of(&mut rows[i], e),
                None => late.push(e.clone()),
            },
            Some("xact") => {
                for r in rows.iter_mut() {
                    if r["session_key"] == e["sk"]
                        && r["local_xact"] == e["x"]
                        && !r.contains_key("transaction_outcome")
                    {
                        r.insert("transaction_outcome".into(), e["out"].clone());
                        r.insert("transaction_id".into(), e["xid"].clone());
                    }
                }
                late.push(e.clone());
            }
            Some("sub") => {
                for r in rows.iter_mut() {
                    if r["session_key"] == e["sk"]
                        && r["local_xact"] == e["x"]
                        && r["subxact"].as_u64() >= e["sx"].as_u64()
                        && r["statement_no"].as_u64() <= e["upto"].as_u64()
                        && !r.contains_key("transaction_outcome")
                    {
                        r.insert(
                            "transaction_outcome".into(),
                            json!("rolled back to savepoint"),
                        );
                    }
                }
                late.push(e.clone());
            }
            _ => {}
        }
    }

    let mut prev = last_hash();
    let mut touched: Vec<i64> = vec![];
    if !rows.is_empty() {
        let json_rows = Value::Array(rows.into_iter().map(Value::Object).collect());
        let inserted: Vec<(i64, String)> = Spi::connect_mut(|c| {
            let t = c
                .update(
                    "INSERT INTO agent_guard.audit_log AS a (event_key, session_key, statement_no, local_xact, subxact, parent_statement, nesting_level, started_at, session_user_name, current_user_name, agent, login_role, sponsor, application_name, client_addr, backend_pid, database_name, request_id, traceparent, command, risk, objects, decision, reason, grant_id, statement_text, parameters, ended_at, rows_affected, outcome, sqlstate, error_message, transaction_id, transaction_outcome) \
                     SELECT event_key, session_key, statement_no, local_xact, subxact, parent_statement, nesting_level, started_at, session_user_name, current_user_name, agent, login_role, sponsor, application_name, client_addr, backend_pid, database_name, request_id, traceparent, command, risk, objects, decision, reason, grant_id, statement_text, parameters, ended_at, rows_affected, outcome, sqlstate, error_message, transaction_id, transaction_outcome FROM jsonb_populate_recordset(NULL::agent_guard.audit_log, $1) \
                     ON CONFLICT (event_key) DO NOTHING \
                     RETURNING a.id, agent_guard._row_content(a)",
                    None,
                    &[pgrx::JsonB(json_rows).into()],
                )
                .expect("agent_guard: cannot insert audit rows");
            t.filter_map(|r| Some((r.get::<i64>(1).ok()??, r.get::<String>(2).ok()??)))
                .collect()
        });
        let mut sorted = inserted;
        sorted.sort_by_key(|r| r.0);
        let mut ids = vec![];
        let mut prevs = vec![];
        let mut hashes = vec![];
        for (id, content) in sorted {
            let h = chain::link(&prev, &content);
            ids.push(id);
            prevs.push(prev.clone());
            hashes.push(h.clone());
            prev = h;
        }
        touched.extend(ids.iter().copied());
        Spi::run_with_args(
            "UPDATE agent_guard.audit_log a SET prev_hash = u.p, row_hash = u.h \
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, p, h) WHERE a.id = u.id",
            &[ids.into(), prevs.into(), hashes.into()],
        )
        .expect("agent_guard: cannot chain audit rows");
    }
    for e in late {
        let sql = match e["k"].as_str() {
            Some("end") => "UPDATE agent_guard.audit_log SET ended_at = ($1->>'ended_at')::timestamptz, \
                 rows_affected = ($1->>'rows')::bigint, outcome = $1->>'out', sqlstate = $1->>'state', \
                 error_message = $1->>'msg' WHERE event_key = $1->>'key' RETURNING id",
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
    prev
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso_utc(0), "2000-01-01 00:00:00.000000+00");
        assert_eq!(
            super::iso_utc(817_948_800_123_456),
            "2025-12-02 00:00:00.123456+00"
        );
    }
}
