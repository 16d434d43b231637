//! Shared-memory queues between backends and the audit writers.
//!
//! One byte ring per database slot, each under its own LWLock. A record is
//! `[u32 length][u64 sequence][payload]`. The writer copies records out,
//! inserts them in its own transaction, and only then advances the tail and
//! the `durable` sequence, so a writer that dies before committing loses
//! nothing: its successor reads the same records again (rows carry a unique
//! event key, so a retry cannot duplicate them).

use pgrx::pg_sys;
use std::ffi::c_void;
use std::ptr;

/// How many databases can have an audit writer at once.
pub const SLOTS: usize = 8;
const HEADER_BYTES: usize = 12;

/// Writer states, as `audit_stats()` reports them.
pub const WORKER_NONE: u32 = 0;
pub const WORKER_STARTING: u32 = 1;
pub const WORKER_RUNNING: u32 = 2;

#[repr(C)]
pub struct Slot {
    pub dboid: pg_sys::Oid,
    pub head: u64,
    pub tail: u64,
    /// Sequence of the last record enqueued.
    pub enqueued: u64,
    /// Sequence of the last record committed by the writer.
    pub durable: u64,
    pub written: u64,
    pub dropped: u64,
    pub waits: u64,
    /// Enqueue time of the oldest record not yet durable (0 when none).
    pub oldest_ts: i64,
    pub worker_pid: i32,
    pub worker_state: u32,
    pub worker_latch: *mut pg_sys::Latch,
    pub start_requested_at: i64,
    /// Sequence of the newest record a backend waits for (its batch is
    /// committed with a WAL flush; others are not).
    pub sync_upto: u64,
    /// The writer found the queue empty and sleeps until woken; otherwise it
    /// is collecting a batch and only urgent records wake it early.
    pub writer_idle: bool,
    /// When the slot was assigned or its writer last wrote a batch (to pick
    /// the slot idle the longest when another database needs one).
    pub last_active: i64,
    pub durable_cv: pg_sys::ConditionVariable,
    pub space_cv: pg_sys::ConditionVariable,
}

#[repr(C)]
struct Header {
    capacity: u64,
    slots: [Slot; SLOTS],
}

static mut HEADER: *mut Header = ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = ptr::null_mut();
static mut CAPACITY: usize = 0;
const TRANCHE: &std::ffi::CStr = c"agent_guard_audit";

fn total_size(capacity: usize) -> usize {
    std::mem::size_of::<Header>() + SLOTS * capacity
}

/// Ask for shared memory and locks (from the shmem request hook, or `_PG_init` before PG15).
pub fn request(capacity: usize) {
    unsafe {
        CAPACITY = capacity;
        pg_sys::RequestAddinShmemSpace(total_size(capacity));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), (SLOTS + 1) as i32);
    }
}

/// Attach (and on first use initialise) the queues, from the shmem startup hook.
pub fn attach() {
    unsafe {
        let mut found = false;
        let h = pg_sys::ShmemInitStruct(
            c"agent_guard audit queues".as_ptr(),
            total_size(CAPACITY),
            &mut found,
        ) as *mut Header;
        if !found {
            ptr::write_bytes(h as *mut u8, 0, std::mem::size_of::<Header>());
            (*h).capacity = CAPACITY as u64;
            for i in 0..SLOTS {
                let s = &mut (*h).slots[i];
                pg_sys::ConditionVariableInit(&mut s.durable_cv);
                pg_sys::ConditionVariableInit(&mut s.space_cv);
            }
        }
        HEADER = h;
        LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
    }
}

pub fn attached() -> bool {
    unsafe { !HEADER.is_null() }
}

unsafe fn lock(i: usize) -> *mut pg_sys::LWLock {
    unsafe { &mut (*LOCKS.add(i)).lock }
}

/// Run `f` with slot `i` locked exclusively. `f` must not raise errors.
pub fn with_slot<R>(i: usize, f: impl FnOnce(&mut Slot, &mut [u8]) -> R) -> R {
    unsafe {
        let h = HEADER;
        let cap = (*h).capacity as usize;
        let buf = std::slice::from_raw_parts_mut(
            (h as *mut u8).add(std::mem::size_of::<Header>() + i * cap),
            cap,
        );
        pg_sys::LWLockAcquire(lock(i), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let r = f(&mut (*h).slots[i], buf);
        pg_sys::LWLockRelease(lock(i));
        r
    }
}

/// The slot of database `db`, assigning a free one if needed. When every
/// slot is taken, the one whose queue is empty and whose writer has been
/// idle the longest is given to `db` (its writer notices and exits), so idle
/// writers of other databases never keep a database from being audited.
pub fn slot_for(db: pg_sys::Oid) -> Option<usize> {
    unsafe {
        let h = HEADER;
        if h.is_null() {
            return None;
        }
        // fast path: already assigned (dboid is only ever set under the assignment lock)
        for i in 0..SLOTS {
            if ptr::read_volatile(&(*h).slots[i].dboid) == db {
                return Some(i);
            }
        }
        pg_sys::LWLockAcquire(lock(SLOTS), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = None;
        for i in 0..SLOTS {
            if (*h).slots[i].dboid == db {
                found = Some(i);
                break;
            }
        }
        if found.is_none() {
            found = (0..SLOTS).find(|&i| (*h).slots[i].dboid == pg_sys::InvalidOid);
            let now = pg_sys::GetCurrentTimestamp();
            match found {
                Some(i) => with_slot(i, |s, _| assign(s, db, now)),
                None => {
                    // the slot idle the longest, if one is empty
                    let mut best: Option<(usize, i64)> = None;
                    for i in 0..SLOTS {
                        let taken =
                            with_slot(i, |s, _| (s.head == s.tail).then_some(s.last_active));
                        if let Some(t) = taken {
                            if best.is_none_or(|(_, b)| t < b) {
                                best = Some((i, t));
                            }
                        }
                    }
                    if let Some((i, _)) = best {
                        // still empty: the assignment lock keeps other assigners out,
                        // and an empty queue gives its writer nothing to write
                        if with_slot(i, |s, _| {
                            let empty = s.head == s.tail;
                            if empty {
                                let latch = s.worker_latch;
                                assign(s, db, now);
                                if !latch.is_null() {
                                    pg_sys::SetLatch(latch);
                                }
                            }
                            empty
                        }) {
                            found = Some(i);
                        }
                    }
                }
            }
        }
        pg_sys::LWLockRelease(lock(SLOTS));
        found
    }
}

/// Give slot `s` (empty) to database `db`, without a writer yet. Sequence
/// numbers go on increasing: a waiter of the previous database still compares
/// against them.
fn assign(s: &mut Slot, db: pg_sys::Oid, now: i64) {
    s.dboid = db;
    s.worker_pid = 0;
    s.worker_latch = ptr::null_mut();
    s.worker_state = WORKER_NONE;
    s.writer_idle = false;
    s.last_active = now;
}

/// Release slot `i` of database `db` if its queue is empty, so another
/// database can use it. Returns whether it was released (false also when the
/// slot belongs to another database by now).
pub fn release_if_empty(i: usize, db: pg_sys::Oid) -> bool {
    unsafe {
        pg_sys::LWLockAcquire(lock(SLOTS), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let released = with_slot(i, |s, _| {
            if s.dboid == db && s.head == s.tail {
                s.dboid = pg_sys::InvalidOid;
                s.worker_pid = 0;
                s.worker_latch = ptr::null_mut();
                s.worker_state = WORKER_NONE;
                true
            } else {
                false
            }
        });
        pg_sys::LWLockRelease(lock(SLOTS));
        released
    }
}

/// Why a record could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    NoSpace,
    /// The slot was released and given to another database meanwhile.
    Reassigned,
}

/// Append a record; returns its sequence number. A `durable` record is one
/// its sender will wait for.
pub fn push(
    slot: &mut Slot,
    buf: &mut [u8],
    db: pg_sys::Oid,
    payload: &[u8],
    durable: bool,
) -> Result<u64, Full> {
    if slot.dboid != db {
        return Err(Full::Reassigned);
    }
    let cap = buf.len() as u64;
    let need = (HEADER_BYTES + payload.len()) as u64;
    if need > cap || cap - (slot.head - slot.tail) < need {
        return Err(Full::NoSpace);
    }
    let seq = slot.enqueued + 1;
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&seq.to_le_bytes());
    ring_write(buf, slot.head, &header);
    ring_write(buf, slot.head + HEADER_BYTES as u64, payload);
    slot.head += need;
    slot.enqueued = seq;
    if durable {
        slot.sync_upto = seq;
    }
    if slot.oldest_ts == 0 {
        slot.oldest_ts = unsafe { pg_sys::GetCurrentTimestamp() };
    }
    Ok(seq)
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
    let bytes = unsafe {
        let h = HEADER;
        let cap = (*h).capacity as usize;
        let buf = std::slice::from_raw_parts(
            (h as *const u8).add(std::mem::size_of::<Header>() + i * cap),
            cap,
        );
        // the LWLock release/acquire above orders the backends' writes before our reads
        ring_read(buf, tail, (head - tail) as usize)
    };
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

/// Raw access for the writer and stats.
pub fn header_capacity() -> u64 {
    unsafe {
        if HEADER.is_null() {
            0
        } else {
            (*HEADER).capacity
        }
    }
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
        let s = &mut (*HEADER).slots[i];
        if durable {
            &mut s.durable_cv
        } else {
            &mut s.space_cv
        }
    }
}

/// Read a field without locking (for waiters' quick checks).
pub fn durable_seq(i: usize) -> u64 {
    unsafe { ptr::read_volatile(&(*HEADER).slots[i].durable) }
}

pub fn slot_dboid(i: usize) -> pg_sys::Oid {
    unsafe { ptr::read_volatile(&(*HEADER).slots[i].dboid) }
}

#[allow(dead_code)]
fn _assert_send(_: *mut c_void) {}

#[cfg(test)]
mod tests {}
