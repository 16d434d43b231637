//! The audit trail: every agent statement, allowed or refused, committed or
//! rolled back, written outside the user's transaction.
//!
//! Backends put events into a per-database shared-memory queue
//! ([`queue`]); a background writer per database ([`worker`]) inserts them in
//! its own transactions, batching, and chains their hashes. A statement
//! event says who, what and the decision; an end event adds rows or the
//! error; a transaction event says how the transaction ended. Risky
//! statements and refusals wait until their event is committed (sync);
//! reads may go asynchronously. If the trail cannot be written, the agent's
//! statement is refused.

pub mod drop_guard;
pub mod forward;
pub mod head;
pub mod ingest;
pub mod insert;
pub mod queue;
pub mod retention;
pub mod row;
pub mod worker;

use agent_guard_core::{Classification, Decision, Risk};
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::ffi::CStr;
use std::sync::atomic::Ordering;

/// A statement that started and has not ended yet.
struct Open {
    n: u64,
    /// Nesting level it started at.
    lvl: i32,
    query_desc: usize,
    subxact: u32,
    /// The statement when it was not sent yet (asynchronous records
    /// travel once, complete, at statement or transaction end).
    event: Option<row::Stmt>,
    /// Queue bytes reserved for its later record (end event or complete record).
    reserved: u64,
}

/// A finished statement whose record has not been queued yet.
struct Finished {
    subxact: u32,
    n: u64,
    event: row::Stmt,
    reserved: u64,
}

/// How many finished asynchronous records a backend holds before queueing them.
const DEFER_LIMIT: usize = 64;
/// A backend queues its finished records once its reservation exceeds this
/// share of the queue (reservations are upper bounds: queueing the records
/// gives the rest back).
const DEFER_SHARE: u64 = 32;

#[derive(Default)]
struct State {
    session_key: String,
    statements: u64,
    xact: u64,
    xact_audited: bool,
    open: Vec<Open>,
    finished: Vec<Finished>,
    /// Some record of the current transaction is already queued, so its end must be sent.
    xact_sent: bool,
    last_error: Option<(String, String)>,
    /// An error raised while no audited statement was running (parse
    /// analysis, planning): (statement text, sqlstate, message, time).
    orphan_error: Option<(String, String, String, i64)>,
    /// agent_guard is raising a refusal it already recorded.
    refusing: bool,
    /// Queue bytes this backend reserved for records it will queue later
    /// (released at transaction end), on slot `held_slot`.
    held: u64,
    held_slot: usize,
    /// This transaction's end is reserved for.
    xact_reserved: bool,
    /// Transaction-level events (its end, a savepoint rollback) still
    /// covered by the transaction's reservation; further ones wait for free
    /// space like any record, without taking other statements' reservations.
    event_credits: u8,
    exit_registered: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn now_us() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn session_key() -> String {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.session_key.is_empty() {
            let (pid, started) = unsafe { (pg_sys::MyProcPid, pg_sys::MyStartTimestamp) };
            s.session_key = format!("{pid}-{started}");
        }
        s.session_key.clone()
    })
}

/// Why an event could not be queued.
pub enum Unavailable {
    /// Every audit queue holds records or reservations of other databases.
    NoSlot,
    Full,
    /// The record is larger than the whole audit queue.
    TooLarge,
    /// No writer runs for this database and none came up in time.
    NoWriter(WriterMissing),
    NotDurable,
    /// On a hot standby: the primary did not take the record (see [`forward`]).
    Forwarding,
}

impl Unavailable {
    pub fn describe(&self) -> String {
        match self {
            Unavailable::NoSlot => format!(
                "all {} audit queues hold records of other databases",
                queue::slots().max(crate::gucs::audit_queues())
            ),
            Unavailable::Full => "the audit queue stayed full".into(),
            Unavailable::TooLarge => format!(
                "its record is larger than the audit queue ({} bytes)",
                queue::header_capacity()
            ),
            Unavailable::NoWriter(WriterMissing::Busy) => format!(
                "no audit writer is free: all {} run for other databases",
                crate::gucs::audit_writers()
            ),
            Unavailable::NoWriter(WriterMissing::NotRegistered) => {
                "the postmaster could not start an audit writer".into()
            }
            Unavailable::NoWriter(WriterMissing::Slow) => {
                "the audit writer of this database did not come up in time".into()
            }
            Unavailable::NotDurable => "the audit writer did not confirm the record in time".into(),
            Unavailable::Forwarding => "the primary did not take the record".into(),
        }
    }

    /// What an administrator can do about it.
    pub fn hint(&self) -> String {
        match self {
            Unavailable::NoSlot => format!(
                "Raise agent_guard.audit_queues (now {}, a restart is needed) to the number of databases agents use at once; SELECT agent_guard.audit_stats() shows the queues.",
                crate::gucs::audit_queues()
            ),
            Unavailable::NoWriter(WriterMissing::Busy) => format!(
                "Raise agent_guard.audit_writers (now {}) to the number of databases agents use at once, and max_worker_processes (now {}, a restart is needed) to at least agent_guard.audit_writers + max_parallel_workers + 2; see docs/operations.md, \"Many databases and sizing\".",
                crate::gucs::audit_writers(),
                unsafe { pg_sys::max_worker_processes }
            ),
            Unavailable::NoWriter(WriterMissing::NotRegistered) => format!(
                "Every background worker slot is taken: raise max_worker_processes (now {}, a restart is needed) to at least agent_guard.audit_writers + max_parallel_workers + 2, or lower agent_guard.audit_writers; see docs/operations.md, \"Many databases and sizing\".",
                unsafe { pg_sys::max_worker_processes }
            ),
            Unavailable::TooLarge => "Raise agent_guard.audit_queue_size (a restart is needed), or send shorter statements.".into(),
            Unavailable::NoWriter(WriterMissing::Slow)
            | Unavailable::Full
            | Unavailable::NotDurable => "Check SELECT agent_guard.audit_stats() and the server log; the audit writer may be down or its queue full.".into(),
            Unavailable::Forwarding => "Check the server log of this standby and of the primary (agent_guard.forward_conninfo, the role agent_guard_forwarder), or connect to the primary.".into(),
        }
    }
}

fn timeout_ms() -> i64 {
    crate::gucs::audit_wait_timeout_ms() as i64
}

/// Why a database has no writer.
#[derive(Clone, Copy)]
pub enum WriterMissing {
    /// Every allowed writer (`agent_guard.audit_writers`) runs elsewhere.
    Busy,
    /// The postmaster had no background-worker slot for it.
    NotRegistered,
    /// Asked for, but it did not come up in time.
    Slow,
}

/// Start slot `i`'s writer unless one runs or was asked for (rate-limited)
/// or every allowed writer runs; the reason when it cannot be had now.
pub(crate) fn ensure_worker(i: usize) -> Result<(), WriterMissing> {
    match queue::claim_start(i, crate::gucs::audit_writers()) {
        queue::Claim::Pending => Ok(()),
        queue::Claim::Busy => Err(WriterMissing::Busy),
        queue::Claim::Start => {
            if worker::start(i) {
                Ok(())
            } else {
                queue::with_slot(i, |s, _| s.worker_state = queue::WORKER_NONE);
                Err(WriterMissing::NotRegistered)
            }
        }
    }
}

/// One queueing step: append `payload` (if any) and reserve `reserve` bytes
/// for this backend's later records, using `from_reserved` bytes of what it
/// reserved before; with `need_writer`, only once a writer runs for the
/// database (starting one if needed). Waits for space and for a writer up
/// to `agent_guard.audit_wait_timeout`. Returns the slot and the record's
/// sequence number. Without `patient` (a non-agent session's statement,
/// which runs unrecorded when it cannot be recorded) it does not wait for
/// a queue, nor for a writer when none may start now; only for a writer
/// that is starting (with `need_writer`) and for space. `before_wait` runs
/// once before the first wait for space (the caller gives back what it
/// holds reserved for records it can queue now, so that backends waiting for
/// space never hold it all).
fn queue_step(
    payload: Option<&[u8]>,
    durable: bool,
    reserve: u64,
    from_reserved: u64,
    need_writer: bool,
    patient: bool,
    mut before_wait: Option<fn()>,
) -> Result<(usize, u64), Unavailable> {
    if !queue::attached() {
        return Err(Unavailable::NoSlot);
    }
    let db = unsafe { pg_sys::MyDatabaseId };
    // the clock is read only once waiting starts
    let mut deadline = None;
    let mut expired = || {
        let now = now_us();
        now > *deadline.get_or_insert(now + timeout_ms() * 1000)
    };
    let mut sleep = Sleep::default();
    // a busy cluster gives a database a slot once another one is idle
    let mut i = loop {
        match queue::slot_for(db) {
            Some(i) => break i,
            None if !patient || expired() => return Err(Unavailable::NoSlot),
            None => sleep.nap(20),
        }
    };
    let mut missing = WriterMissing::Slow;
    let a = queue::Admit {
        payload,
        durable,
        from_reserved,
        reserve,
        need_writer,
    };
    loop {
        let (r, writer) = queue::with_slot(i, |s, buf| {
            let r = queue::admit(s, buf, db, &a);
            match r {
                Ok(_) => queue::wake(s, buf.len()),
                Err(queue::Full::NoSpace) => {
                    s.waits += 1;
                    queue::totals().waits.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            (r, queue::writer_running(s))
        });
        match r {
            Ok(seq) => {
                if !writer {
                    // a record without a running writer (its writer died): get one
                    let _ = ensure_worker(i);
                }
                return Ok((i, seq));
            }
            Err(queue::Full::Reassigned) => {
                i = queue::slot_for(db).ok_or(Unavailable::NoSlot)?;
            }
            Err(queue::Full::NoWriter) => {
                if let Err(why) = ensure_worker(i) {
                    missing = why;
                    if !patient {
                        return Err(Unavailable::NoWriter(missing));
                    }
                }
                if expired() {
                    return Err(Unavailable::NoWriter(missing));
                }
                sleep.nap(10);
            }
            Err(queue::Full::TooLarge) => return Err(Unavailable::TooLarge),
            Err(queue::Full::NoSpace) => {
                if let Some(flush) = before_wait.take() {
                    flush();
                    continue;
                }
                if expired() {
                    return Err(Unavailable::Full);
                }
                sleep.on(queue::cv_ptr(i, false));
            }
        }
    }
}

/// Wait until record `seq` of slot `i` is committed by the writer.
fn wait_durable(i: usize, seq: u64) -> Result<(), Unavailable> {
    let mut deadline = None;
    let mut sleep = Sleep::default();
    while queue::durable_seq(i) < seq {
        let now = now_us();
        if now > *deadline.get_or_insert(now + timeout_ms() * 1000) {
            return Err(Unavailable::NotDurable);
        }
        let _ = ensure_worker(i);
        sleep.on(queue::cv_ptr(i, true));
    }
    Ok(())
}

/// Queue an event of a statement that was admitted before (its end, its
/// transaction's end, a savepoint rollback, its complete record), using the
/// `reserved` bytes its start reserved for it. Such an event is never refused:
/// if it still cannot be queued it is counted as dropped and reported.
fn send_later(payload: Vec<u8>, reserved: u64) {
    if crate::identity::on_standby() {
        // nothing is queued (or reserved) on a hot standby: records go to the primary
        if let Err(why) = forward::send(payload, false) {
            record_lost(&why);
        }
        return;
    }
    // all of the event's reservation goes back with it (it was an upper bound)
    let from = STATE.with(|s| s.borrow().held).min(reserved);
    match queue_step(Some(&payload), false, 0, from, false, true, None) {
        Ok(_) => STATE.with(|s| s.borrow_mut().held -= from),
        Err(why) => record_lost(&why),
    }
}

/// The reservation a transaction-level event (its end, a savepoint
/// rollback) may use: one of the two its first statement reserved, or none.
fn xact_event_credit() -> u64 {
    let covered = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let c = s.event_credits > 0;
        s.event_credits = s.event_credits.saturating_sub(1);
        c
    });
    if covered {
        queue::record_bytes(row::event_bound(&session_key(), false))
    } else {
        0
    }
}

/// A record that was due could not be queued: never silent.
fn record_lost(why: &Unavailable) {
    if queue::attached() {
        queue::totals().dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = queue::find_slot(unsafe { pg_sys::MyDatabaseId }) {
            queue::with_slot(i, |s, _| s.dropped += 1);
        }
    }
    warning!(
        "agent_guard: an audit record could not be queued and is lost ({}); audit_stats() counts it as dropped",
        why.describe()
    );
}

/// An audited statement was not admitted: agents' are refused, other
/// sessions' run unrecorded; both are counted.
fn note_unadmitted(is_agent: bool) {
    if !queue::attached() {
        return;
    }
    let t = queue::totals();
    let slot = queue::find_slot(unsafe { pg_sys::MyDatabaseId });
    if is_agent {
        t.refused.fetch_add(1, Ordering::Relaxed);
    } else {
        t.dropped.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(i) = slot {
        queue::with_slot(i, |s, _| {
            if is_agent {
                s.refused += 1;
            } else {
                s.dropped += 1;
            }
        });
    }
}

/// Give back what this backend still holds reserved (at transaction end,
/// when every record of the transaction is queued).
fn release_reservation() {
    let (held, slot) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.xact_reserved = false;
        s.event_credits = 0;
        (std::mem::take(&mut s.held), s.held_slot)
    });
    if held > 0 && queue::attached() {
        queue::unreserve(slot, held);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn release_at_exit(_code: i32, _arg: pg_sys::Datum) {
    release_reservation();
}

/// Waiting on the queue's condition variables without missing a wakeup:
/// the first [`Sleep::on`] of a variable only puts the backend on its wait
/// list (the caller then checks its condition again), later ones sleep until
/// the writer broadcasts — at once when the record is durable or space was
/// freed — or 100 ms pass (to look after the writer). Leaving the list when
/// dropped.
#[derive(Default)]
struct Sleep {
    prepared: bool,
}

impl Sleep {
    fn on(&mut self, cv: *mut pg_sys::ConditionVariable) {
        self.prepared = true;
        unsafe { pg_sys::ConditionVariableTimedSleep(cv, 100, pg_sys::PG_WAIT_EXTENSION) };
    }

    /// Sleep `ms` milliseconds (waiting for a writer to come up).
    fn nap(&mut self, ms: i64) {
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                ms,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if self.prepared {
            unsafe { pg_sys::ConditionVariableCancelSleep() };
        }
    }
}

fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Role names by oid (None: the role was dropped).
type RoleNames = Vec<(pg_sys::Oid, Option<String>)>;

thread_local! {
    /// Names of the roles this backend recorded, forgotten whenever a role
    /// changes (pg_authid invalidation); None until the callback is registered.
    static ROLE_NAMES: RefCell<Option<RoleNames>> = const { RefCell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_role_names(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    ROLE_NAMES.with(|r| {
        if let Some(names) = r.borrow_mut().as_mut() {
            names.clear();
        }
    });
}

/// A role's name as of now (None if it was dropped), without a catalog
/// lookup per statement.
fn role_name(oid: pg_sys::Oid) -> Option<String> {
    let known = ROLE_NAMES.with(|r| {
        let mut r = r.borrow_mut();
        let names = r.get_or_insert_with(|| {
            unsafe {
                pg_sys::CacheRegisterSyscacheCallback(
                    pg_sys::SysCacheIdentifier::AUTHOID as i32,
                    Some(forget_role_names),
                    pg_sys::Datum::from(0usize),
                )
            };
            Vec::new()
        });
        names
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, n)| n.clone())
    });
    if let Some(n) = known {
        return n;
    }
    // looked up outside the borrow: the lookup may run the callback above
    let name = cstr(unsafe { pg_sys::GetUserNameFromId(oid, true) });
    ROLE_NAMES.with(|r| {
        if let Some(names) = r.borrow_mut().as_mut() {
            if names.len() >= 16 {
                names.clear();
            }
            names.push((oid, name.clone()));
        }
    });
    name
}

/// What the statement event needs besides the classification and decision.
pub struct StatementText<'a> {
    pub text: &'a str,
    pub params: Option<Vec<Option<String>>>,
}

/// Whether this session's statements are audited. On a hot standby only
/// agents', when their records are forwarded to the primary ([`forward`];
/// otherwise policy refuses agents' statements there, see
/// `SessionState::on_standby`).
pub fn audits_session(is_agent: bool, risk: Risk) -> bool {
    if crate::identity::on_standby() {
        return is_agent && forward::enabled();
    }
    if is_agent {
        return true;
    }
    match crate::gucs::audit_non_agents() {
        crate::gucs::NonAgentAudit::None => false,
        crate::gucs::NonAgentAudit::Ddl => risk >= Risk::Ddl,
        crate::gucs::NonAgentAudit::Write => risk >= Risk::Write,
        crate::gucs::NonAgentAudit::All => true,
    }
}

/// Record a statement about to run (or refused). For allowed statements
/// the caller later reports [`statement_end`]. Errors mean the trail is
/// unavailable: the caller must refuse an agent's statement.
/// The parent of a statement starting at `level`: the statement whose
/// execution is on the stack one level up — for a top-level one, the
/// top-level statement running now, not the one that started last (another
/// portal may be open).
fn parent_of(open: &[Open], level: i32) -> Option<u64> {
    if level == 0 {
        return None;
    }
    let running = crate::statement::running_top();
    open.iter()
        .rev()
        .find(|o| o.lvl == level - 1 && (o.lvl > 0 || o.query_desc == running))
        .or_else(|| open.iter().rev().find(|o| o.lvl < level))
        .map(|o| o.n)
}

pub fn statement_start(
    c: &Classification,
    d: &Decision,
    text: &StatementText,
    query_desc: usize,
) -> Result<(), Unavailable> {
    let standby = crate::identity::on_standby();
    if standby && !forward::enabled() {
        // a hot standby cannot hold the trail: agents' statements are refused there
        return Ok(());
    }
    let agent = crate::identity::current_agent();
    let (request_id, traceparent) = crate::identity::correlation();
    let sk = session_key();
    let level = crate::hooks::nesting_level();
    let (n, x, parent) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.statements += 1;
        s.xact_audited = true;
        (s.statements, s.xact, parent_of(&s.open, level))
    });
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let hide_all = !c.sensitive_columns.is_empty();
    let statement_text = crate::lexer::redact(text.text, hide_all);
    let params = text.params.as_ref().map(|ps| {
        ps.iter()
            .map(|p| {
                p.as_ref().map(|v| {
                    if hide_all || agent_guard_core::redact::looks_regulated(v) {
                        "<redacted>".to_string()
                    } else {
                        v.clone()
                    }
                })
            })
            .collect::<Vec<_>>()
    });
    let (decision, reason, grant) = match d {
        Decision::Deny(r) => ("denied", r.message.clone(), None),
        Decision::Allow { reason, grant } => (
            "allowed",
            reason.clone(),
            grant.as_ref().map(|g| g.grant_id),
        ),
        Decision::NotEnforced => ("allowed", "not an agent session".to_string(), None),
    };
    let (sponsor, login) = match &agent {
        Some(a) => (
            Some(a.label.sponsor_name.clone()),
            Some(a.login_name.clone()),
        ),
        None => (None, None),
    };
    let event = row::Stmt {
        sk,
        n,
        x,
        sx: subxact,
        parent,
        lvl: level,
        ts: now_us(),
        su: role_name(unsafe { pg_sys::GetSessionUserId() }),
        cu: role_name(unsafe { pg_sys::GetUserId() }),
        agent: agent.as_ref().map(|a| a.agent_name.clone()),
        login,
        sponsor,
        app: cstr(unsafe { pg_sys::application_name }),
        addr: crate::identity::client_address_cached(),
        pid: unsafe { pg_sys::MyProcPid },
        db: Some(crate::identity::database_name()),
        rid: request_id,
        tp: traceparent,
        cmd: Some(c.command.clone()),
        risk: Some(c.risk.as_str().to_string()),
        obj: c.objects.clone(),
        dec: decision.to_string(),
        why: Some(reason),
        grant,
        text: Some(statement_text),
        params,
        end: None,
        xo: None,
    };
    let durable = matches!(d, Decision::Deny(_))
        || c.risk > Risk::SensitiveRead
        || crate::gucs::audit_durability_sync();
    if standby {
        // on a hot standby every statement's record is forwarded before it
        // runs (housekeeping's travels with the next one); no queue there
        forward::send(event.event_json(), durable || c.risk > Risk::Session)?;
        STATE.with(|s| s.borrow_mut().xact_sent = true);
        if !matches!(d, Decision::Deny(_)) {
            STATE.with(|s| {
                s.borrow_mut().open.push(Open {
                    n,
                    lvl: level,
                    query_desc,
                    subxact,
                    event: None,
                    reserved: 0,
                })
            });
        }
        return Ok(());
    }
    // What this statement's later records need, reserved now: its end
    // event, or its complete record; once per transaction, the
    // transaction's end and a savepoint rollback (further ones, rare, wait
    // for space like any record). The statement is admitted only if it all
    // fits and a writer runs for the database.
    let denied = matches!(d, Decision::Deny(_));
    // agents' statements (and agent_guard's own events) wait for capacity,
    // other sessions' run unrecorded rather than wait
    let patient = agent.is_some() || query_desc == OWN_EVENT;
    // A long statement's complete record would keep a large reservation for
    // as long as it runs (an open cursor, a long sleep): its record is
    // queued now instead (not waited for) and only its end is reserved, so
    // no statement holds more than a sixteenth of the queue.
    // Only statements that must not run unrecorded reserve: other sessions'
    // later records take the space that is free then (waiting for it up to
    // audit_wait_timeout, counted as dropped otherwise), so a cluster of busy
    // human sessions never holds the queue reserved.
    let complete = (patient && !denied && !durable)
        .then(|| queue::record_bytes(row::complete_record_bound(&event)));
    let early = complete.is_some_and(|b| b > queue::header_capacity() / 16);
    let later = match complete {
        _ if !patient || denied => 0,
        Some(b) if !early => b,
        _ => queue::record_bytes(row::event_bound(&event.sk, true)),
    };
    let first_in_xact = !STATE.with(|s| s.borrow().xact_reserved);
    let reserve = later
        + if first_in_xact && patient {
            2 * queue::record_bytes(row::event_bound(&event.sk, false))
        } else {
            0
        };
    let payload = (durable || early).then(|| event.event_json());
    // (other sessions' records queue without a running writer: one is started
    // and writes them later; they never wait for it)
    let admitted = queue_step(
        payload.as_deref(),
        durable,
        reserve,
        0,
        patient,
        patient,
        Some(flush_deferred),
    );
    let (slot, seq) = match admitted {
        Ok(v) => v,
        Err(why) => {
            note_unadmitted(agent.is_some());
            return Err(why);
        }
    };
    let register_exit = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.held += reserve;
        s.held_slot = slot;
        if first_in_xact && patient {
            s.event_credits = 2;
        }
        s.xact_reserved |= patient;
        !std::mem::replace(&mut s.exit_registered, true)
    });
    if register_exit {
        unsafe { pg_sys::on_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(0)) };
    }
    if early {
        STATE.with(|s| s.borrow_mut().xact_sent = true);
    }
    if durable {
        STATE.with(|s| s.borrow_mut().xact_sent = true);
        // other sessions wait only for a writer that runs (none may be able
        // to yet: in the transaction that creates agent_guard, the writer
        // cannot see the trail its script statements go to)
        let writer = queue::with_slot(slot, |s, _| queue::writer_running(s));
        let wait = patient || writer;
        if let Err(why) = if wait {
            wait_durable(slot, seq)
        } else {
            Ok(())
        } {
            note_unadmitted(agent.is_some());
            return Err(why);
        }
    }
    if !denied {
        let event = (!durable && !early).then_some(event);
        STATE.with(|s| {
            s.borrow_mut().open.push(Open {
                n,
                lvl: level,
                query_desc,
                subxact,
                event,
                reserved: later,
            })
        });
    }
    Ok(())
}

fn end_of(rows: Option<u64>, error: Option<&(String, String)>) -> row::End {
    row::End {
        ts: now_us(),
        rows,
        out: if error.is_some() { "error" } else { "ok" }.into(),
        state: error.map(|e| e.0.clone()),
        // PostgreSQL quotes offending values in its messages (a cast's
        // `invalid input syntax for type integer: "219-09-9999"`)
        msg: error.map(|e| row::bounded_message(&agent_guard_core::redact::redact_message(&e.1))),
    }
}

/// The end of statement `n` as an event of its own (for a statement already queued).
fn end_event(n: u64, end: &row::End) -> Value {
    json!({
        "k": "end", "sk": session_key(), "n": n, "ts": end.ts, "rows": end.rows,
        "out": end.out, "state": end.state, "msg": end.msg,
    })
}

/// The statement started with `query_desc` (0 for utility statements) ended normally.
pub fn statement_end(query_desc: usize, rows: Option<u64>) {
    let open = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let pos = s.open.iter().rposition(|o| o.query_desc == query_desc)?;
        Some(s.open.remove(pos))
    });
    if let Some(o) = open {
        finish(o, rows, None);
    }
}

/// A statement ended: a queued record gets an end event; a deferred one
/// carries its end and waits for the transaction's.
fn finish(o: Open, rows: Option<u64>, error: Option<&(String, String)>) {
    let end = end_of(rows, error);
    match o.event {
        None => {
            send_later(end_event(o.n, &end).to_string().into_bytes(), o.reserved);
        }
        Some(mut event) => {
            event.end = Some(end);
            let flush = STATE.with(|s| {
                let mut s = s.borrow_mut();
                s.finished.push(Finished {
                    subxact: o.subxact,
                    n: o.n,
                    event,
                    reserved: o.reserved,
                });
                s.finished.len() >= DEFER_LIMIT || s.held > queue::header_capacity() / DEFER_SHARE
            });
            if flush {
                flush_finished(None);
            }
        }
    }
}

/// Queue the finished records now (their reservations go back with them).
fn flush_deferred() {
    flush_finished(None);
}

/// Queue the finished records, with the transaction's outcome when it is known.
fn flush_finished(outcome: Option<&row::XactEnd>) {
    let finished = STATE.with(|s| std::mem::take(&mut s.borrow_mut().finished));
    if finished.is_empty() {
        return;
    }
    if outcome.is_none() {
        STATE.with(|s| s.borrow_mut().xact_sent = true);
    }
    for mut f in finished {
        if let Some(o) = outcome {
            f.event.set_transaction(o);
        }
        send_later(row::complete_record(&f.event), f.reserved);
    }
}

/// Whether a statement is open for this query descriptor (cheap check for ExecutorEnd).
pub fn has_open(query_desc: usize) -> bool {
    STATE.with(|s| s.borrow().open.iter().any(|o| o.query_desc == query_desc))
}

/// The next error is agent_guard's own refusal, already in the trail (or not recordable).
pub fn mark_refusing() {
    STATE.with(|s| s.borrow_mut().refusing = true);
}

/// Record a statement that failed before agent_guard saw it run (e.g. division
/// by zero folded by the planner), so no failed statement goes missing.
fn record_orphan_error() {
    if crate::identity::on_standby() && !forward::enabled() {
        // nothing is recorded on a hot standby without forwarding
        STATE.with(|s| s.borrow_mut().orphan_error = None);
        return;
    }
    let orphan = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if !s.open.is_empty() {
            s.orphan_error = None;
            return None;
        }
        s.orphan_error.take()
    });
    let Some((text, state, msg, ts)) = orphan else {
        return;
    };
    let sk = session_key();
    let (n, x, parent) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.statements += 1;
        s.xact_audited = true;
        (s.statements, s.xact, s.open.last().map(|o| o.n))
    });
    let agent = crate::identity::cached_agent();
    // (no lexer in a transaction-end callback: the quick scan, then any regulated value left)
    let redacted = agent_guard_core::redact::redact_regulated(&agent_guard_core::redact::redact(
        &text,
        &agent_guard_core::redact::scan_literals(&text),
        false,
    ));
    let event = row::Stmt {
        sk,
        n,
        x,
        sx: unsafe { pg_sys::GetCurrentSubTransactionId() },
        parent,
        lvl: crate::hooks::nesting_level(),
        ts,
        agent: agent.as_ref().map(|a| a.agent_name.clone()),
        login: agent.as_ref().map(|a| a.login_name.clone()),
        sponsor: agent.as_ref().map(|a| a.label.sponsor_name.clone()),
        app: cstr(unsafe { pg_sys::application_name }),
        addr: crate::identity::client_address_cached(),
        pid: unsafe { pg_sys::MyProcPid },
        dec: "allowed".into(),
        why: Some("failed before execution (parse analysis or planning)".into()),
        text: Some(redacted),
        ..Default::default()
    };
    // (nothing was reserved for it: it failed before agent_guard saw it start)
    send_later(event.event_json(), 0);
    send_later(
        end_event(n, &end_of(None, Some(&(state, msg))))
            .to_string()
            .into_bytes(),
        0,
    );
    STATE.with(|s| s.borrow_mut().xact_sent = true);
}

/// Transaction end: close what is still open as failed, then say how the transaction ended.
fn transaction_end(committed: bool) {
    if !committed {
        record_orphan_error();
    }
    let (open, audited, x, err) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let open: Vec<Open> = s.open.drain(..).collect();
        let audited = std::mem::replace(&mut s.xact_audited, false);
        let x = s.xact;
        s.xact += 1;
        (open, audited, x, s.last_error.take())
    });
    if !audited {
        release_reservation();
        return;
    }
    let err = err.unwrap_or_else(|| ("XX000".into(), "transaction aborted".into()));
    for o in open {
        finish(o, None, if committed { None } else { Some(&err) });
    }
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
    let outcome = row::XactEnd {
        out: if committed {
            "committed"
        } else {
            "rolled back"
        }
        .into(),
        xid: (xid != 0).then_some(xid as u64),
    };
    flush_finished(Some(&outcome));
    let sent = STATE.with(|s| std::mem::replace(&mut s.borrow_mut().xact_sent, false));
    if sent {
        let event = json!({"k": "xact", "sk": session_key(), "x": x, "ts": now_us(),
                           "out": outcome.out, "xid": outcome.xid});
        send_later(event.to_string().into_bytes(), xact_event_credit());
    }
    release_reservation();
}

fn subtransaction_abort(subxact: u32) {
    record_orphan_error();
    let (failed, audited, x, upto, err) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let (failed, keep): (Vec<Open>, Vec<Open>) =
            s.open.drain(..).partition(|o| o.subxact >= subxact);
        s.open = keep;
        (
            failed,
            s.xact_audited,
            s.xact,
            s.statements,
            s.last_error.clone(),
        )
    });
    if !audited {
        return;
    }
    let err = err.unwrap_or_else(|| ("XX000".into(), "subtransaction aborted".into()));
    for o in failed {
        finish(o, None, Some(&err));
    }
    // deferred records of the rolled-back savepoint say so themselves
    STATE.with(|s| {
        for f in s.borrow_mut().finished.iter_mut() {
            if f.subxact >= subxact && f.n <= upto && f.event.xo.is_none() {
                f.event.xo = Some(row::XactEnd {
                    out: "rolled back to savepoint".into(),
                    xid: None,
                });
            }
        }
    });
    if STATE.with(|s| s.borrow().xact_sent) {
        let event = json!({"k": "sub", "sk": session_key(), "x": x, "sx": subxact,
                           "upto": upto, "ts": now_us()});
        send_later(event.to_string().into_bytes(), xact_event_credit());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if crate::hooks::is_own_worker() {
        return;
    }
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => transaction_end(true),
        pg_sys::XactEvent::XACT_EVENT_ABORT => transaction_end(false),
        _ => return,
    }
    if crate::identity::on_standby() {
        // ends and transaction outcomes go to the primary now
        forward::flush_quietly();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB && !crate::hooks::is_own_worker() {
        subtransaction_abort(my_subid);
    }
}

/// Remember the last error (for the trail) and keep regulated literals of
/// agent sessions out of the server log.
///
/// # Safety
/// `edata` is the error being reported (from the emit_log trampoline).
pub unsafe fn on_emit_log(edata: *mut pg_sys::ErrorData) {
    unsafe {
        if (*edata).elevel >= pg_sys::PGERROR as i32 && !crate::hooks::is_own_worker() {
            let state = cstr(pg_sys::unpack_sql_state((*edata).sqlerrcode)).unwrap_or_default();
            let msg = cstr((*edata).message).unwrap_or_default();
            let agent = crate::identity::cached_is_agent() && crate::identity::guard_installed();
            STATE.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    let refusing = std::mem::replace(&mut s.refusing, false);
                    if agent && !refusing && s.open.is_empty() && !crate::identity::in_internal() {
                        let text = cstr(pg_sys::debug_query_string).unwrap_or_default();
                        s.orphan_error = Some((
                            text,
                            state.clone(),
                            msg.clone(),
                            pg_sys::GetCurrentTimestamp(),
                        ));
                    }
                    s.last_error = Some((state, msg));
                }
            });
        }
        if crate::identity::cached_is_agent() {
            // The statement text goes to agent_guard.audit_log, redacted; the log gets none.
            (*edata).hide_stmt = true;
            for field in [
                &raw mut (*edata).message,
                &raw mut (*edata).detail,
                &raw mut (*edata).detail_log,
            ] {
                if let Some(text) = cstr(*field) {
                    let redacted = agent_guard_core::redact::redact_log_line(&text);
                    if redacted != text {
                        if let Ok(c) = std::ffi::CString::new(redacted) {
                            *field = pg_sys::pstrdup(c.as_ptr());
                        }
                    }
                }
            }
        }
    }
}

/// Install callbacks (from `_PG_init`, preload only).
pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
    worker::init_shmem();
    head::init();
    drop_guard::init();
}

/// Parameters of a statement run with the extended protocol or EXECUTE, as text.
pub fn params_as_text(params: pg_sys::ParamListInfo) -> Option<Vec<Option<String>>> {
    if params.is_null() {
        return None;
    }
    unsafe {
        let n = (*params).numParams as usize;
        if n == 0 || (*params).paramFetch.is_some() {
            return None;
        }
        let items = (*params).params.as_slice(n);
        Some(
            items
                .iter()
                .map(|p| {
                    if p.isnull || p.ptype == pg_sys::InvalidOid {
                        return None;
                    }
                    let mut out = pg_sys::InvalidOid;
                    let mut varlena = false;
                    pg_sys::getTypeOutputInfo(p.ptype, &mut out, &mut varlena);
                    cstr(pg_sys::OidOutputFunctionCall(out, p.value))
                })
                .collect(),
        )
    }
}

/// Queue statistics for `audit_stats()`: per database with a queue, and
/// cluster-wide totals since the server started (they outlive writers and
/// queues given to other databases).
pub fn stats() -> Value {
    if !queue::attached() {
        return json!({"attached": false});
    }
    let db = unsafe { pg_sys::MyDatabaseId };
    let now = now_us();
    let mut slots = vec![];
    let mut writers = 0;
    for i in 0..queue::slots() {
        if queue::slot_dboid(i) == pg_sys::InvalidOid {
            continue;
        }
        let v = queue::with_slot(i, |s, _| {
            if s.worker_state != queue::WORKER_NONE {
                writers += 1;
            }
            json!({
                "database_oid": s.dboid.to_u32(),
                "this_database": s.dboid == db,
                "queued": s.enqueued - s.durable,
                "queued_bytes": s.head - s.tail,
                "reserved_bytes": s.reserved,
                "enqueued": s.enqueued - s.enqueued_base,
                "written": s.written,
                "dropped": s.dropped,
                "refused": s.refused,
                "waits_for_space": s.waits,
                "oldest_unwritten_age_ms": if s.oldest_ts == 0 { 0 } else { (now - s.oldest_ts) / 1000 },
                "worker_pid": s.worker_pid,
                "worker_state": match s.worker_state {
                    queue::WORKER_RUNNING => "running",
                    queue::WORKER_STARTING => "starting",
                    _ => "stopped",
                },
            })
        });
        slots.push(v);
    }
    for v in slots.iter_mut() {
        let oid = pg_sys::Oid::from(v["database_oid"].as_u64().unwrap_or(0) as u32);
        v["database"] = json!(cstr(unsafe { pg_sys::get_database_name(oid) }));
    }
    let t = queue::totals();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "queue_capacity_bytes": queue::header_capacity(),
        "queues": queue::slots(),
        "queues_in_use": slots.len(),
        "writers_max": crate::gucs::audit_writers(),
        "writers_running": writers,
        "totals": {
            "enqueued": n(&t.enqueued),
            "written": n(&t.written),
            "dropped": n(&t.dropped),
            "refused": n(&t.refused),
            "waits_for_space": n(&t.waits),
            "writer_starts": n(&t.writer_starts),
            "writer_starts_waiting": n(&t.writers_busy),
        },
        "databases": slots,
    })
}

pub mod functions;

/// The audit writers running or starting now, for `agent_guard.status()`.
pub fn writers_status() -> Value {
    if !queue::attached() {
        return json!([]);
    }
    let mut out = vec![];
    for i in 0..queue::slots() {
        let w = queue::with_slot(i, |s, _| {
            (s.dboid != pg_sys::InvalidOid && s.worker_state != queue::WORKER_NONE).then(|| {
                json!({
                    "database_oid": s.dboid.to_u32(),
                    "pid": (s.worker_pid != 0).then_some(s.worker_pid),
                    "state": if s.worker_state == queue::WORKER_RUNNING { "running" } else { "starting" },
                })
            })
        });
        out.extend(w);
    }
    for w in out.iter_mut() {
        let oid = pg_sys::Oid::from(w["database_oid"].as_u64().unwrap_or(0) as u32);
        w["database"] = json!(cstr(unsafe { pg_sys::get_database_name(oid) }));
    }
    Value::Array(out)
}

/// Put an administrative event (a purge) into the trail, durably, whether
/// or not the session is otherwise audited; an ERROR (42501) when it cannot
/// be recorded, so that what it records (a purge, whose anchor only a
/// recorded PURGE AUDIT row makes valid) does not happen either.
pub fn record_admin_event(command: &str, text: &str) {
    if let Err(u) = try_record_event(
        command,
        Risk::Admin,
        vec!["agent_guard.audit_log".into()],
        text,
    ) {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "agent_guard: {command} refused: the audit trail cannot record it ({})",
                u.describe()
            ),
            "agent_guard",
        )
        .set_hint(u.hint())
        .report(PgLogLevel::ERROR);
    }
}

/// The query descriptor key of agent_guard's own events ([`record_event`]).
const OWN_EVENT: usize = usize::MAX;

/// Put one event of agent_guard's own into the trail, durably (a WARNING
/// when it cannot be recorded).
pub fn record_event(command: &str, risk: Risk, objects: Vec<String>, text: &str) {
    if let Err(u) = try_record_event(command, risk, objects, text) {
        warning!(
            "agent_guard: could not record {command} in the audit trail: {}",
            u.describe()
        );
    }
}

fn try_record_event(
    command: &str,
    risk: Risk,
    objects: Vec<String>,
    text: &str,
) -> Result<(), Unavailable> {
    let mut c = Classification::new(command, risk, text);
    c.objects = objects;
    let d = Decision::Allow {
        reason: "administrator".into(),
        grant: None,
    };
    let r = statement_start(&c, &d, &StatementText { text, params: None }, OWN_EVENT);
    statement_end(OWN_EVENT, None);
    r
}
