//! The chain head outside the table (issue 14.5): what the audit writer last
//! committed — the newest row's id and hash — kept where a superuser who
//! rewrites `agent_guard.audit_log` with its triggers disabled does not
//! reach it by SQL on the table.
//!
//! - **Shared memory**: one entry per database, updated after every batch's
//!   commit (what [`current`] reads first while the server runs).
//! - **A file in the data directory**, `agent_guard_heads/<database oid>`,
//!   one line, written (temporary file, fsync, rename) at most once a second
//!   and only after the batch's commit record is flushed to WAL, so a crash
//!   never leaves a head the table does not have. After a restart it is the
//!   head until the writer commits again.
//! - **The server log**: one `LOG` line `agent_guard: audit chain head:
//!   database=… id=… hash=… at=…` when a writer first commits, then at most
//!   every [`LOG_EVERY`], and when it leaves, for whoever ships the log
//!   elsewhere.
//!
//! Each head names the `audit_log` it belongs to (its OID): a trail made by
//! a later `CREATE EXTENSION` (after a confirmed drop) starts afresh.
//!
//! `verify_audit()` compares the trail with the head (rows removed from the
//! end, the chain recomputed); `audit_anchor()` hands the head to an
//! external system, `verify_audit_anchor()` checks a kept one. A superuser
//! can still write the file (`COPY … TO`), but not the shared memory of the
//! running server nor a log already shipped.

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// Databases whose heads shared memory holds (beyond, the oldest is reused;
/// the file still holds it).
const SLOTS: usize = 64;
/// How often a busy writer logs its head.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// How often a busy writer rewrites its head file.
const FILE_EVERY: Duration = Duration::from_secs(1);
const DIR: &str = "agent_guard_heads";

#[derive(Copy, Clone)]
pub struct Slot {
    dboid: u32,
    table: u32,
    id: i64,
    /// µs since the PostgreSQL epoch.
    at: i64,
    hash: [u8; 64],
}

#[derive(Copy, Clone)]
pub struct Heads {
    slots: [Slot; SLOTS],
}

impl Default for Heads {
    fn default() -> Self {
        Heads {
            slots: [Slot {
                dboid: 0,
                table: 0,
                id: 0,
                at: 0,
                hash: [0; 64],
            }; SLOTS],
        }
    }
}

unsafe impl PGRXSharedMemory for Heads {}

static HEADS: PgLwLock<Heads> = unsafe { PgLwLock::new(c"agent_guard_chain_heads") };

/// A chain head: the newest row the writer committed.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub table: u32,
    pub id: i64,
    pub hash: String,
    /// µs since the PostgreSQL epoch (a timestamptz's value).
    pub at: i64,
}

impl Head {
    fn line(&self, db: u32) -> String {
        format!(
            "v1 db={db} table={} id={} hash={} at={}\n",
            self.table, self.id, self.hash, self.at
        )
    }

    fn parse(s: &str) -> Option<Head> {
        let mut it = s.split_whitespace();
        if it.next()? != "v1" {
            return None;
        }
        let mut h = Head {
            table: 0,
            id: 0,
            hash: String::new(),
            at: 0,
        };
        for kv in it {
            let (k, v) = kv.split_once('=')?;
            match k {
                "table" => h.table = v.parse().ok()?,
                "id" => h.id = v.parse().ok()?,
                "hash" => h.hash = v.to_string(),
                "at" => h.at = v.parse().ok()?,
                _ => {}
            }
        }
        (h.id > 0 && h.hash.len() == 64).then_some(h)
    }
}

thread_local! {
    /// The newest row of the batch being written (committed or not).
    static PENDING: RefCell<Option<(u32, i64, String)>> = const { RefCell::new(None) };
    static LAST_FILE: Cell<Option<Instant>> = const { Cell::new(None) };
    static LAST_LOG: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A head published to shared memory but not yet to the file.
    static FILE_DIRTY: Cell<bool> = const { Cell::new(false) };
}

/// Reserve the shared memory (from `_PG_init`).
pub fn init() {
    pgrx::pg_shmem_init!(HEADS);
}

/// The writer inserted `id` with `hash` as the newest row of its batch
/// (inside the batch's transaction).
pub fn inserted(id: i64, hash: &str) {
    let table = audit_log_oid();
    // (read in a transaction, cached for the log lines written outside one)
    let _ = crate::identity::database_name();
    PENDING.with(|p| *p.borrow_mut() = Some((table, id, hash.to_string())));
}

fn audit_log_oid() -> u32 {
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return 0;
        }
        pg_sys::get_relname_relid(c"audit_log".as_ptr(), ns).to_u32()
    }
}

/// The batch's transaction committed (`flushed`: its commit record is on
/// disk): publish its head.
pub fn committed(flushed: bool) {
    let Some((table, id, hash)) = PENDING.with(|p| p.borrow_mut().take()) else {
        return;
    };
    let head = Head {
        table,
        id,
        hash,
        at: unsafe { pg_sys::GetCurrentTimestamp() },
    };
    publish(&head);
    FILE_DIRTY.with(|d| d.set(true));
    let due = LAST_FILE.with(|t| t.get().is_none_or(|t| t.elapsed() >= FILE_EVERY));
    if flushed || due {
        write_file(&head, flushed);
    }
    if LAST_LOG.with(|t| t.get().is_none_or(|t| t.elapsed() >= LOG_EVERY)) {
        log_head(&head);
    }
}

/// The writer is idle (`leaving`: it exits): the file gets the newest head;
/// the log too when the writer leaves or [`LOG_EVERY`] has passed.
pub fn settle(leaving: bool) {
    if !FILE_DIRTY.with(|d| d.get()) {
        return;
    }
    if let Some(h) = shared(unsafe { pg_sys::MyDatabaseId.to_u32() }) {
        write_file(&h, false);
        if leaving || LAST_LOG.with(|t| t.get().is_none_or(|t| t.elapsed() >= LOG_EVERY)) {
            log_head(&h);
        }
    }
}

fn log_head(h: &Head) {
    LAST_LOG.with(|t| t.set(Some(Instant::now())));
    log!(
        "agent_guard: audit chain head: database={} id={} hash={} at={}",
        crate::identity::database_name(),
        h.id,
        h.hash,
        timestamp_text(h.at)
    );
}

pub fn timestamp_text(at: i64) -> String {
    unsafe {
        let p = pg_sys::timestamptz_to_str(at);
        if p.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn publish(h: &Head) {
    let db = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let mut heads = HEADS.exclusive();
    let i = heads
        .slots
        .iter()
        .position(|s| s.dboid == db)
        .or_else(|| heads.slots.iter().position(|s| s.dboid == 0))
        .unwrap_or_else(|| (0..SLOTS).min_by_key(|&i| heads.slots[i].at).unwrap_or(0));
    let mut hash = [0u8; 64];
    let n = h.hash.len().min(64);
    hash[..n].copy_from_slice(&h.hash.as_bytes()[..n]);
    heads.slots[i] = Slot {
        dboid: db,
        table: h.table,
        id: h.id,
        at: h.at,
        hash,
    };
}

fn shared(db: u32) -> Option<Head> {
    let heads = HEADS.share();
    let s = heads.slots.iter().find(|s| s.dboid == db)?;
    Some(Head {
        table: s.table,
        id: s.id,
        hash: String::from_utf8_lossy(&s.hash).into_owned(),
        at: s.at,
    })
}

fn path(db: u32) -> std::path::PathBuf {
    let data = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned();
    std::path::Path::new(&data).join(DIR).join(db.to_string())
}

fn write_file(h: &Head, flushed: bool) {
    use std::io::Write;
    if !flushed {
        // never a head on disk whose commit is not
        unsafe { pg_sys::XLogFlush(pg_sys::XactLastCommitEnd) };
    }
    let db = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let file = path(db);
    let tmp = file.with_extension("tmp");
    let r = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(file.parent().unwrap_or(std::path::Path::new(".")))?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(h.line(db).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => {
            LAST_FILE.with(|t| t.set(Some(Instant::now())));
            FILE_DIRTY.with(|d| d.set(false));
        }
        Err(e) => warning!(
            "agent_guard: cannot write the audit chain head to {}: {e}",
            file.display()
        ),
    }
}

fn from_file(db: u32) -> Option<Head> {
    Head::parse(&std::fs::read_to_string(path(db)).ok()?)
}

/// Where a head came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    SharedMemory,
    File,
}

/// This database's head for its current `audit_log`: shared memory first,
/// then the file; also whether the two disagree (the file rewritten while
/// the server runs).
pub fn current() -> Option<(Head, Source, Option<Head>)> {
    let db = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let table = audit_log_oid();
    let file = from_file(db).filter(|h| h.table == table);
    match shared(db).filter(|h| h.table == table) {
        Some(h) => {
            // the file lags shared memory, but never names a newer or a
            // different row than the chain up to shared memory's head
            let odd = file.filter(|f| f.id > h.id || (f.id == h.id && f.hash != h.hash));
            Some((h, Source::SharedMemory, odd))
        }
        None => file.map(|f| (f, Source::File, None)),
    }
}

/// The head database `db` left, from shared memory or its file (any
/// `audit_log` of it), if its writer ever committed a row.
pub fn of_database(db: u32) -> Option<Head> {
    shared(db).or_else(|| from_file(db))
}

/// Forget database `db`'s head (it was dropped): its shared-memory entry
/// and its file.
pub fn forget(db: u32) {
    {
        let mut heads = HEADS.exclusive();
        for s in heads.slots.iter_mut().filter(|s| s.dboid == db) {
            s.dboid = 0;
            s.id = 0;
            s.at = 0;
        }
    }
    let file = path(db);
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warning!(
            "agent_guard: cannot remove the audit chain head file {}: {e}",
            file.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Head;

    #[test]
    fn a_head_line_reads_back() {
        let h = Head {
            table: 16384,
            id: 42,
            hash: "ab".repeat(32),
            at: 123,
        };
        assert_eq!(Head::parse(&h.line(5)), Some(h));
        assert_eq!(Head::parse("v2 id=1"), None);
        assert_eq!(Head::parse("v1 db=1 table=2 id=3 hash=short at=4"), None);
    }
}
