//! The `agent_guard` security-label provider and the sensitive-column cache.
//!
//! Column labels (`SENSITIVE`) live in `pg_seclabel`, survive pg_dump and
//! follow the column through renames. Role labels record agent registrations
//! and are written by `agent_guard.register_agent()`; the one other writer is
//! a superuser restoring a dump (`pg_dumpall --roles-only` emits
//! `SECURITY LABEL FOR agent_guard ON ROLE … IS 'AGENT SPONSOR "…" KIND …'`),
//! whose label is accepted when it is well formed: it can only make a role an
//! agent, never the reverse (removing a registration takes
//! `agent_guard.unregister_agent()`).

use agent_guard_core::label::parse_agent_label;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

thread_local! {
    /// Set while register_agent()/unregister_agent() write a role label.
    static REGISTRY_WRITE: Cell<bool> = const { Cell::new(false) };
    static SENSITIVE: RefCell<Option<(u64, Rc<SensitiveColumns>)>> = const { RefCell::new(None) };
}

/// Allow role labels to be written while `f` runs.
pub fn with_registry_write<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    REGISTRY_WRITE.with(|w| w.set(true));
    pgrx::PgTryBuilder::new(f)
        .finally(|| REGISTRY_WRITE.with(|w| w.set(false)))
        .execute()
}

#[pg_guard]
unsafe extern "C-unwind" fn check_relabel(
    object: *const pg_sys::ObjectAddress,
    seclabel: *const std::ffi::c_char,
) {
    let (class_id, object_id, sub_id) =
        unsafe { ((*object).classId, (*object).objectId, (*object).objectSubId) };
    let label = if seclabel.is_null() {
        None
    } else {
        Some(
            unsafe { CStr::from_ptr(seclabel) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    if class_id == pg_sys::RelationRelationId && sub_id > 0 {
        if let Some(l) = &label {
            // grammar, mask expression (from its parse tree), relation kind
            crate::masking::label::check_column_label(object_id, sub_id, l);
        }
        // Plans reading the relation are made again with the new masks.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(object_id) };
    } else if class_id == pg_sys::AuthIdRelationId {
        // hot standbys learn of it from this invalidation (see crate::shmem)
        crate::shmem::invalidate_replicas(pg_sys::Oid::from(crate::catalog::SHARED_SECLABEL));
        if !REGISTRY_WRITE.with(|w| w.get()) {
            check_restored_role_label(object_id, label.as_deref());
        } else if let Some(l) = &label {
            if let Err(e) = parse_agent_label(l) {
                error!("{e}");
            }
        }
    } else {
        let _ = object_id;
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "agent_guard security labels apply to table columns only"
        );
    }
    crate::shmem::bump_at_commit();
}

/// A role label written directly (not by register_agent()): accepted from a
/// superuser in a human session when well formed and its sponsor is not the
/// role itself, as a restore writes it. A sponsor that does not exist (yet:
/// pg_dumpall emits roles alphabetically) leaves the agent orphaned, so
/// refused, until a role of that name exists; the restoring session is told.
fn check_restored_role_label(role: pg_sys::Oid, label: Option<&str>) {
    let managed = "agent_guard role labels are managed by agent_guard.register_agent() and agent_guard.unregister_agent()";
    let refuse = |hint: &str| -> ! {
        report(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            managed.into(),
            hint,
        );
        unreachable!("ERROR does not return")
    };
    if crate::identity::current_agent().is_some() {
        refuse("Agent sessions may not change the agent registry.");
    }
    let Some(label) = label else {
        refuse("To remove a registration, run SELECT agent_guard.unregister_agent('<role>');");
    };
    if !unsafe { pg_sys::superuser() } {
        refuse("Only a superuser may write an agent label directly (to restore pg_dumpall output); otherwise use agent_guard.register_agent().");
    }
    let parsed = parse_agent_label(label).unwrap_or_else(|e| error!("{e}"));
    let role_name = crate::identity::role_name(role);
    if parsed.sponsor_name == role_name {
        error!("an agent cannot sponsor itself (role \"{role_name}\")");
    }
    if crate::identity::resolve_sponsor(&parsed) == pg_sys::InvalidOid {
        report(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "sponsor \"{}\" of agent \"{role_name}\" does not exist (yet)",
                parsed.sponsor_name
            ),
            "Until a role of that name exists the agent is refused as orphaned. After a restore, SELECT * FROM agent_guard.repair_registry(); re-writes the labels for this cluster.",
        );
    }
}

fn report(level: PgLogLevel, code: PgSqlErrorCode, message: String, hint: &str) {
    pgrx::pg_sys::panic::ErrorReport::new(code, message, "agent_guard")
        .set_hint(hint.to_string())
        .report(level);
}

pub fn register_provider() {
    unsafe { pg_sys::register_label_provider(c"agent_guard".as_ptr(), Some(check_relabel)) }
}

/// Sensitive columns of this database: relation OID -> (attnum, qualified column name).
#[derive(Clone, Debug, Default)]
pub struct SensitiveColumns {
    by_rel: HashMap<u32, Vec<(i16, String)>>,
}

impl SensitiveColumns {
    pub fn of_relation(&self, relid: pg_sys::Oid) -> Option<&[(i16, String)]> {
        self.by_rel.get(&relid.to_u32()).map(Vec::as_slice)
    }
}

/// agent_guard's column labels in this database: (relation, attnum, label).
/// A scan of `pg_seclabel` with the catalog snapshot (no query; see
/// [`crate::catalog`]); labels of dropped columns are left out.
pub fn column_labels() -> Vec<(pg_sys::Oid, i16, String)> {
    use crate::catalog::{col, scan, Key};
    let mut out = vec![];
    // The index leads with objoid; all of agent_guard's column labels are wanted.
    scan(
        pg_sys::SecLabelRelationId.to_u32(),
        None,
        &[Key::oid(col::SECLABEL_CLASSOID, pg_sys::RelationRelationId)],
        |t| {
            let sub = t.int4(col::SECLABEL_OBJSUBID);
            if sub > 0 && t.text(col::SECLABEL_PROVIDER).as_deref() == Some("agent_guard") {
                if let Some(label) = t.text(col::SECLABEL_LABEL) {
                    out.push((t.oid(col::SECLABEL_OBJOID), sub as i16, label));
                }
            }
        },
    );
    out.retain(|(rel, attnum, _)| crate::catalog::attribute(*rel, *attnum).is_some());
    out
}

fn load() -> SensitiveColumns {
    let mut by_rel: HashMap<u32, Vec<(i16, String)>> = HashMap::new();
    if !crate::identity::extension_installed() {
        return SensitiveColumns { by_rel };
    }
    for (oid, attnum, _) in column_labels() {
        let Some(att) = crate::catalog::attribute(oid, attnum) else {
            continue;
        };
        let rel = crate::extract::relation(oid);
        // as quote_ident() quotes: PostgreSQL's quote_identifier
        let q = crate::masking::quote_identifier;
        let name = format!("{}.{}.{}", q(&rel.schema), q(&rel.name), q(&att.name));
        by_rel.entry(oid.to_u32()).or_default().push((attnum, name));
    }
    SensitiveColumns { by_rel }
}

/// The sensitive columns, re-read when the generation moved.
pub fn sensitive_columns() -> Rc<SensitiveColumns> {
    let generation = crate::shmem::generation();
    let cached = SENSITIVE.with(|s| {
        s.borrow()
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, cols)| cols.clone())
    });
    if let Some(cols) = cached {
        return cols;
    }
    if !unsafe { pg_sys::IsTransactionState() } || crate::identity::in_internal() {
        return SENSITIVE.with(|s| {
            s.borrow()
                .as_ref()
                .map(|(_, c)| c.clone())
                .unwrap_or_default()
        });
    }
    crate::shmem::catch_up();
    let cols = Rc::new(load());
    SENSITIVE.with(|s| *s.borrow_mut() = Some((generation, cols.clone())));
    cols
}
