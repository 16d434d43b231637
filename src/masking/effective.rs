//! Which columns are masked, computed from the catalog without SQL.
//!
//! The one definition of "masked", shared by the per-backend rules cache
//! (rules.rs, read from the planner, executor and utility hooks), the
//! masking views' upkeep (sync.rs) and the SQL views `agent_guard.masking_rules`
//! and `agent_guard.masking_taints` (sql/masking.sql, which select from
//! [`masking_rules_srf`] and [`masking_taints_srf`]). It reads only syscaches
//! and catalog scans with the catalog snapshot (see [`crate::catalog`]), so the
//! hooks that need it run no query of their own.
//!
//! A column is masked when
//! - it carries an agent_guard label itself (`pg_seclabel`);
//! - it is a generated column computed from a labelled column of its relation
//!   and has no label of its own: it gets the default mask (`SENSITIVE`);
//! - its relation is a partition or inheritance child of a relation where
//!   the column (by name) is masked for one of these reasons, and it has no
//!   label of its own: the nearest ancestor's rule applies;
//!
//! and its relation is a table, partitioned table, materialized view or
//! foreign table that is not temporary. Each masked relation's masking view
//! is the view in `agent_guard_masked` whose rule depends on it.
//!
//! A materialized view is *tainted* when its definition reads a masked
//! column (directly or through views) and it has no labels of its own.

use crate::catalog::{self, Attribute};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// One masked column.
#[derive(Clone, Debug)]
pub struct MaskedColumn {
    pub relid: Oid,
    pub attnum: i16,
    pub column: String,
    pub column_type: String,
    pub rule: String,
    /// The ancestor whose rule a partition or child inherits.
    pub inherited_from: Option<Oid>,
    /// The labelled column a generated column is computed from.
    pub generated_from: Option<String>,
    /// The relation's masking view.
    pub view: Option<Oid>,
}

/// A rule before inheritance: (column name, rule, generated from).
type Own = (String, String, Option<String>);

/// Labels of the database's columns and the generated columns computed from them, by relation.
fn labelled() -> HashMap<Oid, Vec<Own>> {
    let mut own: HashMap<Oid, Vec<(i16, Own)>> = HashMap::new();
    for (relid, attnum, label) in crate::labels::column_labels() {
        if let Some(a) = catalog::attribute(relid, attnum) {
            own.entry(relid).or_default().push((attnum, (a.name, label, None)));
        }
    }
    let mut out: HashMap<Oid, Vec<Own>> = HashMap::new();
    for (relid, cols) in &own {
        let mut entries: Vec<Own> = cols.iter().map(|(_, o)| o.clone()).collect();
        let own_names: HashSet<&str> = cols.iter().map(|(_, o)| o.0.as_str()).collect();
        // generated columns whose expression reads a labelled column
        for (attrdef, adnum) in catalog::attribute_defaults(*relid) {
            let Some(g) = catalog::attribute(*relid, adnum).filter(|a| a.generated) else {
                continue;
            };
            if own_names.contains(g.name.as_str()) {
                continue;
            }
            let mut sources: Vec<i16> = catalog::dependencies(pg_sys::Oid::from(catalog::ATTRDEF), attrdef)
                .into_iter()
                .filter(|(class, obj, sub)| {
                    *class == pg_sys::RelationRelationId && obj == relid && *sub > 0 && *sub != adnum as i32
                })
                .map(|(_, _, sub)| sub as i16)
                .collect();
            sources.sort_unstable();
            let from = sources.into_iter().find_map(|s| {
                catalog::attribute(*relid, s)
                    .map(|a| a.name)
                    .filter(|n| own_names.contains(n.as_str()))
            });
            if let Some(from) = from {
                entries.push((g.name, "SENSITIVE".to_string(), Some(from)));
            }
        }
        out.insert(*relid, entries);
    }
    out
}

fn is_maskable(relid: Oid) -> bool {
    unsafe {
        let kind = pg_sys::get_rel_relkind(relid) as u8;
        matches!(kind, b'r' | b'p' | b'm' | b'f') && pg_sys::get_rel_persistence(relid) as u8 != b't'
    }
}

fn masked_schema() -> Oid {
    unsafe { pg_sys::get_namespace_oid(c"agent_guard_masked".as_ptr(), true) }
}

/// The masking view of `relid`: the lowest-numbered view in agent_guard_masked reading it.
fn masking_view(relid: Oid, masked_schema: Oid) -> Option<Oid> {
    if masked_schema == pg_sys::InvalidOid {
        return None;
    }
    catalog::dependents(pg_sys::RelationRelationId, relid, None)
        .into_iter()
        .filter(|(class, _, _)| *class == Oid::from(catalog::REWRITE))
        .filter_map(|(_, rule, _)| catalog::rule(rule).map(|(ev_class, _)| ev_class))
        .filter(|v| unsafe { pg_sys::get_rel_namespace(*v) } == masked_schema)
        .min_by_key(|v| v.to_u32())
}

/// A rule as it reaches a relation (itself, or a partition or child).
#[derive(Clone)]
struct Reach {
    relid: Oid,
    name: String,
    rule: String,
    from: Option<String>,
    /// The relation carrying the rule.
    source: Oid,
}

/// Every masked column of the database, ordered by relation and column number.
pub fn masked_columns() -> Vec<MaskedColumn> {
    let labelled = labelled();
    let mut effective: HashMap<(Oid, String), Reach> = HashMap::new();
    let mut queue: VecDeque<Reach> = VecDeque::new();
    let mut roots: Vec<&Oid> = labelled.keys().collect();
    roots.sort_by_key(|o| o.to_u32());
    for relid in roots {
        for (name, rule, from) in &labelled[relid] {
            queue.push_back(Reach {
                relid: *relid,
                name: name.clone(),
                rule: rule.clone(),
                from: from.clone(),
                source: *relid,
            });
        }
    }
    // Breadth first, own rules first: the first rule to reach a column is
    // its own or its nearest ancestor's.
    while let Some(r) = queue.pop_front() {
        let key = (r.relid, r.name.clone());
        if effective.contains_key(&key) {
            continue;
        }
        for child in catalog::children(r.relid) {
            let own = labelled
                .get(&child)
                .is_some_and(|cols| cols.iter().any(|(n, _, _)| *n == r.name));
            if !own {
                queue.push_back(Reach {
                    relid: child,
                    ..r.clone()
                });
            }
        }
        effective.insert(key, r);
    }
    let schema = masked_schema();
    let mut views: HashMap<Oid, Option<Oid>> = HashMap::new();
    let mut out: Vec<MaskedColumn> = vec![];
    for ((relid, name), Reach { rule, from, source, .. }) in effective {
        if !is_maskable(relid) {
            continue;
        }
        let Ok(cname) = std::ffi::CString::new(name.as_str()) else {
            continue;
        };
        let attnum = unsafe { pg_sys::get_attnum(relid, cname.as_ptr()) };
        if attnum <= 0 {
            continue;
        }
        let Some(Attribute {
            name: column,
            type_oid,
            typmod,
            ..
        }) = catalog::attribute(relid, attnum)
        else {
            continue;
        };
        let view = *views
            .entry(relid)
            .or_insert_with(|| masking_view(relid, schema));
        out.push(MaskedColumn {
            relid,
            attnum,
            column,
            column_type: catalog::format_type(type_oid, typmod),
            rule,
            inherited_from: (source != relid).then_some(source),
            generated_from: from,
            view,
        });
    }
    out.sort_by_key(|c| (c.relid.to_u32(), c.attnum));
    out
}

/// A materialized view computed from masked columns.
pub struct Taint {
    pub relid: Oid,
    /// The masked relations it reads, by oid.
    pub built_from: Vec<Oid>,
    /// It has masked columns of its own (labels).
    pub labelled: bool,
}

/// Materialized views whose definition reads masked columns, directly or
/// through views (not through other materialized views).
pub fn taints(masked: &[MaskedColumn]) -> Vec<Taint> {
    let schema = masked_schema();
    let mut reads: HashSet<(Oid, Oid)> = HashSet::new();
    let mut queue: VecDeque<(Oid, Oid)> = VecDeque::new();
    for c in masked {
        for v in catalog::reading_views(c.relid, Some(c.attnum)) {
            if unsafe { pg_sys::get_rel_namespace(v) } != schema && reads.insert((v, c.relid)) {
                queue.push_back((v, c.relid));
            }
        }
    }
    while let Some((relid, source)) = queue.pop_front() {
        if unsafe { pg_sys::get_rel_relkind(relid) } as u8 != b'v' {
            continue;
        }
        for v in catalog::reading_views(relid, None) {
            if reads.insert((v, source)) {
                queue.push_back((v, source));
            }
        }
    }
    let masked_rels: HashSet<Oid> = masked.iter().map(|c| c.relid).collect();
    let mut by_view: BTreeMap<u32, Vec<Oid>> = BTreeMap::new();
    for (relid, source) in reads {
        if unsafe { pg_sys::get_rel_relkind(relid) } as u8 == b'm' {
            by_view.entry(relid.to_u32()).or_default().push(source);
        }
    }
    by_view
        .into_iter()
        .map(|(relid, mut from)| {
            from.sort_by_key(|o| o.to_u32());
            from.dedup();
            let relid = Oid::from(relid);
            Taint {
                relid,
                built_from: from,
                labelled: masked_rels.contains(&relid),
            }
        })
        .collect()
}

/// Relations whose partitions or inheritance descendants mask columns
/// (by name) that the relation itself does not.
pub fn children_mask_more(masked: &[MaskedColumn]) -> HashSet<Oid> {
    let mut names: HashMap<Oid, HashSet<&str>> = HashMap::new();
    for c in masked {
        names.entry(c.relid).or_default().insert(c.column.as_str());
    }
    let mut out = HashSet::new();
    for (relid, cols) in &names {
        let mut ancestors: Vec<Oid> = catalog::parents(*relid);
        let mut i = 0;
        while i < ancestors.len() {
            let root = ancestors[i];
            let root_cols = names.get(&root);
            if cols.iter().any(|c| !root_cols.is_some_and(|r| r.contains(c))) {
                out.insert(root);
            }
            for p in catalog::parents(root) {
                if !ancestors.contains(&p) {
                    ancestors.push(p);
                }
            }
            i += 1;
        }
    }
    out
}

fn installed() -> bool {
    !unsafe { pg_sys::creating_extension } && crate::identity::extension_installed()
}

/// The rows of the view `agent_guard.masking_rules`.
#[pg_extern(name = "_masking_rules", stable)]
#[allow(clippy::type_complexity)]
fn masking_rules_srf() -> TableIterator<
    'static,
    (
        name!(relation, Oid),
        name!(attnum, i16),
        name!(column_name, String),
        name!(column_type, String),
        name!(rule, String),
        name!(inherited_from, Option<Oid>),
        name!(generated_from, Option<String>),
        name!(masking_view, Option<Oid>),
    ),
> {
    let rows = if installed() { masked_columns() } else { vec![] };
    TableIterator::new(rows.into_iter().map(|c| {
        (
            c.relid,
            c.attnum,
            c.column,
            c.column_type,
            c.rule,
            c.inherited_from,
            c.generated_from,
            c.view,
        )
    }))
}

/// The rows of the view `agent_guard.masking_taints`.
#[pg_extern(name = "_masking_taints", stable)]
fn masking_taints_srf() -> TableIterator<
    'static,
    (
        name!(relation, Oid),
        name!(built_from, Vec<Oid>),
        name!(labelled, bool),
    ),
> {
    let rows = if installed() {
        taints(&masked_columns())
    } else {
        vec![]
    };
    TableIterator::new(rows.into_iter().map(|t| (t.relid, t.built_from, t.labelled)))
}
