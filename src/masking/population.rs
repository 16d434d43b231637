//! What the population of a materialized view actually read.
//!
//! A materialized view holds whatever its query computed when it was last
//! populated (`CREATE MATERIALIZED VIEW … [WITH DATA]`, `REFRESH
//! MATERIALIZED VIEW [CONCURRENTLY]`, `EXPLAIN ANALYZE CREATE MATERIALIZED
//! VIEW`). Its definition does not say what that was: a whole-row reference
//! (`c::text`, `row_to_json(c)`) depends on no column, another materialized
//! view hides its own sources, and function bodies (set-returning SQL,
//! PL/pgSQL, dynamic SQL, `query_to_xml`) are not in `pg_depend` at all. The
//! executor, though, sees every plan the population runs, nested ones too.
//!
//! So, while a population runs (in any session), every `ExecutorStart`
//! notes the relations and columns its plan reads (range-table entries and
//! their selected columns; the whole row as column 0), and plans that could
//! run user-defined code in parallel workers are made without parallelism
//! (a worker's nested statements would be out of sight; see
//! [`needs_serial_plan`]). When the statement succeeds, the reads replace the view's
//! previous record in `agent_guard.matview_populations` /
//! `agent_guard.matview_reads`, in the same transaction. effective.rs then
//! judges the view by its record against the current masking rules: a view
//! whose population read a masked column, the whole row of a masked
//! relation, or a tainted materialized view, is tainted — also when the
//! label came after the population.
//!
//! In an agent session, entries the masking rewrite marked are left out
//! (they read masks, not values: the agent's new view is a copy of masks,
//! as its `CREATE TABLE AS` would be), and a REFRESH that reads masked
//! columns at all is refused: it would replace the values humans read there
//! with masks (refresh.rs refuses it earlier when the record already says so).
//!
//! The record is written straight into the tables' heaps (no SQL, no
//! transaction snapshot), as PostgreSQL writes its catalogs: the view's lock
//! serialises populations of one view, so no serialization failure can
//! arise from it in a REPEATABLE READ transaction. The tables have no
//! indexes; they are small and read whole when the masking rules are loaded.

use agent_guard_core::Refusal;
use pgrx::pg_sys::{self, NodeTag};
use pgrx::{is_a, PgList};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The tables of the record (sql/masking.sql). Their columns are written by
/// position: populations (matview oid, populated_at timestamptz, populated_by
/// oid); reads (matview oid, relation oid, columns int2[]).
const POPULATIONS: &str = "matview_populations";
const READS: &str = "matview_reads";

struct Recording {
    /// The nesting level of the populating utility statement.
    level: i32,
    /// The view being refreshed (for CREATE: found when it succeeded).
    matview: Option<pg_sys::Oid>,
    /// Relation -> columns read (0: the whole row).
    reads: BTreeMap<u32, BTreeSet<i16>>,
}

thread_local! {
    static STACK: RefCell<Vec<Recording>> = const { RefCell::new(Vec::new()) };
}

/// Drop recordings whose statement ended without [`finish`] (an error).
fn purge_stale() {
    let level = crate::hooks::nesting_level();
    STACK.with(|s| s.borrow_mut().retain(|r| r.level < level));
}

/// A population is running (its plans must not go parallel).
pub fn active() -> bool {
    if STACK.with(|s| s.borrow().is_empty()) {
        return false;
    }
    purge_stale();
    STACK.with(|s| !s.borrow().is_empty())
}

/// Whether a query planned while a population runs must be planned without
/// parallelism: a parallel worker's nested statements would be out of this
/// backend's sight. Workers run only parallel-safe code, and PostgreSQL's
/// own functions that run queries (`query_to_xml`, `ts_stat`, …) are not
/// parallel safe; so a query that calls no user-defined function, operator
/// or aggregate and has no expression of a user-defined type (a domain, a
/// row type, a type with functions of its own) runs in workers nothing but
/// scans the leader's plan names, and keeps its parallel plan.
///
/// # Safety
/// `query` must be a valid Query about to be planned.
pub unsafe fn needs_serial_plan(query: *mut pg_sys::Query) -> bool {
    if query.is_null() {
        return true;
    }
    unsafe { pg_sys::query_tree_walker(query, Some(user_code), std::ptr::null_mut(), 0) }
}

fn user_defined(oid: pg_sys::Oid) -> bool {
    oid.to_u32() >= pg_sys::FirstNormalObjectId
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn user_function(func: pg_sys::Oid, _ctx: *mut std::ffi::c_void) -> bool {
    user_defined(func)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn user_code(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        let oid = match (*node).type_ {
            NodeTag::T_Query => {
                let q = node as *mut pg_sys::Query;
                return user_sort_operators(q)
                    || pg_sys::query_tree_walker(q, Some(user_code), ctx, 0);
            }
            NodeTag::T_Var => Some((*(node as *mut pg_sys::Var)).vartype),
            NodeTag::T_Const => Some((*(node as *mut pg_sys::Const)).consttype),
            NodeTag::T_Param => Some((*(node as *mut pg_sys::Param)).paramtype),
            NodeTag::T_CoerceToDomain => Some((*(node as *mut pg_sys::CoerceToDomain)).resulttype),
            NodeTag::T_RelabelType => Some((*(node as *mut pg_sys::RelabelType)).resulttype),
            NodeTag::T_RowExpr => Some((*(node as *mut pg_sys::RowExpr)).row_typeid),
            _ => None,
        };
        if oid.is_some_and(user_defined) {
            return true;
        }
        if pg_sys::check_functions_in_node(node, Some(user_function), ctx) {
            return true;
        }
        pg_sys::expression_tree_walker(node, Some(user_code), ctx)
    }
}

/// Whether the sort, group or distinct clauses of `q` (its windows' too)
/// use a user-defined operator: the walkers do not visit them.
unsafe fn user_sort_operators(q: *mut pg_sys::Query) -> bool {
    unsafe {
        let user = |list: *mut pg_sys::List| {
            PgList::<pg_sys::SortGroupClause>::from_pg(list)
                .iter_ptr()
                .any(|c| user_defined((*c).eqop) || user_defined((*c).sortop))
        };
        if user((*q).sortClause) || user((*q).groupClause) || user((*q).distinctClause) {
            return true;
        }
        PgList::<pg_sys::WindowClause>::from_pg((*q).windowClause)
            .iter_ptr()
            .any(|w| user((*w).partitionClause) || user((*w).orderClause))
    }
}

/// The CREATE MATERIALIZED VIEW a utility statement runs (also under
/// EXPLAIN ANALYZE), if any.
unsafe fn create_matview(node: *mut pg_sys::Node) -> Option<*mut pg_sys::CreateTableAsStmt> {
    unsafe {
        let node = if is_a(node, NodeTag::T_ExplainStmt) {
            let s = node as *mut pg_sys::ExplainStmt;
            let analyze = PgList::<pg_sys::DefElem>::from_pg((*s).options)
                .iter_ptr()
                .any(|o| {
                    super::cstr((*o).defname).as_deref() == Some("analyze")
                        && crate::extract::defelem_bool(o)
                });
            let q = (*s).query;
            if !analyze || !is_a(q, NodeTag::T_Query) {
                return None;
            }
            (*(q as *mut pg_sys::Query)).utilityStmt
        } else {
            node
        };
        if node.is_null() || !is_a(node, NodeTag::T_CreateTableAsStmt) {
            return None;
        }
        let s = node as *mut pg_sys::CreateTableAsStmt;
        ((*s).objtype == pg_sys::ObjectType::OBJECT_MATVIEW && !(*s).into.is_null()).then_some(s)
    }
}

/// Before a utility statement: start recording if it populates a
/// materialized view. Returns whether it does (then [`finish`] must follow).
///
/// # Safety
/// `node` must be a valid utility parse node.
pub unsafe fn begin(node: *mut pg_sys::Node) -> bool {
    purge_stale();
    let matview = unsafe {
        if is_a(node, NodeTag::T_RefreshMatViewStmt) {
            match crate::extract::range_var_relid(
                (*(node as *mut pg_sys::RefreshMatViewStmt)).relation,
            ) {
                Some(relid) => Some(relid),
                None => return false,
            }
        } else if let Some(s) = create_matview(node) {
            // IF NOT EXISTS of an existing view populates nothing
            if crate::extract::range_var_relid((*(*s).into).rel).is_some() {
                return false;
            }
            None
        } else {
            return false;
        }
    };
    // Where agent_guard is not installed there is nothing to record into, and
    // the population must plan exactly as without agent_guard (in parallel).
    if !crate::identity::extension_installed() {
        return false;
    }
    STACK.with(|s| {
        s.borrow_mut().push(Recording {
            level: crate::hooks::nesting_level(),
            matview,
            reads: BTreeMap::new(),
        })
    });
    true
}

/// At ExecutorStart while a population runs: note what the plan reads. In
/// an agent session, a plan reading masked columns (through the masks) is
/// refused.
///
/// # Safety
/// `pstmt` must be a valid `PlannedStmt`.
pub unsafe fn observe(pstmt: *mut pg_sys::PlannedStmt, agent: bool) -> Option<Refusal> {
    if !active() {
        return None;
    }
    let mut reads: Vec<(u32, Vec<i16>)> = vec![];
    let mut refusal = None;
    unsafe {
        for rte in PgList::<pg_sys::RangeTblEntry>::from_pg((*pstmt).rtable).iter_ptr() {
            if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION
                || !matches!((*rte).relkind as u8, b'r' | b'p' | b'm' | b'f')
                || pg_sys::get_rel_persistence((*rte).relid) as u8 == b't'
            {
                continue;
            }
            let cols: Vec<i16> =
                crate::extract::bitmap_members(crate::compat::rte_columns(pstmt, rte)[0])
                    .into_iter()
                    .filter(|a| *a >= 0)
                    .map(|a| a as i16)
                    .collect();
            if super::rewrite::is_marked(rte) {
                // an agent's read through the masks: a copy of masks (as
                // CREATE TABLE AS makes), but a REFRESH would put masks in
                // place of the values humans read there
                if agent && refusal.is_none() && refreshing() {
                    let rules = super::rules::rules();
                    if let Some(m) = rules.relation((*rte).relid) {
                        if cols.iter().any(|a| *a == 0 || m.masks(*a)) {
                            refusal = Some(masked_population((*rte).relid));
                        }
                    }
                }
                continue;
            }
            if !cols.is_empty() {
                reads.push(((*rte).relid.to_u32(), cols));
            }
        }
    }
    STACK.with(|s| {
        for r in s.borrow_mut().iter_mut() {
            for (rel, cols) in &reads {
                if Some(pg_sys::Oid::from(*rel)) == r.matview {
                    continue; // REFRESH CONCURRENTLY compares with the view's old contents
                }
                r.reads
                    .entry(*rel)
                    .or_default()
                    .extend(cols.iter().copied());
            }
        }
    });
    refusal
}

/// A REFRESH is among the running populations.
fn refreshing() -> bool {
    STACK.with(|s| s.borrow().iter().any(|r| r.matview.is_some()))
}

fn masked_population(relid: pg_sys::Oid) -> Refusal {
    let name = crate::extract::relation(relid).qualified();
    Refusal {
        message: format!(
            "agents may not refresh a materialized view from masked columns of {name}"
        ),
        detail: format!(
            "Refreshed by an agent, the view would hold the masked values agents read of {name} in place of real ones, for every reader."
        ),
        hint: "A human can refresh it.".into(),
        code: "masked_refresh",
    }
}

/// After the populating statement succeeded: replace the view's record.
///
/// # Safety
/// `node` must be the statement's utility parse node.
pub unsafe fn finish(node: *mut pg_sys::Node) {
    let level = crate::hooks::nesting_level();
    let Some(rec) = STACK.with(|s| {
        let mut s = s.borrow_mut();
        let i = s.iter().rposition(|r| r.level == level)?;
        let rec = s.remove(i);
        s.retain(|r| r.level < level);
        Some(rec)
    }) else {
        return;
    };
    let matview = rec.matview.or_else(|| unsafe {
        create_matview(node).and_then(|s| crate::extract::range_var_relid((*(*s).into).rel))
    });
    let Some(matview) = matview else { return };
    if unsafe { pg_sys::get_rel_relkind(matview) } as u8 != b'm' {
        return;
    }
    if unsafe { write(matview, &rec.reads) } {
        crate::shmem::bump_at_commit();
    }
}

fn table(name: &str) -> Option<pg_sys::Oid> {
    if unsafe { pg_sys::creating_extension } || !crate::identity::extension_installed() {
        return None;
    }
    super::relation_oid(agent_guard_core::GUARD_SCHEMA, name)
}

/// Delete the rows of `matview` from `rel` (column 1 is the view's oid),
/// and the rows of views that no longer exist.
unsafe fn delete_rows(rel: pg_sys::Relation, matview: pg_sys::Oid) {
    unsafe {
        let mut tids = vec![];
        crate::catalog::scan((*rel).rd_id.to_u32(), None, &[], |t| {
            let view = t.oid(1);
            if view == matview {
                tids.push((t.tid(), true));
            } else if pg_sys::get_rel_relkind(view) as u8 != b'm' {
                tids.push((t.tid(), false));
            }
        });
        for (mut tid, own) in tids {
            let mut tmfd = pg_sys::TM_FailureData::default();
            // The view's own rows: populations of one view are serialised by
            // its lock. Rows of dropped views: left to whoever holds them.
            // A row another transaction deleted meanwhile is gone already.
            pg_sys::heap_delete(
                rel,
                &mut tid,
                pg_sys::GetCurrentCommandId(true),
                std::ptr::null_mut(),
                own,
                &mut tmfd,
                false,
            );
        }
    }
}

unsafe fn insert(rel: pg_sys::Relation, values: &mut [pg_sys::Datum]) {
    unsafe {
        let mut nulls = vec![false; values.len()];
        let tup = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tup);
        pg_sys::heap_freetuple(tup);
    }
}

/// Write the record of one population; false if agent_guard's tables are missing.
unsafe fn write(matview: pg_sys::Oid, reads: &BTreeMap<u32, BTreeSet<i16>>) -> bool {
    let (Some(populations), Some(read_table)) = (table(POPULATIONS), table(READS)) else {
        return false;
    };
    unsafe {
        let lock = pg_sys::RowExclusiveLock as i32;
        let p = pg_sys::table_open(populations, lock);
        let r = pg_sys::table_open(read_table, lock);
        delete_rows(p, matview);
        delete_rows(r, matview);
        insert(
            p,
            &mut [
                pg_sys::Datum::from(matview),
                pg_sys::Datum::from(pg_sys::GetCurrentTimestamp()),
                pg_sys::Datum::from(pg_sys::GetSessionUserId()),
            ],
        );
        for (rel, cols) in reads {
            let mut elems: Vec<pg_sys::Datum> =
                cols.iter().map(|c| pg_sys::Datum::from(*c)).collect();
            let array = pg_sys::construct_array(
                elems.as_mut_ptr(),
                elems.len() as i32,
                pg_sys::INT2OID,
                2,
                true,
                pg_sys::TYPALIGN_SHORT as std::ffi::c_char,
            );
            insert(
                r,
                &mut [
                    pg_sys::Datum::from(matview),
                    pg_sys::Datum::from(pg_sys::Oid::from(*rel)),
                    pg_sys::Datum::from(array),
                ],
            );
        }
        pg_sys::table_close(r, pg_sys::NoLock as i32);
        pg_sys::table_close(p, pg_sys::NoLock as i32);
    }
    true
}

/// The recorded populations: view -> (relation, columns read).
pub fn records() -> HashMap<pg_sys::Oid, Vec<(pg_sys::Oid, Vec<i16>)>> {
    let mut out: HashMap<pg_sys::Oid, Vec<(pg_sys::Oid, Vec<i16>)>> = HashMap::new();
    let (Some(populations), Some(reads)) = (table(POPULATIONS), table(READS)) else {
        return out;
    };
    crate::catalog::scan(populations.to_u32(), None, &[], |t| {
        out.entry(t.oid(1)).or_default();
    });
    crate::catalog::scan(reads.to_u32(), None, &[], |t| {
        if let Some(v) = out.get_mut(&t.oid(1)) {
            v.push((t.oid(2), t.int2_array(3)));
        }
    });
    out
}
