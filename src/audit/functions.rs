//! SQL functions of the audit trail: statistics, verification, purge.

use agent_guard_core::chain::{self, ChainRow};
use pgrx::prelude::*;
use pgrx::JsonB;

/// The chain link of `content` after `prev` (used by the writer's SQL).
#[pg_extern(immutable, parallel_safe)]
fn _link(prev: &str, content: &str) -> String {
    chain::link(prev, content)
}

/// True only in agent_guard's audit writer and inside purge_audit().
#[pg_extern(parallel_safe)]
fn _audit_writer() -> bool {
    super::worker::is_writer()
}

/// Queue depth, rows written, drops (must stay 0) and writer state per database.
#[pg_extern]
fn audit_stats() -> JsonB {
    JsonB(super::stats())
}

/// Whether the hash chain is intact, and if not, the first row where it breaks.
#[pg_extern]
fn verify_audit() -> TableIterator<
    'static,
    (
        name!(intact, bool),
        name!(rows_checked, i64),
        name!(first_broken_id, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    crate::search_path::pinned(verify)
}

fn verify() -> TableIterator<
    'static,
    (
        name!(intact, bool),
        name!(rows_checked, i64),
        name!(first_broken_id, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let start: String = Spi::get_one::<String>(
        "SELECT anchor_hash FROM agent_guard.audit_purges WHERE anchor_hash IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| chain::GENESIS.to_string());
    type Row = (i64, String, String, String, Option<String>, Option<String>);
    let rows: Vec<Row> = Spi::connect(|c| {
        c.select(
            "SELECT a.id, agent_guard._row_content(a), coalesce(a.prev_hash, ''), coalesce(a.row_hash, ''), \
                    CASE WHEN a.outcome IS NOT NULL OR a.transaction_outcome IS NOT NULL \
                         THEN agent_guard._outcome_content(a) END, a.outcome_hash \
             FROM agent_guard.audit_log a ORDER BY a.id",
            None,
            &[],
        )
        .map(|t| {
            t.filter_map(|r| {
                Some((
                    r.get::<i64>(1).ok()??,
                    r.get::<String>(2).ok()??,
                    r.get::<String>(3).ok()??,
                    r.get::<String>(4).ok()??,
                    r.get::<String>(5).ok()?,
                    r.get::<String>(6).ok()?,
                ))
            })
            .collect()
        })
        .unwrap_or_default()
    });
    let n = rows.len() as i64;
    let broken = chain::first_break(
        rows.iter().map(|r| ChainRow {
            id: r.0,
            content: &r.1,
            prev_hash: &r.2,
            row_hash: &r.3,
            outcome: r.4.as_deref(),
            outcome_hash: r.5.as_deref(),
        }),
        &start,
    );
    let row = match broken {
        None => (true, n, None, None),
        Some((id, why)) => (false, n, Some(id), Some(why)),
    };
    TableIterator::new(std::iter::once(row))
}

/// Remove audit rows older than `older_than` (a prefix of the chain), record
/// the purge, and keep the rest verifiable. Superusers only; never agents.
#[pg_extern]
fn purge_audit(older_than: pgrx::datum::TimestampWithTimeZone) -> i64 {
    if crate::identity::current_agent().is_some() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "agent sessions may not purge the audit trail"
        );
    }
    if !unsafe { pg_sys::superuser() } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only superusers may purge the audit trail"
        );
    }
    super::worker::set_writer(true);
    let result = pgrx::PgTryBuilder::new(|| {
        crate::search_path::pinned(|| Spi::connect_mut(|c| {
            let first_kept: Option<i64> = c
                .update(
                    "SELECT min(id) FROM agent_guard.audit_log WHERE started_at >= $1",
                    None,
                    &[older_than.into()],
                )
                .ok()
                .and_then(|t| t.first().get::<i64>(1).ok().flatten());
            let (deleted, anchor): (i64, Option<String>) = match first_kept {
                Some(id) => {
                    let anchor = c
                        .update("SELECT prev_hash FROM agent_guard.audit_log WHERE id = $1", None, &[id.into()])
                        .ok()
                        .and_then(|t| t.first().get::<String>(1).ok().flatten());
                    let d = c
                        .update("DELETE FROM agent_guard.audit_log WHERE id < $1", None, &[id.into()])
                        .map(|t| t.len() as i64)
                        .unwrap_or(0);
                    (d, anchor)
                }
                None => {
                    let anchor = c
                        .update("SELECT row_hash FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1", None, &[])
                        .ok()
                        .and_then(|t| t.first().get::<String>(1).ok().flatten());
                    let d = c
                        .update("DELETE FROM agent_guard.audit_log", None, &[])
                        .map(|t| t.len() as i64)
                        .unwrap_or(0);
                    (d, anchor)
                }
            };
            c.update(
                "INSERT INTO agent_guard.audit_purges (older_than, rows_purged, anchor_hash) VALUES ($1, $2, $3)",
                None,
                &[older_than.into(), deleted.into(), anchor.into()],
            )
            .expect("agent_guard: cannot record the purge");
            deleted
        }))
    })
    .finally(|| super::worker::set_writer(false))
    .execute();
    super::record_admin_event(
        "PURGE AUDIT",
        &format!("agent_guard.purge_audit() removed {result} rows"),
    );
    result
}
