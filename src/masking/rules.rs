//! The masking rules of this database, cached per backend.
//!
//! Computed from the catalog by effective.rs (labels, inherited by partitions
//! and inheritance children, with each relation's masking view; materialized
//! views built from masked columns) — the same definition the views
//! `agent_guard.masking_rules` and `agent_guard.masking_taints` show, but
//! without running a query in the hooks that need it — and re-read only
//! when the shared generation counter moved
//! (labels, masking views and registrations bump it at commit). A few catalog
//! columns are masked for agents without any label: the value samples of
//! planner statistics (`pg_statistic`, `pg_statistic_ext_data`, which
//! `pg_stats` shows) and agent_guard's own hashing key.
//!
//! When the rules of an agent session change, its cached plans are reset so
//! that prepared statements are planned again with the current masks.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// How one relation is masked.
#[derive(Clone, Debug, Default)]
pub struct MaskedRelation {
    /// The generated masking view (`agent_guard_masked`), for labelled relations.
    pub view: Option<pg_sys::Oid>,
    /// Masked columns: attnum and label.
    pub columns: Vec<(i16, String)>,
    /// A built-in rule: the masked columns read as NULL, no view.
    pub builtin: bool,
    /// Masked columns without a label of their own: inherited from a parent
    /// (attnum, the ancestor) or computed from a labelled column (generated).
    pub inherited: Vec<(i16, pg_sys::Oid)>,
    pub generated: Vec<i16>,
}

impl MaskedRelation {
    pub fn masks(&self, attnum: i16) -> bool {
        self.columns.iter().any(|(a, _)| *a == attnum)
    }
}

/// Every masking rule of the database.
#[derive(Debug, Default)]
pub struct Rules {
    relations: HashMap<u32, MaskedRelation>,
    /// Materialized views built from masked columns, with no labels of their own.
    tainted: HashMap<u32, String>,
    /// Every materialized view built from masked columns (labelled or not).
    built_from_masked: HashMap<u32, String>,
    /// TOAST tables of masked relations.
    toast: HashMap<u32, u32>,
    /// Relations whose partitions or inheritance children mask columns the
    /// relation itself does not (reads through it cannot apply those masks).
    children_mask_more: std::collections::HashSet<u32>,
    /// Relation names, for messages.
    names: HashMap<u32, String>,
}

impl Rules {
    pub fn relation(&self, relid: pg_sys::Oid) -> Option<&MaskedRelation> {
        self.relations.get(&relid.to_u32())
    }

    pub fn tainted(&self, relid: pg_sys::Oid) -> Option<&str> {
        self.tainted.get(&relid.to_u32()).map(String::as_str)
    }

    /// The masked columns a materialized view is computed from, if any.
    pub fn built_from_masked(&self, relid: pg_sys::Oid) -> Option<&str> {
        self.built_from_masked
            .get(&relid.to_u32())
            .map(String::as_str)
    }

    /// The masked relation whose TOAST table this is.
    pub fn toast_owner(&self, relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
        self.toast
            .get(&relid.to_u32())
            .map(|o| pg_sys::Oid::from(*o))
    }

    /// Partitions or children of `relid` mask columns that `relid` does not.
    pub fn children_mask_more(&self, relid: pg_sys::Oid) -> bool {
        self.children_mask_more.contains(&relid.to_u32())
    }

    pub fn label_of(&self, relid: pg_sys::Oid, attnum: i16) -> Option<String> {
        self.relation(relid)?
            .columns
            .iter()
            .find(|(a, _)| *a == attnum)
            .map(|(_, l)| l.clone())
    }

    pub fn name(&self, relid: pg_sys::Oid) -> String {
        self.names
            .get(&relid.to_u32())
            .cloned()
            .unwrap_or_else(|| crate::extract::relation(relid).qualified())
    }

    /// Labelled relations and their views (for the sync and the DROP handling).
    pub fn labelled(&self) -> impl Iterator<Item = (pg_sys::Oid, &MaskedRelation)> {
        self.relations
            .iter()
            .filter(|(_, m)| !m.builtin)
            .map(|(o, m)| (pg_sys::Oid::from(*o), m))
    }
}

thread_local! {
    static CACHE: RefCell<Option<(u64, Rc<Rules>)>> = const { RefCell::new(None) };
}

fn builtin(rules: &mut Rules, relid: Option<pg_sys::Oid>, columns: &[&str]) {
    let Some(relid) = relid else { return };
    let mut cols = vec![];
    for c in columns {
        let name = std::ffi::CString::new(*c).unwrap();
        let attnum = unsafe { pg_sys::get_attnum(relid, name.as_ptr()) };
        if attnum > 0 {
            cols.push((attnum, "MASKED WITH VALUE NULL".to_string()));
        }
    }
    if !cols.is_empty() {
        rules.relations.insert(
            relid.to_u32(),
            MaskedRelation {
                view: None,
                columns: cols,
                builtin: true,
                ..Default::default()
            },
        );
    }
}

fn load() -> Rules {
    let mut rules = Rules::default();
    if unsafe { pg_sys::creating_extension } || !crate::identity::extension_installed() {
        return rules;
    }
    // From the catalog, without a query (see effective.rs)
    let masked = super::effective::masked_columns();
    for c in &masked {
        let m = rules.relations.entry(c.relid.to_u32()).or_default();
        m.view = c.view;
        m.columns.push((c.attnum, c.rule.clone()));
        if let Some(from) = c.inherited_from {
            m.inherited.push((c.attnum, from));
        } else if c.generated_from.is_some() {
            m.generated.push(c.attnum);
        }
        rules
            .names
            .entry(c.relid.to_u32())
            .or_insert_with(|| crate::catalog::regclass_name(c.relid));
        if let Some(t) = crate::catalog::toast_relation(c.relid) {
            rules.toast.insert(t.to_u32(), c.relid.to_u32());
        }
    }
    for t in super::effective::taints(&masked) {
        let from = t
            .built_from
            .iter()
            .map(|o| crate::catalog::regclass_name(*o))
            .collect::<Vec<_>>()
            .join(", ");
        if !t.labelled {
            rules.tainted.insert(t.relid.to_u32(), from.clone());
        }
        rules.built_from_masked.insert(t.relid.to_u32(), from);
    }
    rules.children_mask_more = super::effective::children_mask_more(&masked)
        .into_iter()
        .map(|o| o.to_u32())
        .collect();
    builtin(
        &mut rules,
        Some(pg_sys::StatisticRelationId),
        &[
            "stavalues1",
            "stavalues2",
            "stavalues3",
            "stavalues4",
            "stavalues5",
        ],
    );
    builtin(
        &mut rules,
        // pg_statistic_ext_data (StatisticExtDataRelationId)
        Some(pg_sys::Oid::from(3429u32)),
        &["stxdmcv", "stxdexpr"],
    );
    builtin(
        &mut rules,
        super::relation_oid(agent_guard_core::GUARD_SCHEMA, "masking_key"),
        &["key"],
    );
    rules
}

/// The rules read again now, whatever the generation says (a relation the
/// cached rules name turned out to be gone: its change committed, but the
/// generation moves only after the committing transaction released its locks).
pub fn reload() -> Rc<Rules> {
    CACHE.with(|c| *c.borrow_mut() = None);
    rules()
}

/// The rules, re-read when the generation moved. Outside a transaction, or
/// from agent_guard's own SPI, the last rules read are returned.
pub fn rules() -> Rc<Rules> {
    let generation = crate::shmem::generation();
    let cached = CACHE.with(|c| c.borrow().clone());
    if let Some((g, r)) = &cached {
        if *g == generation {
            return r.clone();
        }
    }
    if !unsafe { pg_sys::IsTransactionState() } || crate::identity::in_internal() {
        return cached.map(|(_, r)| r).unwrap_or_default();
    }
    crate::shmem::catch_up();
    let fresh = Rc::new(load());
    CACHE.with(|c| *c.borrow_mut() = Some((generation, fresh.clone())));
    // Plans cached under other rules (or before this session was an agent's)
    // are planned again; the backstop would refuse them otherwise.
    if crate::identity::cached_is_agent() {
        unsafe { pg_sys::ResetPlanCache() };
    }
    fresh
}
