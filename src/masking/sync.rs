//! Keeping the masking views in step with the tables.
//!
//! `agent_guard_masked` holds one view per masked relation: the relation's
//! columns, masked ones replaced by their masks (deparsed by PostgreSQL from
//! the analysed mask), `security_invoker` so that reading it needs the
//! reader's own privileges on the relation. The planner rewrite takes its
//! expressions from there; people can read it to see what agents see.
//!
//! - `ddl_command_end` and `sql_drop` event triggers (sql/masking.sql,
//!   SECURITY DEFINER, `search_path` pinned) call [`masking_sync`]: the views
//!   of the relations the command touched are regenerated, missing ones
//!   created, views of relations no longer masked dropped; and, when
//!   `agent_guard.discovery_messages` asks for it (off by default, so that
//!   ordinary migrations print what they print without agent_guard), a
//!   NOTICE or WARNING names each column the command added that looks
//!   sensitive by its name but has no label, with a ready-to-run SECURITY LABEL.
//! - Before `ALTER TABLE` / `DROP TABLE` / `DROP OWNED` / `DROP EXTENSION
//!   agent_guard`, [`before_utility`] drops the views that would block the
//!   command (a view pins its columns' types and its table's existence);
//!   the event trigger creates them again at the command's end. All of it
//!   is transactional: a failing command leaves the views as they were.
//!
//! The views are agent_guard's own objects: their DDL runs as agent_guard's
//! internal work (passed through by the hooks) and as the extension's owner.

use super::{cstr, quote_identifier, MASKED_SCHEMA};
use pgrx::pg_sys::{self, NodeTag};
use pgrx::prelude::*;
use pgrx::{is_a, PgList};
use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};

thread_local! {
    static SYNCING: Cell<bool> = const { Cell::new(false) };
}

struct Column {
    attnum: i16,
    rule: String,
}

struct Target {
    schema: String,
    name: String,
    view: Option<pg_sys::Oid>,
    columns: Vec<Column>,
}

fn masked_relations() -> BTreeMap<u32, Target> {
    let mut out: BTreeMap<u32, Target> = BTreeMap::new();
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT m.relation::pg_catalog.oid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
                        m.attnum, m.rule, m.masking_view::pg_catalog.oid \
                 FROM agent_guard.masking_rules m \
                 JOIN pg_catalog.pg_class c ON c.oid = m.relation \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 ORDER BY 1, 4",
                None,
                &[],
            )
            .expect("agent_guard: cannot read the masking rules");
        for r in rows {
            let (
                Ok(Some(oid)),
                Ok(Some(schema)),
                Ok(Some(name)),
                Ok(Some(attnum)),
                Ok(Some(rule)),
                Ok(view),
            ) = (
                r.get::<pg_sys::Oid>(1),
                r.get::<String>(2),
                r.get::<String>(3),
                r.get::<i16>(4),
                r.get::<String>(5),
                r.get::<pg_sys::Oid>(6),
            )
            else {
                continue;
            };
            out.entry(oid.to_u32())
                .or_insert(Target {
                    schema,
                    name,
                    view,
                    columns: vec![],
                })
                .columns
                .push(Column { attnum, rule });
        }
    });
    out
}

/// A free name for the masking view of `table` in agent_guard_masked.
fn view_name(table: &str, relid: pg_sys::Oid) -> String {
    let fits = |s: &str| s.len() < pg_sys::NAMEDATALEN as usize;
    let mut base = table.to_string();
    while !fits(&base) {
        base.pop();
    }
    if super::relation_oid(MASKED_SCHEMA, &base).is_none() {
        return base;
    }
    let suffix = format!("_{}", relid.to_u32());
    let mut name = table.to_string();
    while !fits(&format!("{name}{suffix}")) {
        name.pop();
    }
    format!("{name}{suffix}")
}

fn create_view(relid: pg_sys::Oid, t: &Target) -> Result<(), String> {
    let rel = unsafe { pg_sys::relation_open(relid, pg_sys::AccessShareLock as i32) };
    let atts = unsafe { super::label::attributes(rel) };
    unsafe { pg_sys::relation_close(rel, pg_sys::NoLock as i32) };
    let mut cols = vec![];
    for (i, a) in atts.iter().enumerate() {
        if a.dropped {
            continue;
        }
        let attnum = i as i16 + 1;
        let col = quote_identifier(&a.name);
        match t.columns.iter().find(|c| c.attnum == attnum) {
            Some(c) => cols.push(format!(
                "{} AS {col}",
                super::label::mask_sql(relid, attnum, &c.rule)?
            )),
            None => cols.push(col),
        }
    }
    let view = view_name(&t.name, relid);
    let qview = format!(
        "{}.{}",
        quote_identifier(MASKED_SCHEMA),
        quote_identifier(&view)
    );
    let qtable = format!(
        "{}.{}",
        quote_identifier(&t.schema),
        quote_identifier(&t.name)
    );
    Spi::run(&format!(
        "CREATE VIEW {qview} WITH (security_invoker = true) AS SELECT {} FROM {qtable}",
        cols.join(", ")
    ))
    .map_err(|e| e.to_string())?;
    let comment = format!(
        "What agent sessions read from {qtable} (generated by agent_guard from its security labels; do not edit)"
    );
    Spi::run(&format!(
        "COMMENT ON VIEW {qview} IS {}",
        agent_guard_core::quote_literal(&comment)
    ))
    .map_err(|e| e.to_string())?;
    Spi::run(&format!("GRANT SELECT ON {qview} TO PUBLIC")).map_err(|e| e.to_string())?;
    Ok(())
}

fn drop_view(view: pg_sys::Oid) {
    unsafe {
        let address = pg_sys::ObjectAddress {
            classId: pg_sys::RelationRelationId,
            objectId: view,
            objectSubId: 0,
        };
        pg_sys::performDeletion(
            &address,
            pg_sys::DropBehavior::DROP_RESTRICT,
            pg_sys::PERFORM_DELETION_INTERNAL as i32,
        );
        pg_sys::CommandCounterIncrement();
    }
}

/// Views in agent_guard_masked.
fn existing_views() -> Vec<pg_sys::Oid> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT c.oid FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'agent_guard_masked' AND c.relkind = 'v'",
                None,
                &[],
            )
            .map(|rows| {
                rows.filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Columns of `relid` written by this transaction (added or changed) that
/// look sensitive by name and carry no label.
fn unlabelled_sensitive_columns(
    relid: pg_sys::Oid,
    labelled: &HashSet<(u32, i16)>,
) -> Vec<(String, agent_guard_core::mask::Kind, char)> {
    let mut out = vec![];
    unsafe {
        let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return out;
        }
        let kind = (*(*rel).rd_rel).relkind as u8;
        let natts = (*(*rel).rd_att).natts;
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        if !matches!(kind, b'r' | b'p' | b'm' | b'f') {
            return out;
        }
        for attnum in 1..=natts as i16 {
            if labelled.contains(&(relid.to_u32(), attnum)) {
                continue;
            }
            let tup = pg_sys::SearchSysCache2(
                pg_sys::SysCacheIdentifier::ATTNUM as i32,
                pg_sys::Datum::from(relid),
                pg_sys::Datum::from(attnum),
            );
            if tup.is_null() {
                continue;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_attribute>(tup);
            let xmin = (*(*tup).t_data).t_choice.t_heap.t_xmin;
            let fresh = pg_sys::TransactionIdIsCurrentTransactionId(xmin);
            let name = cstr((*form).attname.data.as_ptr()).unwrap_or_default();
            let dropped = (*form).attisdropped;
            let typ = (*form).atttypid;
            pg_sys::ReleaseSysCache(tup);
            if dropped || !fresh {
                continue;
            }
            if let Some(k) = agent_guard_core::mask::kind_by_name(&name) {
                let mut category: std::ffi::c_char = 0;
                let mut preferred = false;
                pg_sys::get_type_category_preferred(
                    pg_sys::getBaseType(typ),
                    &mut category,
                    &mut preferred,
                );
                out.push((name, k, category as u8 as char));
            }
        }
    }
    out
}

fn warn_unlabelled(
    affected: &[pg_sys::Oid],
    targets: &BTreeMap<u32, Target>,
    level: pgrx::PgLogLevel,
) {
    let labelled: HashSet<(u32, i16)> = targets
        .iter()
        .flat_map(|(oid, t)| t.columns.iter().map(move |c| (*oid, c.attnum)))
        .collect();
    for relid in affected {
        let rel = crate::extract::relation(*relid);
        if rel.schema.starts_with("pg_")
            || rel.schema == "information_schema"
            || rel.schema == agent_guard_core::GUARD_SCHEMA
            || rel.schema == MASKED_SCHEMA
        {
            continue;
        }
        for (col, kind, category) in unlabelled_sensitive_columns(*relid, &labelled) {
            let label = agent_guard_core::mask::suggested_label(kind, &col, category);
            let stmt =
                agent_guard_core::mask::label_statement(&rel.schema, &rel.name, &col, &label);
            let code = if level == pgrx::PgLogLevel::WARNING {
                PgSqlErrorCode::ERRCODE_WARNING
            } else {
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION
            };
            pgrx::pg_sys::panic::ErrorReport::new(
                code,
                format!(
                    "column {}.{} looks like {} and has no agent_guard label: agents read it unmasked",
                    rel.qualified(),
                    quote_identifier(&col),
                    kind.describe()
                ),
                "agent_guard",
            )
            .set_hint(format!("To mask it for agents: {stmt}"))
            .report(level);
        }
    }
}

/// Bring the masking views in line with the labels. `affected`: relations a
/// DDL command touched (their views are regenerated); NULL: regenerate all.
/// `warn`: warn about unlabelled columns of `affected` that look sensitive.
#[pg_extern(name = "_masking_sync", volatile)]
fn masking_sync(affected: Option<Vec<pg_sys::Oid>>, warn: bool) {
    // CREATE EXTENSION would make the views members of the extension (and
    // then dropping a table with CASCADE would drop the extension).
    if unsafe { pg_sys::creating_extension } || SYNCING.with(|s| s.get()) {
        return;
    }
    SYNCING.with(|s| s.set(true));
    pgrx::PgTryBuilder::new(|| {
        crate::identity::internal(|| sync(affected.as_deref(), warn));
    })
    .finally(|| SYNCING.with(|s| s.set(false)))
    .execute();
}

fn sync(affected: Option<&[pg_sys::Oid]>, warn: bool) {
    // Temporary tables are never masked: a command that touched only those has nothing to sync.
    let temporary = |o: &pg_sys::Oid| unsafe {
        pg_sys::get_rel_relkind(*o) != 0 && pg_sys::get_rel_persistence(*o) as u8 == b't'
    };
    if affected.is_some_and(|a| !a.is_empty() && a.iter().all(temporary)) {
        return;
    }
    let targets = masked_relations();
    let mut changed = false;
    let wanted: HashSet<u32> = targets.keys().copied().collect();
    for view in existing_views() {
        let of_masked = targets.values().any(|t| t.view == Some(view));
        if !of_masked {
            drop_view(view);
            changed = true;
        }
    }
    for (oid, t) in &targets {
        let relid = pg_sys::Oid::from(*oid);
        let regenerate = match affected {
            None => true,
            Some(a) => a.contains(&relid),
        };
        if t.view.is_some() && !regenerate {
            continue;
        }
        if let Some(v) = t.view {
            drop_view(v);
        }
        if let Err(e) = create_view(relid, t) {
            error!(
                "agent_guard: cannot create the masking view of {}: {e}",
                crate::extract::relation(relid).qualified()
            );
        }
        changed = true;
    }
    let touches_masked = affected.is_some_and(|a| {
        a.iter().any(|o| {
            wanted.contains(&o.to_u32()) || unsafe { pg_sys::get_rel_relkind(*o) as u8 == b'm' }
        })
    });
    if changed || touches_masked {
        crate::shmem::bump_at_commit();
    }
    if let (true, Some(a), Some(level)) = (warn, affected, crate::gucs::discovery_messages()) {
        warn_unlabelled(a, &targets, level);
    }
}

/// The relation and its inheritance descendants.
fn with_descendants(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    Spi::connect(|client| {
        client
            .select(
                "WITH RECURSIVE tree(relid) AS (SELECT $1::pg_catalog.oid \
                   UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid) \
                 SELECT relid FROM tree",
                None,
                &[relid.into()],
            )
            .map(|rows| rows.filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten()).collect())
            .unwrap_or_else(|_| vec![relid])
    })
}

/// Relations a utility statement is about to alter or drop, or None.
unsafe fn blocked_relations(node: *mut pg_sys::Node) -> Option<Vec<pg_sys::Oid>> {
    unsafe {
        match (*node).type_ {
            NodeTag::T_AlterTableStmt => {
                crate::extract::range_var_relid((*(node as *mut pg_sys::AlterTableStmt)).relation)
                    .map(|o| vec![o])
            }
            NodeTag::T_DropStmt => {
                let s = node as *mut pg_sys::DropStmt;
                use pg_sys::ObjectType::*;
                if !matches!(
                    (*s).removeType,
                    OBJECT_TABLE | OBJECT_MATVIEW | OBJECT_FOREIGN_TABLE
                ) {
                    return None;
                }
                let mut out = vec![];
                for obj in PgList::<pg_sys::Node>::from_pg((*s).objects).iter_ptr() {
                    if is_a(obj, NodeTag::T_List) {
                        out.extend(crate::extract::name_list_relid(obj as *mut pg_sys::List));
                    }
                }
                Some(out)
            }
            _ => None,
        }
    }
}

unsafe fn drops_guard_extension(node: *mut pg_sys::Node) -> bool {
    unsafe {
        if !is_a(node, NodeTag::T_DropStmt) {
            return false;
        }
        let s = node as *mut pg_sys::DropStmt;
        (*s).removeType == pg_sys::ObjectType::OBJECT_EXTENSION
            && PgList::<pg_sys::Node>::from_pg((*s).objects)
                .iter_ptr()
                .any(|o| {
                    is_a(o, NodeTag::T_String)
                        && cstr((*(o as *mut pg_sys::String)).sval).as_deref()
                            == Some("agent_guard")
                })
    }
}

/// Before a utility statement runs (any session): drop the masking views
/// that would block it; the event trigger regenerates them at its end.
///
/// # Safety
/// `node` must be a valid utility parse node.
pub unsafe fn before_utility(node: *mut pg_sys::Node) {
    unsafe {
        let tag = (*node).type_;
        if !matches!(
            tag,
            NodeTag::T_AlterTableStmt | NodeTag::T_DropStmt | NodeTag::T_DropOwnedStmt
        ) || !pg_sys::IsTransactionState()
            || pg_sys::creating_extension
            || !crate::identity::extension_installed()
        {
            return;
        }
        if drops_guard_extension(node) {
            crate::identity::internal(|| {
                super::with_snapshot(|| existing_views().into_iter().for_each(drop_view))
            });
            return;
        }
        let rules = super::rules::rules();
        let views: Vec<(pg_sys::Oid, pg_sys::Oid)> = rules
            .labelled()
            .filter_map(|(rel, m)| m.view.map(|v| (rel, v)))
            .collect();
        if views.is_empty() {
            return;
        }
        let targets: Vec<pg_sys::Oid> = if tag == NodeTag::T_DropOwnedStmt {
            // Relations owned by the roles whose objects are dropped.
            let s = node as *mut pg_sys::DropOwnedStmt;
            let roles: Vec<pg_sys::Oid> = PgList::<pg_sys::RoleSpec>::from_pg((*s).roles)
                .iter_ptr()
                .map(|r| pg_sys::get_rolespec_oid(r, true))
                .collect();
            views
                .iter()
                .map(|(rel, _)| *rel)
                .filter(|rel| super::relation_owner(*rel).is_some_and(|o| roles.contains(&o)))
                .collect()
        } else {
            match blocked_relations(node) {
                Some(v) => v,
                None => return,
            }
        };
        if targets.is_empty() {
            return;
        }
        crate::identity::internal(|| {
            super::with_snapshot(|| {
                let mut all = HashSet::new();
                for t in &targets {
                    all.extend(with_descendants(*t).into_iter().map(|o| o.to_u32()));
                }
                for (rel, view) in &views {
                    if all.contains(&rel.to_u32())
                        && pg_sys::SearchSysCacheExists(
                            pg_sys::SysCacheIdentifier::RELOID as i32,
                            pg_sys::Datum::from(*view),
                            pg_sys::Datum::from(0),
                            pg_sys::Datum::from(0),
                            pg_sys::Datum::from(0),
                        )
                    {
                        drop_view(*view);
                    }
                }
            })
        });
    }
}
