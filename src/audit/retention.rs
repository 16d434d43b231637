//! Retention that is cheap at scale (issue 14.6b): `agent_guard.audit_log`
//! is partitioned by ranges of `id`, one partition per period (a day by
//! default), and whole expired partitions are dropped.
//!
//! Why ranges of ids and not of `started_at`: the hash chain runs in id
//! order, so a partition of an id range is an exact stretch of the chain and
//! dropping the oldest ones removes a prefix, which a purge anchor covers
//! (as `purge_audit()`'s DELETE does). Time ranges would not: a statement
//! that started before midnight but ended after gets a later id than rows of
//! the next day, so dropping a day would cut holes into the chain. Ranges of
//! ids also keep `PRIMARY KEY (id)` (a partitioned table's unique keys must
//! contain the partition key).
//!
//! How ids map to periods: the writer ([`prepare`], before every batch,
//! through `agent_guard._audit_partition_for()` in sql/retention.sql)
//! - creates the partition the next ids go to if there is none,
//! - creates the next period's partition ahead of time (ids from the current
//!   partition's upper bound; its name says when its period starts, UTC),
//! - and once that period has begun moves the id sequence to its lower bound
//!   (ids jump by up to 10^12 at each period; they stay increasing).
//!
//! Only the writer inserts, in id order, and a row reaches it after its
//! statement started, so every row of a partition started before the next
//! partition's start: a partition may be dropped once that start is older
//! than `agent_guard.audit_retention`. Rows are thus kept at least the
//! retention and at most the retention plus one period.
//!
//! Who drops: `agent_guard.apply_retention()` (superuser, scheduled by the
//! operator, e.g. from cron). The writer cannot: the drop records itself in
//! the trail (a `PURGE AUDIT` row naming the anchor, which verify_audit()
//! requires) through the audit queue, whose record the writer would wait for
//! itself, and dropping a partition takes an exclusive lock on audit_log.
//!
//! The writer inserts straight into a partition's heap (src/audit/insert.rs
//! opens [`insert_target`]), so this module also says which relations hold
//! the trail's rows ([`leaves`]) for the catalog-level scans of the drop
//! guard and of verify_audit().

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// `agent_guard.audit_retention` in seconds (0: keep forever); PGC_SIGHUP.
static mut RETENTION_S: i32 = 0;
/// `agent_guard.audit_partition_span` in seconds; PGC_SIGHUP.
static mut SPAN_S: i32 = 86_400;

thread_local! {
    /// The partition the writer's current batch goes to.
    static LEAF: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The partitions apply_retention() is dropping right now.
    static DROPPING: std::cell::RefCell<Vec<pg_sys::Oid>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Define the settings (from `_PG_init`). Both are PGC_SIGHUP: set in
/// postgresql.conf or with ALTER SYSTEM (a superuser's, and refused to
/// agents as an admin statement) and a reload; no session, role or database
/// can change them, an agent's least of all.
pub fn init() {
    unsafe {
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.audit_retention".as_ptr(),
            c"How long audit rows are kept before agent_guard.apply_retention() drops their partition (0: forever).".as_ptr(),
            c"Whole partitions are dropped: rows are kept at least this long and at most this plus agent_guard.audit_partition_span. Set in postgresql.conf or with ALTER SYSTEM and a reload.".as_ptr(),
            &raw mut RETENTION_S,
            0,
            0,
            i32::MAX,
            pg_sys::GucContext::PGC_SIGHUP,
            pg_sys::GUC_UNIT_S as i32,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.audit_partition_span".as_ptr(),
            c"The period of one partition of agent_guard.audit_log (default a day, UTC).".as_ptr(),
            c"The audit writer opens a new partition at each multiple of this span since 2000-01-01 UTC. Set in postgresql.conf or with ALTER SYSTEM and a reload.".as_ptr(),
            &raw mut SPAN_S,
            86_400,
            1,
            i32::MAX,
            pg_sys::GucContext::PGC_SIGHUP,
            pg_sys::GUC_UNIT_S as i32,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomBoolVariable(
            c"agent_guard.audit_retention_auto".as_ptr(),
            c"Whether the audit writer applies agent_guard.audit_retention itself (default on).".as_ptr(),
            c"While a database's audit writer runs it checks every agent_guard.audit_partition_span (at most every minute) for expired partitions and starts a short-lived background worker that drops them as agent_guard.apply_retention() does. Off: only apply_retention() drops. Set in postgresql.conf or with ALTER SYSTEM and a reload.".as_ptr(),
            &raw mut AUTO,
            true,
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            None,
            None,
            None,
        );
    }
}

/// `agent_guard.audit_retention_auto`; PGC_SIGHUP.
static mut AUTO: bool = true;

thread_local! {
    /// When the writer last looked for expired partitions.
    static LAST_CHECK: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// The writer, in its batch's transaction: every partition span (at most
/// every minute), when a retention is set and applied automatically and a
/// partition has expired, start a retention worker for this database. The
/// worker does what `apply_retention()` does and exits; the `PURGE AUDIT`
/// row it records is written by this writer (which is why the writer does
/// not drop itself: it would wait for its own record). Databases whose
/// writer does not run (no audited statements) are left to
/// `apply_retention()`.
pub fn maybe_start_worker() {
    let (retention, span) = unsafe { (RETENTION_S, SPAN_S) };
    if retention == 0 || !unsafe { AUTO } {
        return;
    }
    let every = std::time::Duration::from_secs(span.clamp(1, 60) as u64);
    let now = std::time::Instant::now();
    if LAST_CHECK.with(|l| l.get().is_some_and(|t| now.duration_since(t) < every)) {
        return;
    }
    LAST_CHECK.with(|l| l.set(Some(now)));
    let parent = audit_log_oid();
    if parent == pg_sys::InvalidOid || !is_partitioned(parent) {
        return;
    }
    let due = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM (SELECT pg_catalog.lead(p.starts) OVER (ORDER BY p.lo NULLS FIRST) \
                OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1)) AS expired \
             FROM agent_guard._audit_partitions() p) x WHERE x.expired)",
        &[(retention as f64).into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !due {
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId };
    let started = BackgroundWorkerBuilder::new(&format!("agent_guard retention {}", db.to_u32()))
        .set_type("agent_guard retention")
        .set_library("agent_guard")
        .set_function("agent_guard_retention_worker")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32() as usize)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .is_ok();
    if !started {
        log!("agent_guard: no background worker slot for the audit retention of this database; it is tried again in {every:?} (or run agent_guard.apply_retention())");
    }
}

/// The retention worker (see [`maybe_start_worker`]): connects to its
/// database as the bootstrap superuser, drops what has expired, exits.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn agent_guard_retention_worker(arg: pg_sys::Datum) {
    use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let retention = unsafe { RETENTION_S };
    if retention == 0 {
        return;
    }
    // (apply() waits for a retention running meanwhile, then finds what it left)
    let dropped = BackgroundWorker::transaction(|| crate::search_path::pinned(|| apply(retention)));
    if dropped > 0 {
        log!("agent_guard: retention worker dropped {dropped} expired audit rows");
    }
}

fn audit_log_oid() -> pg_sys::Oid {
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(c"audit_log".as_ptr(), ns)
    }
}

fn is_partitioned(relid: pg_sys::Oid) -> bool {
    unsafe { pg_sys::get_rel_relkind(relid) as u8 == pg_sys::RELKIND_PARTITIONED_TABLE }
}

/// The writer, in its batch's transaction before inserting `rows` rows:
/// make sure the partition their ids go to exists (and the next period's),
/// and remember it for [`insert_target`].
pub fn prepare(rows: usize) {
    LEAF.with(|l| l.set(pg_sys::InvalidOid));
    let parent = audit_log_oid();
    if parent == pg_sys::InvalidOid || !is_partitioned(parent) {
        return;
    }
    let span = unsafe { SPAN_S };
    let leaf = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT agent_guard._audit_partition_for($1, $2)",
        &[(rows as i64).into(), span.into()],
    )
    .expect("agent_guard: cannot prepare the audit trail's partition")
    .unwrap_or(pg_sys::InvalidOid);
    LEAF.with(|l| l.set(leaf));
}

/// The relation the writer appends to: `relid` (audit_log) itself when it
/// is a plain table, else the partition [`prepare`] chose.
pub fn insert_target(relid: pg_sys::Oid) -> pg_sys::Oid {
    if !is_partitioned(relid) {
        return relid;
    }
    let leaf = LEAF.with(|l| l.get());
    if leaf == pg_sys::InvalidOid {
        pgrx::error!(
            "agent_guard: no partition of agent_guard.audit_log was prepared for this batch"
        );
    }
    leaf
}

/// The relations holding `relid`'s rows: its leaf partitions, or itself.
pub fn leaves(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    if !is_partitioned(relid) {
        return vec![relid];
    }
    crate::catalog::children(relid)
        .into_iter()
        .flat_map(leaves)
        .collect()
}

/// Whether `relid` is a partition (at any depth) of agent_guard.audit_log.
pub fn is_trail_partition(relid: pg_sys::Oid) -> bool {
    let parent = audit_log_oid();
    if parent == pg_sys::InvalidOid || relid == parent {
        return false;
    }
    let mut at = relid;
    for _ in 0..8 {
        match crate::catalog::parents(at).first() {
            Some(&p) if p == parent => return true,
            Some(&p) => at = p,
            None => return false,
        }
    }
    false
}

/// Whether the drop of `relid` is apply_retention()'s own.
pub fn retention_drop(relid: pg_sys::Oid) -> bool {
    relid != pg_sys::InvalidOid && DROPPING.with(|d| d.borrow().contains(&relid))
}

/// Drop the partitions of agent_guard.audit_log whose rows all started
/// longer ago than `agent_guard.audit_retention`, oldest first, each drop
/// leaving a purge anchor (agent_guard.audit_purges) and a `PURGE AUDIT` row
/// in the trail naming it, so that verify_audit() holds for what remains.
/// Returns the number of rows dropped. Superusers only; never agents.
#[pg_extern]
fn apply_retention() -> i64 {
    super::functions::refuse_unless_superuser("apply the audit trail's retention");
    let retention = unsafe { RETENTION_S };
    if retention == 0 {
        return 0;
    }
    crate::search_path::pinned(|| apply(retention))
}

/// The text of the trail's PURGE AUDIT row for a retention run (verify_audit()
/// looks for it, also in its redacted form: see src/audit/functions.rs).
pub(super) fn purge_text(rows: i64, anchor: &str) -> String {
    format!(
        "agent_guard.apply_retention() dropped the expired partitions of agent_guard.audit_log: {rows} rows \
         (agent_guard.audit_retention); the trail continues from anchor {anchor}"
    )
}

struct Part {
    relid: pg_sys::Oid,
    name: String,
    hi: Option<i64>,
    /// whether this partition's successor started before the cutoff
    expired: bool,
}

fn apply(retention: i32) -> i64 {
    // one retention at a time per database: the writer's retention worker
    // and apply_retention() (from cron) may meet; the second then finds
    // what the first left
    Spi::run(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('agent_guard retention'))",
    )
    .expect("agent_guard: cannot take the retention lock");
    let cutoff = Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
        "SELECT pg_catalog.now() - pg_catalog.make_interval(secs => $1)",
        &[(retention as f64).into()],
    )
    .ok()
    .flatten()
    .expect("agent_guard: cannot compute the retention cutoff");
    // the id the writer gives next: its partition is never dropped
    let next: i64 = Spi::get_one(
        "SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END FROM agent_guard.audit_log_id_seq s",
    )
    .ok()
    .flatten()
    .unwrap_or(i64::MAX);
    let parts: Vec<Part> = Spi::connect(|c| {
        c.select(
            "SELECT p.relid, p.relname, p.hi, \
                    coalesce(pg_catalog.lead(p.starts) OVER (ORDER BY p.lo NULLS FIRST) <= $1, false) \
             FROM agent_guard._audit_partitions() p ORDER BY p.lo NULLS FIRST",
            None,
            &[cutoff.into()],
        )
        .map(|t| {
            t.filter_map(|r| {
                Some(Part {
                    relid: r.get::<pg_sys::Oid>(1).ok()??,
                    name: r.get::<String>(2).ok()??,
                    hi: r.get::<i64>(3).ok()?,
                    expired: r.get::<bool>(4).ok()??,
                })
            })
            .collect()
        })
        .unwrap_or_default()
    });
    // the expired prefix, short of the partition the next ids go to
    let drop: Vec<&Part> = parts
        .iter()
        .take_while(|p| p.expired && p.hi.is_some_and(|hi| hi <= next))
        .collect();
    let Some(last) = drop.last() else {
        return 0;
    };
    let upto = last.hi.unwrap_or(i64::MAX);
    // rows below that bound elsewhere (the DEFAULT partition) would be cut off
    let elsewhere = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM agent_guard.audit_log a WHERE a.id < $1 AND a.tableoid <> ALL ($2))",
        &[upto.into(), drop.iter().map(|p| p.relid).collect::<Vec<_>>().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(true);
    if elsewhere {
        warning!(
            "agent_guard: retention keeps agent_guard.audit_log's partitions up to id {upto}: rows with lower ids are in another partition"
        );
        return 0;
    }
    let (rows, newest): (i64, Option<(i64, String)>) = Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT count(*) FROM agent_guard.audit_log WHERE id < $1",
                None,
                &[upto.into()],
            )
            .ok()
            .and_then(|t| t.first().get::<i64>(1).ok().flatten())
            .unwrap_or(0);
        let newest = c
            .select(
                "SELECT id, coalesce(agent_guard._hash_text(row_hash), '') FROM agent_guard.audit_log WHERE id < $1 ORDER BY id DESC LIMIT 1",
                None,
                &[upto.into()],
            )
            .ok()
            .and_then(|t| {
                let r = t.first();
                Some((r.get::<i64>(1).ok()??, r.get::<String>(2).ok()??))
            });
        (rows, newest)
    });
    let names: Vec<&str> = drop.iter().map(|p| p.name.as_str()).collect();
    // a long reader of the trail holds it: not now (the writer would queue
    // behind the drop's lock request for as long as the reader runs)
    let lockable = Spi::get_one::<bool>("SELECT agent_guard._audit_log_lockable()")
        .ok()
        .flatten()
        .unwrap_or(false);
    if !lockable {
        log!(
            "agent_guard: retention postponed: agent_guard.audit_log is in use (a long read of the trail holds it); tried again later"
        );
        return 0;
    }
    if let Some((_, anchor)) = &newest {
        // First the trail's own row naming the anchor (written by the
        // writer while this transaction holds no lock it needs), then the
        // anchor, then the drops.
        super::record_admin_event("PURGE AUDIT", &purge_text(rows, anchor));
        super::worker::as_writer(|| {
            Spi::run_with_args(
                "INSERT INTO agent_guard.audit_purges (older_than, rows_purged, anchor_hash) VALUES ($1, $2, $3)",
                &[cutoff.into(), rows.into(), anchor.as_str().into()],
            )
            .expect("agent_guard: cannot record the retention's purge anchor")
        });
    }
    let oids: Vec<pg_sys::Oid> = drop.iter().map(|p| p.relid).collect();
    DROPPING.with(|d| *d.borrow_mut() = oids.clone());
    pgrx::PgTryBuilder::new(|| {
        Spi::run_with_args(
            "SELECT agent_guard._drop_audit_partitions($1::pg_catalog.oid[]::pg_catalog.regclass[])",
            &[oids.clone().into()],
        )
        .expect("agent_guard: cannot drop the expired partitions of the audit trail")
    })
    .finally(|| DROPPING.with(|d| d.borrow_mut().clear()))
    .execute();
    let cutoff_text = Spi::get_one_with_args::<String>("SELECT $1::text", &[cutoff.into()])
        .ok()
        .flatten()
        .unwrap_or_default();
    log!(
        "agent_guard: retention dropped partition(s) {} of agent_guard.audit_log: {rows} rows{}, all started before {cutoff_text} \
         (agent_guard.audit_retention = {retention} s); anchor {} (takes effect if the transaction commits)",
        names.join(", "),
        newest.as_ref().map_or(String::new(), |n| format!(" up to id {}", n.0)),
        newest.as_ref().map_or("(none)", |n| n.1.as_str())
    );
    rows
}
