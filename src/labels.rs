//! The `agent_guard` security-label provider and the sensitive-column cache.
//!
//! Column labels (`SENSITIVE`) live in `pg_seclabel`, survive pg_dump and
//! follow the column through renames. Role labels record agent registrations
//! and may only be written by `agent_guard.register_agent()`.

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
        if !REGISTRY_WRITE.with(|w| w.get()) {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "agent_guard role labels are managed by agent_guard.register_agent() and agent_guard.unregister_agent()"
            );
        }
        if let Some(l) = &label {
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
    let cols = Rc::new(load());
    SENSITIVE.with(|s| *s.borrow_mut() = Some((generation, cols.clone())));
    cols
}
