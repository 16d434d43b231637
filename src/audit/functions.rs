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

type Report = (bool, i64, Option<i64>, Option<String>);

fn verify() -> TableIterator<
    'static,
    (
        name!(intact, bool),
        name!(rows_checked, i64),
        name!(first_broken_id, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    TableIterator::new(std::iter::once(report()))
}

/// A stored chain row: id, hashed content, prev_hash, row_hash, hashed
/// outcome (once there is one), outcome_hash.
pub(super) type StoredRow = (i64, String, String, String, Option<String>, Option<String>);

/// The rows of a hash chain as `sql` selects them (in [`StoredRow`]'s column order).
pub(super) fn stored_chain(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Vec<StoredRow> {
    Spi::connect(|c| {
        c.select(sql, None, args)
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
    })
}

/// [`stored_chain`] for a chain whose hashes are stored as `bytea`
/// (`agent_guard.audit_log`): columns 3, 4 and 6 are read as bytes and
/// turned into the chain's text here ([`chain::hash_text`]), not by a SQL
/// function per row (whose calls would be statements of their own, audited
/// for sessions with `audit_non_agents = 'all'`).
fn stored_chain_bytea(sql: &str) -> Vec<StoredRow> {
    let text = |b: Option<Vec<u8>>| b.map_or_else(String::new, |b| chain::hash_text(&b));
    Spi::connect(|c| {
        c.select(sql, None, &[])
            .map(|t| {
                t.filter_map(|r| {
                    Some((
                        r.get::<i64>(1).ok()??,
                        r.get::<String>(2).ok()??,
                        text(r.get::<Vec<u8>>(3).ok()?),
                        text(r.get::<Vec<u8>>(4).ok()?),
                        r.get::<String>(5).ok()?,
                        r.get::<Vec<u8>>(6).ok()?.map(|b| chain::hash_text(&b)),
                    ))
                })
                .collect()
            })
            .unwrap_or_default()
    })
}

/// The first row of `rows` where the chain from `start` breaks, and why.
pub(super) fn first_break(rows: &[StoredRow], start: &str) -> Option<(i64, String)> {
    chain::first_break(
        rows.iter().map(|r| ChainRow {
            id: r.0,
            content: &r.1,
            prev_hash: &r.2,
            row_hash: &r.3,
            outcome: r.4.as_deref(),
            outcome_hash: r.5.as_deref(),
        }),
        start,
    )
}

/// The newest purge anchor (audit_purges id, anchor hash).
fn latest_anchor() -> Option<(i64, String)> {
    Spi::connect(|c| {
        c.select(
            "SELECT id, anchor_hash FROM agent_guard.audit_purges WHERE anchor_hash IS NOT NULL ORDER BY id DESC LIMIT 1",
            None,
            &[],
        )
        .ok()
        .and_then(|t| {
            let r = t.first();
            Some((r.get::<i64>(1).ok()??, r.get::<String>(2).ok()??))
        })
    })
}

/// The trail's first and last ids.
fn id_range() -> (Option<i64>, Option<i64>) {
    Spi::connect(|c| {
        c.select(
            "SELECT min(id), max(id) FROM agent_guard.audit_log",
            None,
            &[],
        )
        .ok()
        .map(|t| {
            let r = t.first();
            (
                r.get::<i64>(1).ok().flatten(),
                r.get::<i64>(2).ok().flatten(),
            )
        })
        .unwrap_or((None, None))
    })
}

fn row_hash_of(id: i64) -> Option<Option<String>> {
    Spi::connect(|c| {
        c.select(
            "SELECT agent_guard._hash_text(row_hash) FROM agent_guard.audit_log WHERE id = $1",
            None,
            &[id.into()],
        )
        .ok()
        .and_then(|t| {
            if t.is_empty() {
                None
            } else {
                Some(t.first().get::<String>(1).ok().flatten())
            }
        })
    })
}

/// The hash chain, the purge anchor it starts from, and the chain head the
/// writer keeps outside the table ([`super::head`]).
fn report() -> Report {
    // the head first: every row up to it committed before it was published,
    // so the reads below see them
    let head = super::head::current();
    let anchor = latest_anchor();
    let start = anchor
        .as_ref()
        .map_or_else(|| chain::GENESIS.to_string(), |a| a.1.clone());
    // Rows up to audit_layout.v1_last_id were written by 0.1.0 and keep its
    // formula; every row's content includes its session row's context.
    let rows = stored_chain_bytea(
        "SELECT a.id, \
                CASE WHEN a.id <= coalesce((SELECT max(l.v1_last_id) FROM agent_guard.audit_layout l), 0) \
                     THEN agent_guard._row_content_v1(a, s) ELSE agent_guard._row_content(a, s) END, \
                a.prev_hash, a.row_hash, \
                CASE WHEN a.outcome IS NOT NULL OR a.transaction_outcome IS NOT NULL \
                     THEN agent_guard._outcome_content(a) END, a.outcome_hash \
         FROM agent_guard.audit_log a \
         LEFT JOIN agent_guard.audit_sessions s ON s.id = a.session_id \
         ORDER BY a.id",
    );
    let n = rows.len() as i64;
    let first_id = rows.first().map(|r| r.0);
    let broken = first_break(&rows, &start);
    drop(rows);
    if let Some((id, why)) = broken {
        let why = if why.starts_with("row content") {
            format!("{why} (the row, or its session's context in agent_guard.audit_sessions, was changed)")
        } else {
            why
        };
        return (false, n, Some(id), Some(why));
    }
    // the anchor the chain starts from must be one purge_audit() made
    if let Some((pid, a)) = &anchor {
        // (the trail stores statement texts redacted: a hex anchor with a
        // long run of digits can read as a card number, so the row may hold
        // the redacted form of purge_audit()'s text instead)
        let rows_purged = Spi::get_one_with_args::<i64>(
            "SELECT rows_purged FROM agent_guard.audit_purges WHERE id = $1",
            &[(*pid).into()],
        )
        .ok()
        .flatten()
        .unwrap_or(-1);
        let redacted = crate::lexer::redact(&purge_text(rows_purged, Some(a)), false);
        // (or agent_guard.apply_retention()'s, issue 14.6b)
        let retention = crate::lexer::redact(&super::retention::purge_text(rows_purged, a), false);
        let named = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM agent_guard.audit_log \
                            WHERE command = 'PURGE AUDIT' \
                              AND (pg_catalog.strpos(statement_text, $1) > 0 OR statement_text = $2 \
                                   OR statement_text = $3))",
            &[a.as_str().into(), redacted.into(), retention.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !named {
            return (
                false,
                n,
                first_id,
                Some(format!(
                    "purge anchor {pid} ({a}) is named by no PURGE AUDIT row of the trail: it was not made by agent_guard.purge_audit() (rows before row {} were removed and the anchor forged)",
                    first_id.map_or("(none)".into(), |i| i.to_string())
                )),
            );
        }
    }
    if let Some(problem) = head.and_then(|h| head_problem(h, &anchor)) {
        return (false, n, Some(problem.0), Some(problem.1));
    }
    (true, n, None, None)
}

/// The trail's newest id, and row `id`'s hash if it exists, as committed now
/// (not as the statement's snapshot sees them: a REPEATABLE READ snapshot
/// can be older than the head). Only on the way to a report of removed rows.
fn committed_now(id: i64) -> (Option<i64>, Option<Option<String>>) {
    let mut max: Option<i64> = None;
    let mut at: Option<Option<String>> = None;
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"audit_log".as_ptr(), ns);
        if ns == pg_sys::InvalidOid || relid == pg_sys::InvalidOid {
            return (None, None);
        }
        let hash_col = pg_sys::get_attnum(relid, c"row_hash".as_ptr());
        // (its partitions: issue 14.6b)
        for leaf in super::retention::leaves(relid) {
            let hash_col = match leaf == relid {
                true => hash_col,
                false => pg_sys::get_attnum(leaf, c"row_hash".as_ptr()),
            };
            crate::catalog::try_scan_table(leaf, |t| {
                let Some(i) = t.int8(1) else { return };
                max = Some(max.map_or(i, |m| m.max(i)));
                if i == id {
                    at = Some(
                        (hash_col > 0)
                            .then(|| t.bytea(hash_col))
                            .flatten()
                            .map(|b| chain::hash_text(&b)),
                    );
                }
            });
        }
    }
    (max, at)
}

/// What the writer's chain head says about the trail, if anything is wrong.
fn head_problem(
    (h, source, odd): (
        super::head::Head,
        super::head::Source,
        Option<super::head::Head>,
    ),
    anchor: &Option<(i64, String)>,
) -> Option<(i64, String)> {
    let from = match source {
        super::head::Source::SharedMemory => "the running server's chain head",
        super::head::Source::File => "the chain head file",
    };
    let when = super::head::timestamp_text(h.at);
    match row_hash_of(h.id) {
        Some(rh) if rh.as_deref() != Some(h.hash.as_str()) => {
            return Some((
                h.id,
                format!(
                    "row {} has hash {}, but the writer committed it with hash {} at {when} ({from}): the chain was recomputed",
                    h.id,
                    rh.unwrap_or_default(),
                    h.hash
                ),
            ));
        }
        Some(_) => {}
        None if committed_now(h.id).1.is_some() => {
            // committed after this transaction's snapshot (REPEATABLE READ)
        }
        None => {
            let (min, max) = id_range();
            let max = max.max(committed_now(h.id).0);
            let purged_past = match (min, anchor) {
                // rows before the anchor were removed by a purge_audit() the chain names
                (Some(min), Some(_)) => h.id < min,
                // everything purged: the anchor is the head
                (None, Some((_, a))) => *a == h.hash,
                _ => false,
            };
            if !purged_past {
                let ends = max.map_or("the trail is empty".to_string(), |m| {
                    format!("the trail ends at row {m}")
                });
                let what = if max.is_some_and(|m| m > h.id) {
                    "the row is missing"
                } else {
                    "rows were removed from its end"
                };
                return Some((
                    h.id,
                    format!(
                        "{ends}, but the writer committed row {} with hash {} at {when} ({from}): {what}",
                        h.id, h.hash
                    ),
                ));
            }
        }
    }
    if let Some(f) = odd {
        return Some((
            f.id,
            format!(
                "the chain head file names row {} with hash {}, which the running server's head (row {}, {}) does not: the file was rewritten",
                f.id, f.hash, h.id, h.hash
            ),
        ));
    }
    None
}

/// The trail's chain head for an external system to keep: the newest row
/// the writer committed (from shared memory or the head file), else the
/// table's newest row.
#[pg_extern]
fn audit_anchor() -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(hash, String),
        name!(at, pgrx::datum::TimestampWithTimeZone),
        name!(database, String),
    ),
> {
    crate::search_path::pinned(|| {
        let db = crate::identity::database_name();
        let head = super::head::current().map(|(h, _, _)| (h.id, h.hash, h.at));
        let head = head.or_else(|| {
            Spi::connect(|c| {
                c.select(
                    "SELECT id, agent_guard._hash_text(row_hash) FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1",
                    None,
                    &[],
                )
                .ok()
                .and_then(|t| {
                    let r = t.first();
                    Some((r.get::<i64>(1).ok()??, r.get::<String>(2).ok()??, unsafe {
                        pg_sys::GetCurrentTimestamp()
                    }))
                })
            })
        });
        let rows: Vec<_> = head
            .into_iter()
            .filter_map(|(id, hash, at)| {
                let at = pgrx::datum::TimestampWithTimeZone::try_from(at).ok()?;
                Some((id, hash, at, db.clone()))
            })
            .collect();
        TableIterator::new(rows)
    })
}

/// Whether the trail still holds, and verifiably extends, an anchor taken
/// earlier with audit_anchor(): its row is there with its hash (or was
/// purged by purge_audit()) and verify_audit() finds nothing wrong.
#[pg_extern]
fn verify_audit_anchor(
    anchor_id: i64,
    anchor_hash: &str,
) -> TableIterator<'static, (name!(holds, bool), name!(problem, Option<String>))> {
    let r = crate::search_path::pinned(|| anchor_report(anchor_id, anchor_hash));
    TableIterator::new(std::iter::once(r))
}

fn anchor_report(id: i64, hash: &str) -> (bool, Option<String>) {
    let (intact, _, _, problem) = report();
    if !intact {
        return (false, problem);
    }
    match row_hash_of(id) {
        Some(rh) if rh.as_deref() == Some(hash) => (true, None),
        Some(rh) => (
            false,
            Some(format!(
                "row {id} has hash {}, not the anchor's {hash}: the trail was rewritten since the anchor was taken",
                rh.unwrap_or_default()
            )),
        ),
        None => {
            let (min, max) = id_range();
            let anchor = latest_anchor();
            match (min, max) {
                (Some(min), _) if id < min && anchor.is_some() => (
                    true,
                    Some(format!(
                        "row {id} was removed by agent_guard.purge_audit(); the trail continues from its purge anchor"
                    )),
                ),
                (None, _) if anchor.as_ref().is_some_and(|a| a.1 == hash) => (
                    true,
                    Some("the trail was purged up to this anchor".to_string()),
                ),
                (_, Some(max)) if id < max => (
                    false,
                    Some(format!("row {id} of the anchor is missing from the trail")),
                ),
                (_, max) => (
                    false,
                    Some(format!(
                        "{}, before the anchor's row {id}: rows were removed from its end",
                        max.map_or("the trail is empty".to_string(), |m| format!(
                            "the trail ends at row {m}"
                        ))
                    )),
                ),
            }
        }
    }
}

/// Refuse (42501) what only a superuser who is not an agent may do: `action`
/// ("purge the audit trail").
pub(super) fn refuse_unless_superuser(action: &str) {
    if crate::identity::current_agent().is_some() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("agent sessions may not {action}")
        );
    }
    if !unsafe { pg_sys::superuser() } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("only superusers may {action}")
        );
    }
}

/// Remove audit rows older than `older_than` (a prefix of the chain), record
/// the purge, and keep the rest verifiable. Superusers only; never agents.
#[pg_extern]
fn purge_audit(older_than: pgrx::datum::TimestampWithTimeZone) -> i64 {
    refuse_unless_superuser("purge the audit trail");
    let result = super::worker::as_writer(|| {
        crate::search_path::pinned(|| {
            Spi::connect_mut(|c| {
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
                        .update("SELECT agent_guard._hash_text(prev_hash) FROM agent_guard.audit_log WHERE id = $1", None, &[id.into()])
                        .ok()
                        .and_then(|t| t.first().get::<String>(1).ok().flatten());
                        let d = c
                            .update(
                                "DELETE FROM agent_guard.audit_log WHERE id < $1",
                                None,
                                &[id.into()],
                            )
                            .map(|t| t.len() as i64)
                            .unwrap_or(0);
                        (d, anchor)
                    }
                    None => {
                        let anchor = c
                        .update("SELECT agent_guard._hash_text(row_hash) FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1", None, &[])
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
                &[older_than.into(), deleted.into(), anchor.clone().into()],
            )
            .expect("agent_guard: cannot record the purge");
                (deleted, anchor)
            })
        })
    });
    let (result, anchor) = result;
    // The trail's own row names the anchor: verify_audit() accepts an
    // anchor only if a PURGE AUDIT row of the chain names it (one inserted
    // into audit_purges by hand, triggers disabled, is named by none).
    super::record_admin_event("PURGE AUDIT", &purge_text(result, anchor.as_deref()));
    result
}

/// The text of the trail's PURGE AUDIT row (verify_audit() looks for it).
fn purge_text(rows: i64, anchor: Option<&str>) -> String {
    format!(
        "agent_guard.purge_audit() removed {rows} rows; the trail continues from anchor {}",
        anchor.unwrap_or("(none)")
    )
}
