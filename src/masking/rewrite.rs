//! The rewrite of an agent's query, in the planner hook, after PostgreSQL's
//! rewriter has expanded views and applied row-level security.
//!
//! Every range-table entry — at any depth: subqueries, expanded views and
//! views on views, CTEs, sublinks, the SELECT of `INSERT … SELECT` — that
//! reads a masked column of a masked relation becomes a subquery
//!
//! ```text
//! SELECT <mask or column for each attribute, dropped ones as NULL> FROM <the original entry>
//! ```
//!
//! whose expressions are the masking view's (`agent_guard_masked`), and whose
//! single range-table entry is a copy of the original one: same relation,
//! inheritance, TABLESAMPLE, lock mode, permission checks (as the same user,
//! e.g. a view's owner), selected columns and row-level security quals. The
//! output columns line up with the relation's attribute numbers, so every Var
//! of the query — join aliases, whole-row references, outer references from
//! sublinks — keeps pointing at the same column, now masked. WHERE, ORDER BY,
//! GROUP BY, joins and aggregates therefore see masked values only.
//!
//! The result relation of an INSERT/UPDATE/DELETE/MERGE stays the table
//! itself (rows are written, never masked values back): references to its
//! masked columns in WHERE, RETURNING, SET expressions of other columns,
//! ON CONFLICT and MERGE actions are replaced by the masks. An assignment to
//! a masked column computed from masked data — of any row or relation — is
//! refused before the rewrite (writeback.rs): it would write a mask back.
//!
//! Every masked entry is marked (`security_barrier` on a relation entry,
//! which PostgreSQL uses for subqueries only); the executor backstop refuses
//! any plan that reads a masked column through an unmarked entry.

use super::label::attributes;
use super::rules::{MaskedRelation, Rules};
use pgrx::pg_sys::{self, NodeTag};
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::c_void;

struct Walk<'a> {
    rules: &'a Rules,
    views: Vec<pg_sys::Oid>,
}

/// Whether a relation entry was masked by [`mask_query`].
pub fn is_marked(rte: *const pg_sys::RangeTblEntry) -> bool {
    unsafe { (*rte).security_barrier }
}

/// Mask an agent's query in place; returns the masking views it used (the
/// plan must be invalidated when they change).
///
/// # Safety
/// `query` must be a valid, rewritten `Query` about to be planned.
pub unsafe fn mask_query(query: *mut pg_sys::Query) -> Vec<pg_sys::Oid> {
    if query.is_null() || unsafe { (*query).commandType } == pg_sys::CmdType::CMD_UTILITY {
        return vec![];
    }
    let rules = super::rules::rules();
    // Masks are never written back (before the rewrite: the tree as the
    // statement wrote it).
    if let Some(r) = unsafe { super::writeback::refusal(query, &rules) } {
        crate::enforce::refuse(&r);
    }
    let mut w = Walk {
        rules: &rules,
        views: vec![],
    };
    unsafe { visit_query(query, &mut w) };
    w.views.sort_by_key(|o| o.to_u32());
    w.views.dedup();
    w.views
}

/// Record the masking views in the plan's dependencies.
///
/// # Safety
/// `stmt` must be a valid `PlannedStmt` (or null).
pub unsafe fn add_dependencies(stmt: *mut pg_sys::PlannedStmt, views: &[pg_sys::Oid]) {
    if stmt.is_null() {
        return;
    }
    for v in views {
        unsafe { (*stmt).relationOids = pg_sys::lappend_oid((*stmt).relationOids, *v) };
    }
}

unsafe fn walk_expr(node: *mut pg_sys::Node, w: &mut Walk) {
    if !node.is_null() {
        unsafe { expr_walker(node, w as *mut Walk as *mut c_void) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn expr_walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        if (*node).type_ == NodeTag::T_Query {
            visit_query(node as *mut pg_sys::Query, &mut *(ctx as *mut Walk));
            return false;
        }
        if (*node).type_ == NodeTag::T_FuncExpr {
            // other sessions' query texts are read only through FROM (activity.rs)
            let func = (*(node as *mut pg_sys::FuncExpr)).funcid;
            if super::activity::query_text(func).is_some() {
                crate::enforce::refuse(&super::activity::refusal(func));
            }
        }
        pg_sys::expression_tree_walker(node, Some(expr_walker), ctx)
    }
}

/// Visit every query below `q` (subqueries, CTEs, sublinks), then mask `q`'s
/// own range table. Row-level security quals and WITH CHECK OPTIONs are left
/// alone: they are the owner's rules and see real values.
unsafe fn visit_query(q: *mut pg_sys::Query, w: &mut Walk) {
    unsafe {
        for node in [
            (*q).targetList as *mut pg_sys::Node,
            (*q).returningList as *mut pg_sys::Node,
            (*q).jointree as *mut pg_sys::Node,
            (*q).havingQual,
            (*q).limitOffset,
            (*q).limitCount,
            (*q).onConflict as *mut pg_sys::Node,
            (*q).mergeActionList as *mut pg_sys::Node,
            (*q).cteList as *mut pg_sys::Node,
        ] {
            walk_expr(node, w);
        }
        for rte in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).iter_ptr() {
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_SUBQUERY => visit_query((*rte).subquery, w),
                pg_sys::RTEKind::RTE_FUNCTION => {
                    // a call of a query-text function becomes a redacting subquery
                    let redacted = super::activity::mask_function_entry(rte, |n| walk_expr(n, w));
                    if !redacted {
                        walk_expr((*rte).functions as *mut pg_sys::Node, w)
                    }
                }
                pg_sys::RTEKind::RTE_TABLEFUNC => {
                    walk_expr((*rte).tablefunc as *mut pg_sys::Node, w)
                }
                pg_sys::RTEKind::RTE_VALUES => {
                    walk_expr((*rte).values_lists as *mut pg_sys::Node, w)
                }
                _ => {}
            }
        }
        mask_level(q, w);
    }
}

unsafe fn maskable_kind(rte: *mut pg_sys::RangeTblEntry) -> bool {
    matches!(unsafe { (*rte).relkind } as u8, b'r' | b'p' | b'm' | b'f')
}

/// Whether the entry reads a masked column (or the whole row).
unsafe fn reads_masked(
    q: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
    m: &MaskedRelation,
) -> bool {
    let selected = unsafe { crate::compat::query_rte_selected(q, rte) };
    let mut i = -1;
    loop {
        i = unsafe { pg_sys::bms_next_member(selected, i) };
        if i < 0 {
            return false;
        }
        let attno = (i + pg_sys::FirstLowInvalidHeapAttributeNumber) as i16;
        if attno == 0 || m.masks(attno) {
            return true;
        }
    }
}

unsafe fn mask_level(q: *mut pg_sys::Query, w: &mut Walk) {
    unsafe {
        let excluded = if (*q).onConflict.is_null() {
            0
        } else {
            (*(*q).onConflict).exclRelIndex
        };
        let entries: Vec<*mut pg_sys::RangeTblEntry> =
            PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable)
                .iter_ptr()
                .collect();
        for (i, rte) in entries.into_iter().enumerate() {
            let rti = i as i32 + 1;
            if rti == excluded {
                // ON CONFLICT's EXCLUDED (a relation entry of relkind 'c'): the
                // row the statement itself proposes
                (*rte).security_barrier = true;
                continue;
            }
            if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION
                || is_marked(rte)
                || !maskable_kind(rte)
            {
                continue;
            }
            let Some(m) = w.rules.relation((*rte).relid) else {
                continue;
            };
            let m = m.clone();
            if rti == (*q).resultRelation {
                mask_result_relation(q, rti, rte, &m, w);
            } else if reads_masked(q, rte, &m) {
                replace_with_masking_subquery(q, rti, rte, &m, w);
            }
        }
    }
}

fn out_of_date(relid: pg_sys::Oid, why: &str) -> ! {
    let name = crate::extract::relation(relid).qualified();
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("agent_guard cannot mask {name} for this agent session: {why}"),
        "agent_guard",
    )
    .set_hint("A superuser can regenerate the masking views with SELECT agent_guard.refresh_masking_views();")
    .report(pgrx::PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Every Var of `node` is `varno`.`attnum` at level 0 (attnum 0: any attribute).
#[pg_guard]
unsafe extern "C-unwind" fn only_vars_of(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        if (*node).type_ == NodeTag::T_Var {
            let v = node as *mut pg_sys::Var;
            let (varno, attnum) = *(ctx as *const (i32, i16));
            return !((*v).varno == varno
                && (*v).varlevelsup == 0
                && (attnum == 0 || (*v).varattno == attnum));
        }
        pg_sys::expression_tree_walker(node, Some(only_vars_of), ctx)
    }
}

unsafe fn is_var(node: *mut pg_sys::Node, varno: i32, attnum: i16) -> bool {
    unsafe {
        !node.is_null()
            && (*node).type_ == NodeTag::T_Var
            && (*(node as *mut pg_sys::Var)).varno == varno
            && (*(node as *mut pg_sys::Var)).varattno == attnum
            && (*(node as *mut pg_sys::Var)).varlevelsup == 0
    }
}

/// One expression per attribute of the relation (index attnum - 1), reading
/// from range-table index 1: the column itself, its mask, or NULL for a
/// dropped column.
unsafe fn column_expressions(
    relid: pg_sys::Oid,
    m: &MaskedRelation,
    w: &mut Walk,
) -> Vec<(*mut pg_sys::Node, String)> {
    unsafe {
        let rel = pg_sys::relation_open(relid, pg_sys::NoLock as i32);
        let atts = attributes(rel);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        let var = |attnum: i16, a: &super::label::Attribute| {
            pg_sys::makeVar(1, attnum, a.type_oid, a.typmod, a.collation, 0) as *mut pg_sys::Node
        };
        let dropped =
            || pg_sys::makeNullConst(pg_sys::INT4OID, -1, pg_sys::InvalidOid) as *mut pg_sys::Node;
        if m.builtin {
            return atts
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let attnum = i as i16 + 1;
                    let e = if a.dropped {
                        dropped()
                    } else if m.masks(attnum) {
                        pg_sys::makeNullConst(a.type_oid, a.typmod, a.collation)
                            as *mut pg_sys::Node
                    } else {
                        var(attnum, a)
                    };
                    (e, a.name.clone())
                })
                .collect();
        }
        let Some(view) = m.view else {
            out_of_date(relid, "its masking view is missing")
        };
        let vrel = pg_sys::relation_open(view, pg_sys::AccessShareLock as i32);
        let vq = pg_sys::get_view_query(vrel);
        let base = PgList::<pg_sys::RangeTblEntry>::from_pg((*vq).rtable)
            .iter_ptr()
            .position(|r| (*r).rtekind == pg_sys::RTEKind::RTE_RELATION && (*r).relid == relid)
            .map(|p| p as i32 + 1);
        let tles: Vec<*mut pg_sys::TargetEntry> =
            PgList::<pg_sys::TargetEntry>::from_pg((*vq).targetList)
                .iter_ptr()
                .filter(|t| !(**t).resjunk)
                .collect();
        let live = atts.iter().filter(|a| !a.dropped).count();
        let Some(base) = base.filter(|_| tles.len() == live) else {
            pg_sys::relation_close(vrel, pg_sys::NoLock as i32);
            out_of_date(relid, "its masking view does not match the table")
        };
        let mut out = Vec::with_capacity(atts.len());
        let mut k = 0;
        for (i, a) in atts.iter().enumerate() {
            let attnum = i as i16 + 1;
            if a.dropped {
                out.push((dropped(), a.name.clone()));
                continue;
            }
            let expr = (*tles[k]).expr as *mut pg_sys::Node;
            k += 1;
            let masked = m.masks(attnum);
            let mut want = (base, attnum);
            let in_sync = pg_sys::exprType(expr) == a.type_oid
                && !only_vars_of(expr, &mut want as *mut (i32, i16) as *mut c_void)
                && (masked != is_var(expr, base, attnum));
            if !in_sync {
                pg_sys::relation_close(vrel, pg_sys::NoLock as i32);
                out_of_date(
                    relid,
                    &format!(
                        "its masking view does not match column {}",
                        super::quote_identifier(&a.name)
                    ),
                );
            }
            let copy = pg_sys::copyObjectImpl(expr as *const c_void) as *mut pg_sys::Node;
            pg_sys::ChangeVarNodes(copy, base, 1, 0);
            out.push((copy, a.name.clone()));
        }
        pg_sys::relation_close(vrel, pg_sys::NoLock as i32);
        w.views.push(view);
        out
    }
}

unsafe fn list_of(items: &[*mut c_void]) -> *mut pg_sys::List {
    let mut list: *mut pg_sys::List = std::ptr::null_mut();
    for i in items {
        list = unsafe { pg_sys::lappend(list, *i) };
    }
    list
}

/// A parent read with its partitions whose own labels it lacks: its rows
/// would arrive with the parent's masks only.
unsafe fn refuse_if_children_mask_more(rte: *mut pg_sys::RangeTblEntry, w: &Walk) {
    unsafe {
        if (*rte).inh && w.rules.children_mask_more((*rte).relid) {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "agents cannot read {} as a whole: some of its partitions or child tables mask columns it does not",
                    crate::extract::relation((*rte).relid).qualified()
                ),
                "Label those columns on the parent too, or read the partitions themselves."
            );
        }
    }
}

/// Turn entry `rti` of `q` into `SELECT <masks> FROM <copy of the entry>`.
unsafe fn replace_with_masking_subquery(
    q: *mut pg_sys::Query,
    rti: i32,
    rte: *mut pg_sys::RangeTblEntry,
    m: &MaskedRelation,
    w: &mut Walk,
) {
    unsafe {
        refuse_if_children_mask_more(rte, w);
        let exprs = column_expressions((*rte).relid, m, w);
        let inner = pg_sys::copyObjectImpl(rte as *const c_void) as *mut pg_sys::RangeTblEntry;
        (*inner).security_barrier = true;
        if !(*inner).securityQuals.is_null() {
            pg_sys::ChangeVarNodes((*inner).securityQuals as *mut pg_sys::Node, rti, 1, 0);
        }
        let sub = pg_sys::palloc0(std::mem::size_of::<pg_sys::Query>()) as *mut pg_sys::Query;
        (*sub).type_ = NodeTag::T_Query;
        (*sub).commandType = pg_sys::CmdType::CMD_SELECT;
        (*sub).querySource = pg_sys::QuerySource::QSRC_ORIGINAL;
        (*sub).canSetTag = true;
        (*sub).stmt_location = -1;
        (*sub).rtable = list_of(&[inner as *mut c_void]);
        let rtr =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
        (*rtr).type_ = NodeTag::T_RangeTblRef;
        (*rtr).rtindex = 1;
        (*sub).jointree =
            pg_sys::makeFromExpr(list_of(&[rtr as *mut c_void]), std::ptr::null_mut());
        let mut tlist: Vec<*mut c_void> = vec![];
        for (i, (e, name)) in exprs.into_iter().enumerate() {
            let cname = std::ffi::CString::new(name).unwrap_or_default();
            tlist.push(pg_sys::makeTargetEntry(
                e as *mut pg_sys::Expr,
                (i + 1) as i16,
                pg_sys::pstrdup(cname.as_ptr()),
                false,
            ) as *mut c_void);
        }
        // System columns (ctid, xmin, tableoid, ...) the query reads pass
        // through as extra columns after the attributes, junk where the
        // planner's pull-up reads junk columns (see compat); the query's Vars
        // are pointed at them.
        let natts = tlist.len() as i16;
        let selected = crate::extract::bitmap_members(crate::compat::query_rte_selected(q, rte));
        let system: Vec<i16> = selected
            .iter()
            .map(|m| *m as i16)
            .filter(|a| *a < 0)
            .collect();
        let junk = crate::compat::PULLUP_READS_JUNK_COLUMNS;
        if !system.is_empty() && !junk && selected.contains(&0) {
            // As ordinary outputs, the system columns would become fields of
            // the whole-row value too.
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "agents cannot read system columns and whole rows of masked relation {} in one query level",
                    crate::extract::relation((*rte).relid).qualified()
                ),
                "Read the columns by name instead of the whole row."
            );
        }
        if !system.is_empty() {
            // A locked (FOR UPDATE/SHARE) subquery is not flattened into the
            // query, and its junk columns cannot be read from outside.
            let locked = PgList::<pg_sys::RowMarkClause>::from_pg((*q).rowMarks)
                .iter_ptr()
                .any(|rc| (*rc).rti as i32 == rti);
            if locked {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "agents cannot read system columns of masked relation {} with FOR UPDATE/SHARE",
                        crate::extract::relation((*rte).relid).qualified()
                    )
                );
            }
            let mut map = vec![];
            for (k, attno) in system.iter().enumerate() {
                let (typ, name) = system_column(*attno);
                let resno = natts + 1 + k as i16;
                let cname = std::ffi::CString::new(name).unwrap_or_default();
                tlist.push(pg_sys::makeTargetEntry(
                    pg_sys::makeVar(1, *attno, typ, -1, pg_sys::InvalidOid, 0) as *mut pg_sys::Expr,
                    resno,
                    pg_sys::pstrdup(cname.as_ptr()),
                    junk,
                ) as *mut c_void);
                map.push((*attno, resno));
            }
            remap_system_columns(q, rti, &map);
        }
        (*sub).targetList = list_of(&tlist);
        (*sub).hasSubLinks = !(*inner).securityQuals.is_null()
            && pg_sys::checkExprHasSubLink((*inner).securityQuals as *mut pg_sys::Node);
        // FOR UPDATE/SHARE of the entry locks the rows of the relation below.
        for rc in PgList::<pg_sys::RowMarkClause>::from_pg((*q).rowMarks).iter_ptr() {
            if (*rc).rti as i32 == rti {
                let inner_rc = pg_sys::palloc0(std::mem::size_of::<pg_sys::RowMarkClause>())
                    as *mut pg_sys::RowMarkClause;
                (*inner_rc).type_ = NodeTag::T_RowMarkClause;
                (*inner_rc).rti = 1;
                (*inner_rc).strength = (*rc).strength;
                (*inner_rc).waitPolicy = (*rc).waitPolicy;
                (*inner_rc).pushedDown = true;
                (*sub).rowMarks = list_of(&[inner_rc as *mut c_void]);
                (*sub).hasForUpdate = true;
            }
        }
        (*rte).rtekind = pg_sys::RTEKind::RTE_SUBQUERY;
        (*rte).subquery = sub;
        (*rte).security_barrier = false;
        (*rte).relid = pg_sys::InvalidOid;
        (*rte).relkind = 0;
        (*rte).rellockmode = 0;
        (*rte).tablesample = std::ptr::null_mut();
        (*rte).inh = false;
        crate::compat::move_permission_checks(q, rte, inner, sub);
        (*rte).securityQuals = std::ptr::null_mut();
    }
}

/// Type and name of a system column.
fn system_column(attno: i16) -> (pg_sys::Oid, &'static str) {
    match attno {
        -1 => (pg_sys::TIDOID, "ctid"),
        -2 => (pg_sys::XIDOID, "xmin"),
        -3 => (pg_sys::CIDOID, "cmin"),
        -4 => (pg_sys::XIDOID, "xmax"),
        -5 => (pg_sys::CIDOID, "cmax"),
        _ => (pg_sys::OIDOID, "tableoid"),
    }
}

struct Remap<'a> {
    varno: i32,
    level: u32,
    map: &'a [(i16, i16)],
}

#[pg_guard]
unsafe extern "C-unwind" fn remap_walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        let c = &mut *(ctx as *mut Remap);
        match (*node).type_ {
            NodeTag::T_Var => {
                let v = node as *mut pg_sys::Var;
                if (*v).varno == c.varno && (*v).varlevelsup == c.level {
                    if let Some((_, to)) = c.map.iter().find(|(from, _)| *from == (*v).varattno) {
                        (*v).varattno = *to;
                        (*v).varattnosyn = *to;
                    }
                }
                false
            }
            NodeTag::T_Query => {
                c.level += 1;
                pg_sys::query_tree_walker(node as *mut pg_sys::Query, Some(remap_walker), ctx, 0);
                c.level -= 1;
                false
            }
            _ => pg_sys::expression_tree_walker(node, Some(remap_walker), ctx),
        }
    }
}

/// Point the query's references to system columns of entry `rti` at the
/// masking subquery's junk columns (not the entry's own row-security quals,
/// which move into the subquery with it).
unsafe fn remap_system_columns(q: *mut pg_sys::Query, rti: i32, map: &[(i16, i16)]) {
    unsafe {
        let mut ctx = Remap {
            varno: rti,
            level: 0,
            map,
        };
        let ctx = &mut ctx as *mut Remap as *mut c_void;
        for node in [
            (*q).targetList as *mut pg_sys::Node,
            (*q).returningList as *mut pg_sys::Node,
            (*q).jointree as *mut pg_sys::Node,
            (*q).havingQual,
            (*q).limitOffset,
            (*q).limitCount,
            (*q).onConflict as *mut pg_sys::Node,
            (*q).mergeActionList as *mut pg_sys::Node,
            (*q).cteList as *mut pg_sys::Node,
            (*q).withCheckOptions as *mut pg_sys::Node,
        ] {
            remap_walker(node, ctx);
        }
        for rte in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).iter_ptr() {
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_SUBQUERY => {
                    remap_walker((*rte).subquery as *mut pg_sys::Node, ctx);
                }
                pg_sys::RTEKind::RTE_FUNCTION => {
                    remap_walker((*rte).functions as *mut pg_sys::Node, ctx);
                }
                pg_sys::RTEKind::RTE_TABLEFUNC => {
                    remap_walker((*rte).tablefunc as *mut pg_sys::Node, ctx);
                }
                pg_sys::RTEKind::RTE_VALUES => {
                    remap_walker((*rte).values_lists as *mut pg_sys::Node, ctx);
                }
                _ => {}
            }
        }
    }
}

/// Mask the references to the result relation's masked columns.
unsafe fn mask_result_relation(
    q: *mut pg_sys::Query,
    rti: i32,
    rte: *mut pg_sys::RangeTblEntry,
    m: &MaskedRelation,
    w: &mut Walk,
) {
    unsafe {
        refuse_if_children_mask_more(rte, w);
        let relid = (*rte).relid;
        let exprs = column_expressions(relid, m, w);
        let mut tlist: Vec<*mut c_void> = vec![];
        for (attnum, _) in &m.columns {
            let Some((e, name)) = exprs.get((*attnum - 1) as usize) else {
                continue;
            };
            pg_sys::ChangeVarNodes(*e, 1, rti, 0);
            let cname = std::ffi::CString::new(name.as_str()).unwrap_or_default();
            tlist.push(pg_sys::makeTargetEntry(
                *e as *mut pg_sys::Expr,
                *attnum,
                pg_sys::pstrdup(cname.as_ptr()),
                false,
            ) as *mut c_void);
        }
        let tlist = list_of(&tlist);
        let mut sublinks = false;
        let replace = |node: *mut pg_sys::Node, sublinks: &mut bool| -> *mut pg_sys::Node {
            if node.is_null() {
                return node;
            }
            crate::compat::replace_vars_from_target_list(
                node,
                rti,
                0,
                rte,
                tlist,
                rti,
                pg_sys::ReplaceVarsNoMatchOption::REPLACEVARS_CHANGE_VARNO,
                rti,
                sublinks,
            )
        };
        (*q).jointree =
            replace((*q).jointree as *mut pg_sys::Node, &mut sublinks) as *mut pg_sys::FromExpr;
        (*q).returningList =
            replace((*q).returningList as *mut pg_sys::Node, &mut sublinks) as *mut pg_sys::List;
        if (*q).commandType == pg_sys::CmdType::CMD_UPDATE {
            (*q).targetList =
                replace((*q).targetList as *mut pg_sys::Node, &mut sublinks) as *mut pg_sys::List;
        }
        if !(*q).onConflict.is_null() {
            let oc = (*q).onConflict;
            (*oc).onConflictSet = replace((*oc).onConflictSet as *mut pg_sys::Node, &mut sublinks)
                as *mut pg_sys::List;
            (*oc).onConflictWhere = replace((*oc).onConflictWhere, &mut sublinks);
        }
        for action in PgList::<pg_sys::MergeAction>::from_pg((*q).mergeActionList).iter_ptr() {
            (*action).qual = replace((*action).qual, &mut sublinks);
            (*action).targetList = replace((*action).targetList as *mut pg_sys::Node, &mut sublinks)
                as *mut pg_sys::List;
        }
        if sublinks {
            (*q).hasSubLinks = true;
        }
        (*rte).security_barrier = true;
    }
}

/// A set-returning SQL function, which the planner could inline into the
/// calling query (after the planner hook has run).
pub fn inlinable_sql_srf(fn_oid: pg_sys::Oid) -> bool {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(fn_oid),
        );
        if tup.is_null() {
            return false;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tup);
        // pg_language "sql" (SQLlanguageId in pg_language.dat)
        const SQL_LANGUAGE: u32 = 14;
        let srf = (*form).prolang == pg_sys::Oid::from(SQL_LANGUAGE) && (*form).proretset;
        pg_sys::ReleaseSysCache(tup);
        srf
    }
}
