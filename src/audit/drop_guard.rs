//! `DROP EXTENSION agent_guard` destroys the audit trail, so it needs an
//! explicit, recorded confirmation while the trail holds rows (issue 14.4).
//!
//! Every route that drops the trail (`DROP EXTENSION`, `DROP SCHEMA
//! agent_guard CASCADE`, `DROP OWNED BY` the extension's owner, `DROP TABLE`
//! after `ALTER EXTENSION agent_guard DROP TABLE agent_guard.audit_log`)
//! reaches the object-access hook with `OAT_DROP` on `agent_guard.audit_log`
//! while the table still exists (the C trampoline calls
//! [`ag_rs_relation_drop`] for `pg_class` objects). The extension's own
//! `OAT_DROP` is no place for the check: PostgreSQL deletes an extension's
//! members first, so the table is gone by then.
//! There, when `agent_guard.audit_log` holds rows, the drop goes ahead only if
//! a superuser set `agent_guard.confirm_drop_trail` to the database's name in
//! the same transaction (the setting's assign hook remembers the local
//! transaction it was set in; a value from an earlier transaction, a role or
//! database setting or postgresql.conf does not count). Otherwise it is
//! refused with SQLSTATE 42501 and a HINT. A confirmed drop is written to the
//! server log: who, when, how many rows, the last id and its hash.
//!
//! `DROP DATABASE` takes the trail with everything else in the database;
//! it needs no confirmation (nothing is left whose history could be hidden),
//! but it is never silent: when the database's writer ever committed a row,
//! the drop is logged with the chain head the writer left (last id and hash,
//! [`super::head`]), and once it commits the head's shared-memory entry and
//! file are removed (a later database with the same OID starts afresh).
//!
//! Agents never get here: dropping an extension is `admin` for them; an agent
//! session that did would be refused too. Reads here are catalog-level scans
//! of agent_guard's own table (which the dropping transaction already holds
//! exclusively), never SQL, so nothing but agent_guard's own refusal can be
//! raised in a human session.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;

/// `agent_guard.confirm_drop_trail` (PGC_SUSET).
static mut CONFIRM: *mut c_char = ptr::null_mut();
/// The local transaction in which the setting got its current non-empty value.
static mut CONFIRMED_IN: u32 = 0;

fn current_lxid() -> u32 {
    unsafe {
        if pg_sys::MyProc.is_null() {
            return 0;
        }
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
        {
            (*pg_sys::MyProc).lxid
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16")))]
        {
            (*pg_sys::MyProc).vxid.lxid
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_confirm(newval: *const c_char, _extra: *mut c_void) {
    let set = !newval.is_null() && unsafe { *newval } != 0;
    let in_xact = unsafe { pg_sys::IsTransactionState() };
    unsafe { CONFIRMED_IN = if set && in_xact { current_lxid() } else { 0 } };
}

/// Define the setting (from `_PG_init`).
pub fn init() {
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"agent_guard.confirm_drop_trail".as_ptr(),
            c"Confirms DROP EXTENSION agent_guard while the audit trail holds rows: the database's name, set in the dropping transaction.".as_ptr(),
            ptr::null(),
            &raw mut CONFIRM,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            0,
            None,
            Some(assign_confirm),
            None,
        );
    }
}

/// A line for the server log only: the dropping session is a human's, and
/// its client sees what PostgreSQL alone would show (also with
/// `client_min_messages = log`).
fn server_log(msg: String) {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        msg,
        "agent_guard",
    )
    .report(PgLogLevel::LOG_SERVER_ONLY);
}

fn cstr(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Rows of `agent_guard.audit_log` and its newest row (id, row_hash).
/// (Of every partition when it is partitioned, issue 14.6b.)
fn trail_summary(relid: pg_sys::Oid) -> (i64, Option<(i64, Option<String>)>) {
    let mut rows = 0i64;
    let mut last: Option<(i64, Option<String>)> = None;
    for leaf in crate::audit::retention::leaves(relid) {
        let hash_col = unsafe { pg_sys::get_attnum(leaf, c"row_hash".as_ptr()) };
        crate::catalog::try_scan_table(leaf, |t| {
            rows += 1;
            let id = t.int8(1).unwrap_or(0);
            if last.as_ref().is_none_or(|(l, _)| id > *l) {
                let h = (hash_col > 0)
                    .then(|| t.bytea(hash_col))
                    .flatten()
                    .map(|b| agent_guard_core::chain::hash_text(&b));
                last = Some((id, h));
            }
        });
    }
    (rows, last)
}

thread_local! {
    /// Rows and newest row of the trail's partitions dropped (confirmed) in
    /// the local transaction: (local transaction, rows, newest).
    static DROPPED: std::cell::RefCell<(u32, i64, Option<(i64, Option<String>)>)> =
        const { std::cell::RefCell::new((0, 0, None)) };
}

fn remember_partition(rows: i64, last: &Option<(i64, Option<String>)>) {
    let lxid = current_lxid();
    DROPPED.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != lxid {
            *d = (lxid, 0, None);
        }
        d.1 += rows;
        if last
            .as_ref()
            .is_some_and(|(i, _)| d.2.as_ref().is_none_or(|(m, _)| i > m))
        {
            d.2 = last.clone();
        }
    });
}

fn dropped_partitions() -> (i64, Option<(i64, Option<String>)>) {
    let lxid = current_lxid();
    DROPPED.with(|d| {
        let d = d.borrow();
        if d.0 == lxid && lxid != 0 {
            (d.1, d.2.clone())
        } else {
            (0, None)
        }
    })
}

/// The object-access hook saw `DROP` of relation `relid` (any route: the
/// trampoline calls this for every `pg_class` object; only
/// `agent_guard.audit_log` matters). PostgreSQL drops an extension's member
/// objects before the extension itself, so by the time the extension's own
/// `OAT_DROP` arrives the table is gone: the table's drop is the one place
/// where the trail can still be counted and the drop refused.
/// The database whose `DROP DATABASE` is running (its head is forgotten
/// when the transaction commits).
static mut DROPPED_DB: u32 = 0;
static mut XACT_CALLBACK: bool = false;

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    if !matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT) {
        return;
    }
    let db = unsafe { std::mem::replace(&mut *(&raw mut DROPPED_DB), 0) };
    if db != 0 && event == XACT_EVENT_COMMIT {
        super::head::forget(db);
    }
}

/// The object-access hook saw `DROP DATABASE` of `dboid` (see the module
/// comment): log the head of the trail it takes along.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn ag_rs_database_drop(dboid: pg_sys::Oid) {
    if crate::hooks::is_own_worker() {
        return;
    }
    let db = dboid.to_u32();
    let Some(head) = super::head::of_database(db) else {
        return;
    };
    unsafe {
        if !XACT_CALLBACK {
            pg_sys::RegisterXactCallback(Some(on_xact), ptr::null_mut());
            XACT_CALLBACK = true;
        }
        DROPPED_DB = db;
        let name = cstr(pg_sys::get_database_name(dboid)).unwrap_or_else(|| db.to_string());
        let who =
            cstr(pg_sys::GetUserNameFromId(pg_sys::GetSessionUserId(), true)).unwrap_or_default();
        server_log(format!(
            "agent_guard: audit trail of database \"{name}\" (oid {db}) dropped with the database by {who} \
             (takes effect if DROP DATABASE commits): chain head id {}, hash {}, written at {}",
            head.id,
            head.hash,
            super::head::timestamp_text(head.at)
        ));
    }
}

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn ag_rs_relation_drop(relid: pg_sys::Oid) {
    if crate::hooks::is_own_worker() {
        return;
    }
    unsafe {
        // a partition of the trail (issue 14.6b) counts as the trail, but
        // for agent_guard.apply_retention()'s own drops of expired ones
        let partition = pg_sys::get_rel_relispartition(relid)
            && crate::audit::retention::is_trail_partition(relid);
        if partition && crate::audit::retention::retention_drop(relid) {
            return;
        }
        let rel_name = cstr(pg_sys::get_rel_name(relid)).unwrap_or_default();
        if !partition && rel_name != "audit_log" {
            return;
        }
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        if !partition && (ns == pg_sys::InvalidOid || pg_sys::get_rel_namespace(relid) != ns) {
            return;
        }
        // dropped as a member of the extension (DROP EXTENSION, DROP SCHEMA
        // CASCADE, DROP OWNED) or on its own after ALTER EXTENSION … DROP TABLE
        let with_extension =
            pg_sys::getExtensionOfObject(pg_sys::RelationRelationId, relid) != pg_sys::InvalidOid;
        let (mut rows, mut last) = trail_summary(relid);
        if !partition {
            // PostgreSQL drops the partitions first: their rows count here
            let (n, l) = dropped_partitions();
            rows += n;
            if l.as_ref()
                .is_some_and(|(i, _)| last.as_ref().is_none_or(|(m, _)| i > m))
            {
                last = l;
            }
        }
        if rows == 0 {
            return;
        }
        let db = crate::identity::database_name();
        let who =
            cstr(pg_sys::GetUserNameFromId(pg_sys::GetSessionUserId(), true)).unwrap_or_default();
        let (last_id, last_hash) = match &last {
            Some((id, h)) => (*id, h.clone().unwrap_or_else(|| "(none)".into())),
            None => (0, "(none)".into()),
        };
        let value = cstr(CONFIRM).unwrap_or_default();
        let lxid = current_lxid();
        let confirmed = !crate::identity::cached_is_agent()
            && pg_sys::superuser()
            && value == db
            && CONFIRMED_IN != 0
            && CONFIRMED_IN == lxid;
        if !confirmed {
            let why = if crate::identity::cached_is_agent() {
                "agent sessions may never drop it".to_string()
            } else if value.is_empty() {
                "agent_guard.confirm_drop_trail is not set".to_string()
            } else if value != db {
                format!("agent_guard.confirm_drop_trail is \"{value}\", not this database's name")
            } else {
                "agent_guard.confirm_drop_trail was not set in this transaction".to_string()
            };
            let what = if partition {
                format!("table {rel_name} (a partition of agent_guard.audit_log)")
            } else if with_extension {
                "extension agent_guard".to_string()
            } else {
                "table agent_guard.audit_log".to_string()
            };
            crate::audit::mark_refusing();
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "dropping {what} would destroy the audit trail of database \"{db}\" ({rows} rows)"
                ),
                "agent_guard",
            )
            .set_detail(format!(
                "The trail ends at row {last_id} with hash {last_hash}; {why}."
            ))
            .set_hint(format!(
                "{}Export the trail first (agent_guard.audit_export()), then, as a superuser, in one transaction: \
                 BEGIN; SET LOCAL agent_guard.confirm_drop_trail = '{db}'; DROP EXTENSION agent_guard; COMMIT;",
                if partition {
                    "Expired partitions are dropped by agent_guard.apply_retention() (agent_guard.audit_retention). "
                } else {
                    ""
                }
            ))
            .report(PgLogLevel::ERROR);
            unreachable!("ERROR does not return");
        }
        if partition {
            remember_partition(rows, &last);
        }
        let how = if partition {
            "(a partition of agent_guard.audit_log)"
        } else if with_extension {
            "with the extension"
        } else {
            "(table agent_guard.audit_log on its own)"
        };
        let at =
            cstr(pg_sys::timestamptz_to_str(pg_sys::GetCurrentTimestamp())).unwrap_or_default();
        server_log(format!(
            "agent_guard: audit trail of database \"{db}\" dropped {how} by {who} at {at} \
             (confirmed with agent_guard.confirm_drop_trail; takes effect if the transaction commits): \
             {rows} rows, last id {last_id}, last hash {last_hash}"
        ));
    }
}
