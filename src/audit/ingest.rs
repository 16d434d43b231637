//! The primary's side of forwarding (see [`super::forward`]): hot standbys
//! call `agent_guard.ingest_forwarded()` to record their agents' statements
//! in `agent_guard.audit_forwarded`, a hash chain per source; and
//! `agent_guard.verify_forwarded(source)` checks one source's chain.
//!
//! `ingest_forwarded` checks the caller and lets its writes past the tables'
//! append-only triggers (as the audit writer's own); the events are applied by
//! the SQL function `agent_guard._ingest_forwarded` (`sql/forward.sql`).
//! SECURITY DEFINER, executable by `agent_guard_forwarder` only (set in SQL).

use agent_guard_core::chain;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Record a batch of a hot standby's audit events; returns the rows added
/// (0 when every statement was already recorded: a retry).
#[pg_extern]
fn ingest_forwarded(source: &str, system_identifier: &str, events: JsonB) -> i64 {
    if crate::identity::current_agent().is_some() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "agent sessions may not write the audit trail"
        );
    }
    if source.is_empty() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "agent_guard: a forwarded record needs a source name"
        );
    }
    let own = unsafe { pg_sys::GetSystemIdentifier() }.to_string();
    if system_identifier != own {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("agent_guard: source \"{source}\" is not a standby of this server (system identifier {system_identifier}, this server's is {own})"),
            "Point agent_guard.forward_conninfo on the standby at the primary it replicates from."
        );
    }
    // the purge rows of a source's chain are purge_forwarded()'s alone
    let forged_purge = events.0.as_array().is_some_and(|es| {
        es.iter().any(|e| {
            e["sk"].as_str() == Some(PURGE_SESSION) || e["cmd"].as_str() == Some("PURGE AUDIT")
        })
    });
    if forged_purge {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("agent_guard: source \"{source}\" may not forward PURGE AUDIT records"),
            "Only agent_guard.purge_forwarded() on this server records purges of forwarded records."
        );
    }
    let source = source.to_string();
    let sysid = system_identifier.to_string();
    super::worker::as_writer(move || {
        crate::search_path::pinned(move || {
            Spi::get_one_with_args::<i64>(
                "SELECT agent_guard._ingest_forwarded($1, $2, $3)",
                &[source.as_str().into(), sysid.as_str().into(), events.into()],
            )
        })
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot record the forwarded events: {e}"))
    .unwrap_or(0)
}

/// The session key of the rows purge_forwarded() adds to a source's chain
/// (`_purge_forwarded` in sql/forward.sql); never one a standby sends.
const PURGE_SESSION: &str = "agent_guard-purge";

/// Remove forwarded records that started before `older_than` (superuser
/// only), each source's oldest first; each source's chain records the purge
/// and the anchor it continues from (see `_purge_forwarded` in
/// `sql/forward.sql`). Returns the rows removed.
#[pg_extern]
fn purge_forwarded(older_than: pgrx::datum::TimestampWithTimeZone) -> i64 {
    super::functions::refuse_unless_superuser("purge the audit trail");
    super::worker::as_writer(move || {
        crate::search_path::pinned(move || {
            Spi::get_one_with_args::<i64>(
                "SELECT agent_guard._purge_forwarded($1)",
                &[older_than.into()],
            )
        })
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot purge the forwarded records: {e}"))
    .unwrap_or(0)
}

/// Whether the hash chain of `source`'s forwarded records is intact (also
/// against the head kept in `agent_guard.forward_sources`), and if not, the
/// first row where it breaks.
#[pg_extern]
fn verify_forwarded(
    source: &str,
) -> TableIterator<
    'static,
    (
        name!(intact, bool),
        name!(rows_checked, i64),
        name!(first_broken_id, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let source = source.to_string();
    crate::search_path::pinned(move || verify(&source))
}

fn verify(
    source: &str,
) -> TableIterator<
    'static,
    (
        name!(intact, bool),
        name!(rows_checked, i64),
        name!(first_broken_id, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let rows = super::functions::stored_chain(
        "SELECT a.id, agent_guard._forwarded_content(a), coalesce(a.prev_hash, ''), coalesce(a.row_hash, ''), \
                CASE WHEN a.outcome IS NOT NULL OR a.transaction_outcome IS NOT NULL \
                     THEN agent_guard._forwarded_outcome(a) END, a.outcome_hash \
         FROM agent_guard.audit_forwarded a WHERE a.source = $1 ORDER BY a.id",
        &[source.into()],
    );
    let head: Option<(String, i64, Option<String>)> = Spi::connect(|c| {
        c.select(
            "SELECT s.head_hash, s.rows_received OPERATOR(pg_catalog.-) s.purged_rows, s.purge_anchor \
             FROM agent_guard.forward_sources s WHERE s.source = $1",
            None,
            &[source.into()],
        )
        .ok()
        .and_then(|t| {
            let r = t.first();
            Some((
                r.get::<String>(1).ok()??,
                r.get::<i64>(2).ok()??,
                r.get::<String>(3).ok()?,
            ))
        })
    });
    let n = rows.len() as i64;
    // after a purge the chain continues from its anchor, which a PURGE
    // AUDIT row of the chain itself must name (an anchor written into
    // forward_sources by hand names none)
    let anchor = head.as_ref().and_then(|h| h.2.clone());
    let start = anchor.as_deref().unwrap_or(chain::GENESIS);
    let forged = anchor.as_deref().and_then(|a| {
        // a row purge_forwarded() wrote (its session key, which standbys
        // cannot send), whose text ends with the anchor
        let named = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM agent_guard.audit_forwarded a \
              WHERE a.source = $1 AND a.session_key = $2 AND a.command = 'PURGE AUDIT' \
                AND pg_catalog.right(a.statement_text, pg_catalog.length($3)) = $3)",
            &[source.into(), PURGE_SESSION.into(), format!("; the chain continues from anchor {a}").into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        (!named).then(|| {
            (
                rows.first().map_or(0, |r| r.0),
                format!("the purge anchor {a} in agent_guard.forward_sources is named by no PURGE AUDIT row of the chain"),
            )
        })
    });
    let head = head.map(|(h, count, _)| (h, count));
    let broken = forged.or_else(|| super::functions::first_break(&rows, start)).or_else(|| {
        let last = rows.last().map_or(chain::GENESIS, |r| r.3.as_str());
        match &head {
            None if rows.is_empty() => None,
            None => Some((
                rows[0].0,
                "the source is missing from agent_guard.forward_sources".into(),
            )),
            Some((h, _)) if h != last => Some((
                rows.last().map_or(0, |r| r.0),
                "the chain ends before the head recorded in agent_guard.forward_sources (newest rows were removed)".into(),
            )),
            Some((_, count)) if *count != n => Some((
                rows.last().map_or(0, |r| r.0),
                format!("{count} rows were received, {n} are left"),
            )),
            _ => None,
        }
    });
    let row = match broken {
        None => (true, n, None, None),
        Some((id, why)) => (false, n, Some(id), Some(why)),
    };
    TableIterator::new(std::iter::once(row))
}
