//! Sensitive-data discovery: columns that look regulated by their name or
//! by a sample of their content, with the reason and a ready-to-run
//! `SECURITY LABEL` statement. Runs with the caller's privileges: it samples
//! only columns the caller may read (in an agent session, masked ones read
//! masked, like everything else). Already labelled columns are skipped.

use super::quote_identifier;
use agent_guard_core::mask::{kind_by_content, kind_by_name, label_statement, suggested_label};
use pgrx::prelude::*;
use std::collections::BTreeMap;

struct Candidate {
    attnum: i16,
    column: String,
    data_type: String,
    category: char,
    readable: bool,
}

struct Table {
    relid: pg_sys::Oid,
    schema: String,
    name: String,
    columns: Vec<Candidate>,
}

fn candidates(schema: Option<&str>) -> Vec<Table> {
    let mut tables: BTreeMap<(String, String), Table> = BTreeMap::new();
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT c.oid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, a.attnum, \
                        a.attname::pg_catalog.text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        t.typcategory::pg_catalog.text, \
                        pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT') \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition AND c.relispopulated \
                   AND n.nspname NOT IN ('information_schema', 'agent_guard', 'agent_guard_masked') \
                   AND n.nspname NOT LIKE 'pg\\_%' \
                   AND ($1::pg_catalog.text IS NULL OR n.nspname = $1::pg_catalog.text) \
                   AND NOT EXISTS (SELECT 1 FROM agent_guard.masking_rules m \
                                   WHERE m.relation = c.oid AND m.attnum = a.attnum) \
                 ORDER BY 2, 3, 4",
                None,
                &[schema.into()],
            )
            .expect("agent_guard: cannot list columns");
        for r in rows {
            let (
                Ok(Some(relid)),
                Ok(Some(nsp)),
                Ok(Some(rel)),
                Ok(Some(attnum)),
                Ok(Some(col)),
                Ok(Some(typ)),
                Ok(Some(cat)),
                Ok(Some(readable)),
            ) = (
                r.get::<pg_sys::Oid>(1),
                r.get::<String>(2),
                r.get::<String>(3),
                r.get::<i16>(4),
                r.get::<String>(5),
                r.get::<String>(6),
                r.get::<String>(7),
                r.get::<bool>(8),
            )
            else {
                continue;
            };
            tables
                .entry((nsp.clone(), rel.clone()))
                .or_insert(Table {
                    relid,
                    schema: nsp,
                    name: rel,
                    columns: vec![],
                })
                .columns
                .push(Candidate {
                    attnum,
                    column: col,
                    data_type: typ,
                    category: cat.chars().next().unwrap_or('X'),
                    readable,
                });
        }
    });
    tables.into_values().collect()
}

/// Whether sampled values of this type can reveal regulated data as text.
fn sampled(c: &Candidate) -> bool {
    c.readable && (c.category == 'S' || matches!(c.data_type.as_str(), "bigint" | "numeric"))
}

/// Up to `rows` non-null values of each sampled column, as text.
fn sample(t: &Table, rows: i32) -> BTreeMap<i16, Vec<String>> {
    let cols: Vec<&Candidate> = t.columns.iter().filter(|c| sampled(c)).collect();
    let mut out = BTreeMap::new();
    if cols.is_empty() || rows <= 0 {
        return out;
    }
    let select = cols
        .iter()
        .map(|c| format!("{}::pg_catalog.text", quote_identifier(&c.column)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {select} FROM {}.{} LIMIT $1",
        quote_identifier(&t.schema),
        quote_identifier(&t.name)
    );
    Spi::connect(|client| {
        if let Ok(result) = client.select(&sql, None, &[(rows as i64).into()]) {
            for r in result {
                for (i, c) in cols.iter().enumerate() {
                    if let Ok(Some(v)) = r.get::<String>(i + 1) {
                        out.entry(c.attnum).or_insert_with(Vec::new).push(v);
                    }
                }
            }
        }
    });
    out
}

/// Columns that look regulated, with why and how to label them.
#[pg_extern(name = "_suggest_sensitive", volatile)]
#[allow(clippy::type_complexity)]
fn suggest_sensitive(
    schema: Option<&str>,
    sample_rows: Option<i32>,
) -> TableIterator<
    'static,
    (
        name!(relation, pg_sys::Oid),
        name!(column_name, String),
        name!(data_type, String),
        name!(reason, String),
        name!(suggested_label, String),
        name!(statement, String),
    ),
> {
    let rows = sample_rows.unwrap_or(1000).clamp(0, 1_000_000);
    // as the caller (masked reads stay masked), with agent_guard's search path
    let out = crate::search_path::pinned(|| suggestions(schema, rows));
    TableIterator::new(out)
}

fn suggestions(
    schema: Option<&str>,
    rows: i32,
) -> Vec<(pg_sys::Oid, String, String, String, String, String)> {
    let mut out = vec![];
    for t in candidates(schema) {
        let samples = sample(&t, rows);
        for c in &t.columns {
            let by_name = kind_by_name(&c.column);
            let by_content = samples
                .get(&c.attnum)
                .and_then(|v| kind_by_content(v.iter().map(String::as_str)));
            let mut reasons = vec![];
            if let Some(k) = by_name {
                reasons.push(format!("name suggests {}", k.describe()));
            }
            if let Some((k, n, of)) = by_content {
                reasons.push(format!(
                    "{n} of {of} sampled values look like {}",
                    k.describe()
                ));
            }
            let Some(kind) = by_content.map(|(k, _, _)| k).or(by_name) else {
                continue;
            };
            let label = suggested_label(kind, &c.column, c.category);
            let stmt = label_statement(&t.schema, &t.name, &c.column, &label);
            out.push((
                t.relid,
                c.column.clone(),
                c.data_type.clone(),
                reasons.join("; "),
                label,
                stmt,
            ));
        }
    }
    out
}
