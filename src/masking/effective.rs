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
//! A materialized view is *tainted* when what its last population read (or,
//! for one populated out of agent_guard's sight, its definition) includes a
//! masked column, the whole row of a masked relation or a tainted
//! materialized view, and it has no labels of its own (see [`taints`]).

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
            own.entry(relid)
                .or_default()
                .push((attnum, (a.name, label, None)));
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
            let mut sources: Vec<i16> =
                catalog::dependencies(pg_sys::Oid::from(catalog::ATTRDEF), attrdef)
                    .into_iter()
                    .filter(|(class, obj, sub)| {
                        *class == pg_sys::RelationRelationId
                            && obj == relid
                            && *sub > 0
                            && *sub != adnum as i32
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
        matches!(kind, b'r' | b'p' | b'm' | b'f')
            && pg_sys::get_rel_persistence(relid) as u8 != b't'
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
    for (
        (relid, name),
        Reach {
            rule, from, source, ..
        },
    ) in effective
    {
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
    /// The masked relations (or tainted materialized views) it read, by oid.
    pub built_from: Vec<Oid>,
    /// It has masked columns of its own (labels).
    pub labelled: bool,
    /// Judged by what its last population read (else by its definition).
    pub recorded: bool,
}

/// A populated, non-temporary materialized view.
fn populated_matview(relid: Oid) -> bool {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relid),
        );
        if tup.is_null() {
            return false;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tup);
        let ok = (*form).relkind as u8 == b'm'
            && (*form).relispopulated
            && (*form).relpersistence as u8 != b't';
        pg_sys::ReleaseSysCache(tup);
        ok
    }
}

/// Materialized views computed from masked columns.
///
/// A view whose population agent_guard recorded (population.rs) is judged
/// by what it read, against the current rules: a masked column or the whole
/// row of a masked relation, or anything of a tainted materialized view
/// (one without labels: its columns' contents are unknown). A view populated
/// before agent_guard could see it is judged by its definition,
/// conservatively: any dependency, through views and materialized views, on
/// a masked relation or a tainted materialized view (function bodies are
/// out of sight there: a REFRESH records them).
pub fn taints(masked: &[MaskedColumn]) -> Vec<Taint> {
    let schema = masked_schema();
    let mut masked_cols: HashMap<Oid, HashSet<i16>> = HashMap::new();
    for c in masked {
        masked_cols.entry(c.relid).or_default().insert(c.attnum);
    }
    let records = super::population::records();
    // view -> its sources
    let mut found: BTreeMap<u32, HashSet<Oid>> = BTreeMap::new();
    loop {
        let before: usize = found.values().map(HashSet::len).sum::<usize>() + found.len();
        let tainted_unlabelled =
            |o: &Oid| found.contains_key(&o.to_u32()) && !masked_cols.contains_key(o);
        let mut add: Vec<(Oid, Oid)> = vec![];
        // recorded populations
        for (view, reads) in &records {
            if !populated_matview(*view) {
                continue;
            }
            for (rel, cols) in reads {
                let hit = match masked_cols.get(rel) {
                    Some(m) => cols.iter().any(|c| *c == 0 || m.contains(c)),
                    None => tainted_unlabelled(rel),
                };
                if hit && rel != view {
                    add.push((*view, *rel));
                }
            }
        }
        // views populated out of agent_guard's sight: by their definition
        let mut seeds: Vec<Oid> = masked_cols.keys().copied().collect();
        seeds.extend(
            found
                .keys()
                .map(|o| Oid::from(*o))
                .filter(|o| tainted_unlabelled(o)),
        );
        for seed in seeds {
            let mut seen: HashSet<Oid> = HashSet::new();
            let mut queue: VecDeque<Oid> = VecDeque::from([seed]);
            while let Some(rel) = queue.pop_front() {
                for v in catalog::reading_views(rel, None) {
                    if unsafe { pg_sys::get_rel_namespace(v) } == schema || !seen.insert(v) {
                        continue;
                    }
                    match unsafe { pg_sys::get_rel_relkind(v) } as u8 {
                        b'v' => queue.push_back(v),
                        b'm' if !records.contains_key(&v) && populated_matview(v) && v != seed => {
                            add.push((v, seed))
                        }
                        _ => {}
                    }
                }
            }
        }
        for (view, source) in add {
            found.entry(view.to_u32()).or_default().insert(source);
        }
        let after: usize = found.values().map(HashSet::len).sum::<usize>() + found.len();
        if after == before {
            break;
        }
    }
    found
        .into_iter()
        .map(|(relid, from)| {
            let relid = Oid::from(relid);
            let mut built_from: Vec<Oid> = from.into_iter().collect();
            built_from.sort_by_key(|o| o.to_u32());
            Taint {
                relid,
                built_from,
                labelled: masked_cols.contains_key(&relid),
                recorded: records.contains_key(&relid),
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
            if cols
                .iter()
                .any(|c| !root_cols.is_some_and(|r| r.contains(c)))
            {
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
    let rows = if installed() {
        masked_columns()
    } else {
        vec![]
    };
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
        name!(recorded, bool),
    ),
> {
    let rows = if installed() {
        taints(&masked_columns())
    } else {
        vec![]
    };
    TableIterator::new(
        rows.into_iter()
            .map(|t| (t.relid, t.built_from, t.labelled, t.recorded)),
    )
}
