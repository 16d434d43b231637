//! Shared-memory queues between backends and the audit writers.
//!
//! `agent_guard.audit_queues` slots (default 64), each a byte ring of
//! `agent_guard.audit_queue_size` under its own LWLock, plus one lock that
//! assigns slots to databases and counts writers. A record is
//! `[u32 length][u64 sequence][payload]`. The writer copies records out,
//! inserts them in its own transaction, and only then advances the tail and
//! the `durable` sequence, so a writer that dies before committing loses
//! nothing: its successor reads the same records again (rows carry a unique
//! event key, so a retry cannot duplicate them).
//!
//! Nothing is promised that cannot be kept:
//!
//! - **Reservations.** A statement whose record travels later (an
//!   asynchronous read's complete record at its transaction's end, a
//!   statement's end event, the transaction's outcome) reserves the bytes
//!   for it when it starts ([`admit`]); later pushes use the reservation, so
//!   they never find the queue full, and a slot with reservations is never
//!   given to another database.
//! - **Writers.** A statement is admitted only while a writer runs for its
//!   database ([`writer_running`]); a writer leaves only when its queue is
//!   empty and nothing is reserved ([`try_leave`]), so every admitted record
//!   is written. At most [`crate::gucs::audit_writers`] writers run at once
//!   ([`claim_start`]), so writers never take the worker slots parallel query
//!   needs; when they are all taken, the writer idle the longest is asked to
//!   leave its (idle) database to the one that waits.
//! - **Counters** live in the slots and in cluster-wide totals, not in the
//!   writers: they outlive a writer's exit, and a slot keeps its database
//!   (and its counters) until another database needs it.

use pgrx::pg_sys;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const HEADER_BYTES: usize = 12;

/// Writer states, as `audit_stats()` reports them.
pub const WORKER_NONE: u32 = 0;
pub const WORKER_STARTING: u32 = 1;
pub const WORKER_RUNNING: u32 = 2;

/// How long a database must have queued nothing before its slot may be
/// given to another database (so that busy databases keep theirs).
const SLOT_IDLE_US: i64 = 1_000_000;

/// How long a requested writer start counts as pending (a start the
/// postmaster accepted but that never came up is retried after it).
const START_PENDING_US: i64 = 2_000_000;

#[repr(C)]
pub struct Slot {
    pub dboid: pg_sys::Oid,
    pub head: u64,
    pub tail: u64,
    /// Sequence of the last record enqueued (keeps increasing across
    /// databases: a waiter of the previous database still compares against it).
    pub enqueued: u64,
    /// `enqueued` when the slot was given to its database.
    pub enqueued_base: u64,
    /// Sequence of the last record committed by the writer.
    pub durable: u64,
    /// Bytes reserved by backends for records they will queue later.
    pub reserved: u64,
    pub written: u64,
    pub dropped: u64,
    pub waits: u64,
    /// Agent statements refused because their record could not be admitted.
    pub refused: u64,
    /// Enqueue time of the oldest record not yet durable (0 when none).
    pub oldest_ts: i64,
    pub worker_pid: i32,
    pub worker_state: u32,
    pub worker_latch: *mut pg_sys::Latch,
    pub start_requested_at: i64,
    /// When the running writer came up.
    pub worker_since: i64,
    /// Sequence of the newest record a backend waits for (its batch is
    /// committed with a WAL flush; others are not).
    pub sync_upto: u64,
    /// The writer found the queue empty and sleeps until woken; otherwise it
    /// is collecting a batch and only urgent records wake it early.
    pub writer_idle: bool,
    /// Another database waits for a writer: this one leaves as soon as its
    /// queue is empty and nothing is reserved.
    pub leave_requested: bool,
    /// When the slot was assigned or its writer last wrote a batch (to pick
    /// the slot idle the longest when another database needs one).
    pub last_active: i64,
    pub durable_cv: pg_sys::ConditionVariable,
    pub space_cv: pg_sys::ConditionVariable,
}

/// Cluster-wide counters since the server started (they survive writers and
/// slots given to other databases).
#[repr(C)]
#[derive(Default)]
pub struct Totals {
    pub enqueued: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub waits: AtomicU64,
    pub refused: AtomicU64,
    pub writer_starts: AtomicU64,
    /// Writer starts that had to wait because every allowed writer ran.
    pub writers_busy: AtomicU64,
}

#[repr(C)]
struct Header {
    capacity: u64,
    nslots: u64,
    totals: Totals,
    /// When a backend last found every allowed writer taken.
    writer_wanted_at: AtomicI64,
}

static mut HEADER: *mut Header = ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = ptr::null_mut();
static mut CAPACITY: usize = 0;
static mut NSLOTS: usize = 0;
const TRANCHE: &std::ffi::CStr = c"agent_guard_audit";

fn slots_offset() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(16)
}

fn rings_offset(nslots: usize) -> usize {
    (slots_offset() + nslots * std::mem::size_of::<Slot>()).next_multiple_of(16)
}

fn total_size(capacity: usize, nslots: usize) -> usize {
    rings_offset(nslots) + nslots * capacity
}

/// Ask for shared memory and locks (from the shmem request hook, or `_PG_init` before PG15).
pub fn request(capacity: usize, nslots: usize) {
    unsafe {
        CAPACITY = capacity;
        NSLOTS = nslots;
        pg_sys::RequestAddinShmemSpace(total_size(capacity, nslots));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), (nslots + 1) as i32);
    }
}

/// Attach (and on first use initialise) the queues, from the shmem startup hook.
pub fn attach() {
    unsafe {
        let mut found = false;
        let h = pg_sys::ShmemInitStruct(
            c"agent_guard audit queues".as_ptr(),
            total_size(CAPACITY, NSLOTS),
            &mut found,
        ) as *mut Header;
        if !found {
            ptr::write_bytes(h as *mut u8, 0, rings_offset(NSLOTS));
            ptr::write(
                h,
                Header {
                    capacity: CAPACITY as u64,
                    nslots: NSLOTS as u64,
                    totals: Totals::default(),
                    writer_wanted_at: AtomicI64::new(0),
                },
            );
            HEADER = h;
            for i in 0..NSLOTS {
                let s = slot_ptr(i);
                pg_sys::ConditionVariableInit(&mut (*s).durable_cv);
                pg_sys::ConditionVariableInit(&mut (*s).space_cv);
            }
        }
        HEADER = h;
        LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
    }
}

pub fn attached() -> bool {
    unsafe { !HEADER.is_null() }
}

/// How many slots there are (0 before attaching).
pub fn slots() -> usize {
    unsafe {
        if HEADER.is_null() {
            0
        } else {
            (*HEADER).nslots as usize
        }
    }
}

pub fn totals() -> &'static Totals {
    unsafe { &(*HEADER).totals }
}

unsafe fn slot_ptr(i: usize) -> *mut Slot {
    unsafe {
        (HEADER as *mut u8).add(slots_offset() + i * std::mem::size_of::<Slot>()) as *mut Slot
    }
}

unsafe fn ring(i: usize) -> &'static mut [u8] {
    unsafe {
        let cap = (*HEADER).capacity as usize;
        let start = (HEADER as *mut u8).add(rings_offset((*HEADER).nslots as usize) + i * cap);
        std::slice::from_raw_parts_mut(start, cap)
    }
}

unsafe fn lock(i: usize) -> *mut pg_sys::LWLock {
    unsafe { &mut (*LOCKS.add(i)).lock }
}

/// The lock that assigns slots and counts writers (after the slots' own).
fn assignment_lock() -> *mut pg_sys::LWLock {
    unsafe { lock(slots()) }
}

/// Run `f` with slot `i` locked exclusively. `f` must not raise errors.
pub fn with_slot<R>(i: usize, f: impl FnOnce(&mut Slot, &mut [u8]) -> R) -> R {
    unsafe {
        pg_sys::LWLockAcquire(lock(i), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let r = f(&mut *slot_ptr(i), ring(i));
        pg_sys::LWLockRelease(lock(i));
        r
    }
}

fn with_assignment<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        pg_sys::LWLockAcquire(assignment_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let r = f();
        pg_sys::LWLockRelease(assignment_lock());
        r
    }
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

thread_local! {
    /// This backend's slot (a backend stays in one database).
    static MY_SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The slot of database `db`, assigning a free one if needed. When every
/// slot is taken, the one whose queue is empty, holds no reservation and
/// has queued nothing for the longest time (at least a second) is given to
/// `db` (its writer notices and exits), so idle databases never keep
/// another from being audited. None when every other database used its
/// slot in the last second.
pub fn slot_for(db: pg_sys::Oid) -> Option<usize> {
    if !attached() {
        return None;
    }
    if let Some(i) = MY_SLOT.with(|s| s.get()) {
        if slot_dboid(i) == db {
            return Some(i);
        }
    }
    let n = slots();
    // fast path: already assigned (dboid is only ever set under the assignment lock)
    let found = (0..n).find(|&i| slot_dboid(i) == db).or_else(|| {
        with_assignment(|| unsafe {
            if let Some(i) = (0..n).find(|&i| (*slot_ptr(i)).dboid == db) {
                return Some(i);
            }
            let t = now();
            if let Some(i) = (0..n).find(|&i| (*slot_ptr(i)).dboid == pg_sys::InvalidOid) {
                with_slot(i, |s, _| assign(s, db, t));
                return Some(i);
            }
            // the slot idle the longest, if one is empty, holds no
            // reservation and has queued nothing for a while
            let idle =
                |s: &Slot| s.head == s.tail && s.reserved == 0 && t - s.last_active >= SLOT_IDLE_US;
            let mut best: Option<(usize, i64)> = None;
            for i in 0..n {
                if let Some(t) = with_slot(i, |s, _| idle(s).then_some(s.last_active)) {
                    if best.is_none_or(|(_, b)| t < b) {
                        best = Some((i, t));
                    }
                }
            }
            let (i, _) = best?;
            // still idle: the assignment lock keeps other assigners out, and
            // an empty queue without reservations gives its writer nothing to write
            with_slot(i, |s, _| {
                if !idle(s) {
                    return None;
                }
                let latch = s.worker_latch;
                assign(s, db, t);
                if !latch.is_null() {
                    pg_sys::SetLatch(latch);
                }
                Some(i)
            })
        })
    });
    if found.is_some() {
        MY_SLOT.with(|s| s.set(found));
    }
    found
}

/// The slot database `db` has now, without assigning one (for counters).
pub fn find_slot(db: pg_sys::Oid) -> Option<usize> {
    if !attached() {
        return None;
    }
    (0..slots()).find(|&i| slot_dboid(i) == db)
}

/// Whether slot `i` still belongs to `db` with records queued or space
/// reserved, but no writer runs or is coming for it.
pub fn needs_writer(i: usize, db: pg_sys::Oid) -> bool {
    with_slot(i, |s, _| {
        s.dboid == db && (s.head != s.tail || s.reserved != 0) && !active(s, now())
    })
}

/// Give slot `s` (empty, nothing reserved) to database `db`, without a
/// writer yet; its counters start again (the totals keep the old ones).
fn assign(s: &mut Slot, db: pg_sys::Oid, now: i64) {
    s.dboid = db;
    s.worker_pid = 0;
    s.worker_latch = ptr::null_mut();
    s.worker_state = WORKER_NONE;
    s.writer_idle = false;
    s.leave_requested = false;
    s.last_active = now;
    s.enqueued_base = s.enqueued;
    s.written = 0;
    s.dropped = 0;
    s.waits = 0;
    s.refused = 0;
}

/// Release slot `i` of database `db` if its queue is empty and nothing is
/// reserved (the database is about to be dropped), so another database can
/// use it. Returns whether it was released.
pub fn release_if_empty(i: usize, db: pg_sys::Oid) -> bool {
    with_assignment(|| {
        with_slot(i, |s, _| {
            if s.dboid == db && s.head == s.tail && s.reserved == 0 {
                s.dboid = pg_sys::InvalidOid;
                s.worker_pid = 0;
                s.worker_latch = ptr::null_mut();
                s.worker_state = WORKER_NONE;
                true
            } else {
                false
            }
        })
    })
}

/// Whether slot `s` has a writer that runs and has not decided to leave.
pub fn writer_running(s: &Slot) -> bool {
    s.worker_state == WORKER_RUNNING && s.worker_pid != 0
}

/// Why a record could not be admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    NoSpace,
    /// The record and reservation exceed the whole queue: they never fit.
    TooLarge,
    /// The slot was released and given to another database meanwhile.
    Reassigned,
    /// No writer runs for the database (the caller starts one and retries).
    NoWriter,
}

/// One queueing step of a backend.
pub struct Admit<'p> {
    /// The record to append now, if any.
    pub payload: Option<&'p [u8]>,
    /// Its sender will wait for it (its batch commits with a WAL flush).
    pub durable: bool,
    /// Bytes of the sender's own reservation the record may use.
    pub from_reserved: u64,
    /// Bytes to reserve for the sender's later records, in the same step.
    pub reserve: u64,
    /// Admit only while a writer runs.
    pub need_writer: bool,
}

/// Append a record and/or reserve space; returns the record's sequence
/// number (0 without a record).
pub fn admit(slot: &mut Slot, buf: &mut [u8], db: pg_sys::Oid, a: &Admit) -> Result<u64, Full> {
    if slot.dboid != db {
        return Err(Full::Reassigned);
    }
    if a.need_writer && !writer_running(slot) {
        return Err(Full::NoWriter);
    }
    let cap = buf.len() as u64;
    let mine = a.from_reserved.min(slot.reserved);
    let others = slot.reserved - mine;
    let record = a.payload.map_or(0, |p| (HEADER_BYTES + p.len()) as u64);
    if record + a.reserve > cap {
        return Err(Full::TooLarge);
    }
    let free = cap
        .saturating_sub(slot.head - slot.tail)
        .saturating_sub(others);
    if record + a.reserve > free {
        return Err(Full::NoSpace);
    }
    slot.reserved = others + a.reserve;
    slot.last_active = now();
    let Some(payload) = a.payload else {
        return Ok(0);
    };
    let seq = slot.enqueued + 1;
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&seq.to_le_bytes());
    ring_write(buf, slot.head, &header);
    ring_write(buf, slot.head + HEADER_BYTES as u64, payload);
    slot.head += record;
    slot.enqueued = seq;
    totals().enqueued.fetch_add(1, Ordering::Relaxed);
    if a.durable {
        slot.sync_upto = seq;
    }
    if slot.oldest_ts == 0 {
        slot.oldest_ts = slot.last_active;
    }
    Ok(seq)
}

/// Give back `bytes` of a backend's reservation on slot `i`.
pub fn unreserve(i: usize, bytes: u64) {
    if bytes > 0 {
        with_slot(i, |s, _| s.reserved = s.reserved.saturating_sub(bytes));
    }
}

/// What [`claim_start`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller starts the writer (the slot is marked starting).
    Start,
    /// A writer runs or was asked for moments ago.
    Pending,
    /// Every allowed writer runs (`agent_guard.audit_writers`); the one idle
    /// the longest, if any, was asked to leave.
    Busy,
}

fn active(s: &Slot, t: i64) -> bool {
    writer_running(s)
        || (s.worker_state == WORKER_STARTING && t - s.start_requested_at < START_PENDING_US)
}

/// Whether the caller should start slot `i`'s writer: none runs, none was
/// asked for in the last two seconds, and fewer than `budget` writers run.
pub fn claim_start(i: usize, budget: usize) -> Claim {
    with_assignment(|| {
        let t = now();
        if with_slot(i, |s, _| active(s, t)) {
            return Claim::Pending;
        }
        let n = slots();
        let running = (0..n)
            .filter(|&j| with_slot(j, |s, _| active(s, t)))
            .count();
        if running >= budget {
            unsafe { (*HEADER).writer_wanted_at.store(t, Ordering::Relaxed) };
            totals().writers_busy.fetch_add(1, Ordering::Relaxed);
            // ask the writer idle the longest (empty queue, nothing reserved) to leave
            let mut best: Option<(usize, i64)> = None;
            for j in (0..n).filter(|&j| j != i) {
                let idle = with_slot(j, |s, _| {
                    (writer_running(s) && !s.leave_requested && s.head == s.tail && s.reserved == 0)
                        .then_some(s.last_active)
                });
                if let Some(t) = idle {
                    if best.is_none_or(|(_, b)| t < b) {
                        best = Some((j, t));
                    }
                }
            }
            if let Some((j, _)) = best {
                with_slot(j, |s, _| {
                    s.leave_requested = true;
                    if !s.worker_latch.is_null() {
                        unsafe { pg_sys::SetLatch(s.worker_latch) };
                    }
                });
            }
            return Claim::Busy;
        }
        with_slot(i, |s, _| {
            s.worker_state = WORKER_STARTING;
            s.start_requested_at = t;
        });
        totals().writer_starts.fetch_add(1, Ordering::Relaxed);
        Claim::Start
    })
}

/// The writer of slot `i` (this process) leaves if its queue is empty and
/// nothing is reserved, or with `force` (shutdown) in any case: from then on
/// backends see no writer and start another. Returns whether it left.
pub fn try_leave(i: usize, db: pg_sys::Oid, force: bool) -> bool {
    with_slot(i, |s, _| {
        let me = unsafe { pg_sys::MyProcPid };
        if s.dboid != db || s.worker_pid != me {
            return true; // the slot is no longer ours
        }
        if !force && (s.head != s.tail || s.reserved != 0) {
            return false;
        }
        s.worker_pid = 0;
        s.worker_latch = ptr::null_mut();
        s.worker_state = WORKER_NONE;
        s.leave_requested = false;
        true
    })
}

/// Whether another database asked slot `i`'s writer to leave.
pub fn leave_requested(i: usize) -> bool {
    unsafe { ptr::read_volatile(&(*slot_ptr(i)).leave_requested) }
}

fn ring_write(buf: &mut [u8], pos: u64, data: &[u8]) {
    let cap = buf.len();
    let start = (pos % cap as u64) as usize;
    let first = data.len().min(cap - start);
    buf[start..start + first].copy_from_slice(&data[..first]);
    buf[..data.len() - first].copy_from_slice(&data[first..]);
}

fn ring_read(buf: &[u8], pos: u64, len: usize) -> Vec<u8> {
    let cap = buf.len();
    let start = (pos % cap as u64) as usize;
    let first = len.min(cap - start);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&buf[start..start + first]);
    out.extend_from_slice(&buf[..len - first]);
    out
}

/// Queued records copied out for the writer, not consumed yet.
pub struct Batch {
    /// Queue position after the last record taken.
    pub end: u64,
    bytes: Vec<u8>,
    /// (sequence, payload range in `bytes`)
    records: Vec<(u64, std::ops::Range<usize>)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn first_seq(&self) -> Option<u64> {
        self.records.first().map(|r| r.0)
    }
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.0)
    }
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(|(_, r)| &self.bytes[r.clone()])
    }
}

/// Take (without consuming) the records of slot `i` queued now, up to about
/// `max_bytes`. The lock is held only to read the positions: the writer is
/// the only consumer, and backends write only beyond `head`, never into
/// `[tail, head)` until the writer advances `tail`. Also returns whether a
/// record someone waits for is among them (or queued after them), and marks
/// the writer idle when there is nothing to take. None when the slot no
/// longer belongs to database `db` (it was given to another database while
/// its queue was empty; the writer must go).
pub fn take(i: usize, db: pg_sys::Oid, max_bytes: u64) -> Option<(Batch, bool)> {
    let (tail, head, flush) = with_slot(i, |s, _| {
        if s.dboid != db {
            return None;
        }
        s.writer_idle = s.head == s.tail;
        Some((s.tail, s.head, sync_pending(s)))
    })?;
    // the LWLock release/acquire above orders the backends' writes before our reads
    let bytes = ring_read(unsafe { ring(i) }, tail, (head - tail) as usize);
    let mut records = vec![];
    let mut pos = 0usize;
    while pos + HEADER_BYTES <= bytes.len() && (pos as u64) < max_bytes {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[pos + 4..pos + 12].try_into().unwrap());
        let start = pos + HEADER_BYTES;
        if start + len > bytes.len() {
            break;
        }
        records.push((seq, start..start + len));
        pos = start + len;
    }
    Some((
        Batch {
            end: tail + pos as u64,
            bytes,
            records,
        },
        flush,
    ))
}

/// The queue capacity of each slot, in bytes.
pub fn header_capacity() -> u64 {
    unsafe {
        if HEADER.is_null() {
            0
        } else {
            (*HEADER).capacity
        }
    }
}

/// Bytes a record of `payload_len` bytes takes in a queue.
pub fn record_bytes(payload_len: usize) -> u64 {
    (HEADER_BYTES + payload_len) as u64
}

/// Wake slot `i`'s writer if it sleeps on an empty queue, or if the newest
/// record cannot wait for the batch being collected: someone waits for it,
/// or the queue is half full.
pub fn wake(slot: &Slot, capacity: usize) {
    let urgent = slot.sync_upto > slot.durable || slot.head - slot.tail > capacity as u64 / 2;
    if (slot.writer_idle || urgent) && !slot.worker_latch.is_null() {
        unsafe { pg_sys::SetLatch(slot.worker_latch) };
    }
}

/// Whether a record someone waits for is queued and not yet durable.
pub fn sync_pending(slot: &Slot) -> bool {
    slot.sync_upto > slot.durable
}

pub fn cv_ptr(i: usize, durable: bool) -> *mut pg_sys::ConditionVariable {
    unsafe {
        let s = slot_ptr(i);
        if durable {
            &mut (*s).durable_cv
        } else {
            &mut (*s).space_cv
        }
    }
}

/// Read a field without locking (for waiters' quick checks).
pub fn durable_seq(i: usize) -> u64 {
    unsafe { ptr::read_volatile(&(*slot_ptr(i)).durable) }
}

pub fn slot_dboid(i: usize) -> pg_sys::Oid {
    unsafe { ptr::read_volatile(&(*slot_ptr(i)).dboid) }
}
