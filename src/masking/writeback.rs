//! Masks are never written back into real data.
//!
//! An agent reads masked columns only masked, so whatever its write assigns
//! to a masked column from masked data would store a mask in place of a
//! value (`************5559` in a card column). Before the masking rewrite,
//! every assignment of an agent's INSERT, UPDATE, `ON CONFLICT DO UPDATE`
//! and MERGE action (also in writable CTEs) to a masked column of its
//! target is followed back through the Query tree, as the rewriter left it:
//!
//! - a Var is resolved through its range-table entry: a masked column (or
//!   the whole row) of a masked relation — the target's own row, another
//!   row through `UPDATE … FROM`, another masked table — reads masks; a
//!   subquery, view, set operation, CTE (recursive ones too) or writable
//!   CTE's RETURNING is followed to the output column the Var names; a join
//!   alias to the column it stands for; a VALUES list to its expressions;
//!   `EXCLUDED` to the row the INSERT proposes;
//! - a sub-select (`SET c = (SELECT …)`, `SET (a, b) = (SELECT …)`) is
//!   followed to its output columns;
//! - a function could read anything (its body is planned later, or is
//!   PL/pgSQL): only IMMUTABLE functions written in C or internal code are
//!   taken to compute from their arguments alone; any other function call
//!   (set-returning functions in FROM included) counts as reading masks.
//!
//! Such an assignment is refused (42501). Columns the statement does not
//! assign keep their real values (rewrite.rs), and masked values may still
//! be copied into unmasked columns and other tables (they are masks there).

use super::rules::Rules;
use agent_guard_core::Refusal;
use pgrx::pg_sys::{self, NodeTag};
use pgrx::prelude::*;
use pgrx::PgList;
use std::collections::HashSet;
use std::ffi::c_void;

struct Lineage<'a> {
    rules: &'a Rules,
    /// The queries around the expression being followed, innermost last.
    stack: Vec<*mut pg_sys::Query>,
    /// (query, column) being followed: recursive CTEs refer to themselves.
    following: HashSet<(usize, i16)>,
}

/// The refusal for an agent's write that would store masks in a masked
/// column, if any.
///
/// # Safety
/// `query` must be a valid, rewritten `Query` about to be planned.
pub unsafe fn refusal(query: *mut pg_sys::Query, rules: &Rules) -> Option<Refusal> {
    unsafe {
        if let Some(r) = check_write(query, rules) {
            return Some(r);
        }
        for cte in PgList::<pg_sys::CommonTableExpr>::from_pg((*query).cteList).iter_ptr() {
            let q = (*cte).ctequery as *mut pg_sys::Query;
            if !q.is_null() && (*q).type_ == NodeTag::T_Query {
                if let Some(r) = refusal(q, rules) {
                    return Some(r);
                }
            }
        }
        None
    }
}

unsafe fn rte(q: *mut pg_sys::Query, index: i32) -> Option<*mut pg_sys::RangeTblEntry> {
    let list = PgList::<pg_sys::RangeTblEntry>::from_pg(unsafe { (*q).rtable });
    usize::try_from(index - 1)
        .ok()
        .and_then(|i| list.get_ptr(i))
}

unsafe fn check_write(q: *mut pg_sys::Query, rules: &Rules) -> Option<Refusal> {
    use pg_sys::CmdType::*;
    unsafe {
        let command = (*q).commandType;
        if !matches!(command, CMD_INSERT | CMD_UPDATE | CMD_MERGE) || (*q).resultRelation <= 0 {
            return None;
        }
        let target = rte(q, (*q).resultRelation)?;
        if (*target).rtekind != pg_sys::RTEKind::RTE_RELATION {
            return None;
        }
        let relid = (*target).relid;
        let m = rules.relation(relid)?;
        // INSERT: columns the statement names (the rewriter adds the
        // owner's defaults for the others)
        let inserted: Vec<i32> =
            crate::extract::bitmap_members(crate::compat::query_rte_columns(q, target)[1]);
        let mut lists: Vec<(*mut pg_sys::List, bool)> = vec![];
        match command {
            CMD_INSERT => lists.push(((*q).targetList, true)),
            CMD_UPDATE => lists.push(((*q).targetList, false)),
            _ => {}
        }
        if !(*q).onConflict.is_null() {
            lists.push(((*(*q).onConflict).onConflictSet, false));
        }
        for action in PgList::<pg_sys::MergeAction>::from_pg((*q).mergeActionList).iter_ptr() {
            let insert = (*action).commandType == CMD_INSERT;
            lists.push(((*action).targetList, insert));
        }
        let mut lineage = Lineage {
            rules,
            stack: vec![q],
            following: HashSet::new(),
        };
        for (list, insert) in lists {
            for tle in PgList::<pg_sys::TargetEntry>::from_pg(list).iter_ptr() {
                let resno = (*tle).resno;
                if (*tle).resjunk
                    || !m.masks(resno)
                    || (insert && !inserted.contains(&(resno as i32)))
                {
                    continue;
                }
                if lineage.expr((*tle).expr as *mut pg_sys::Node) {
                    let column =
                        super::cstr(pg_sys::get_attname(relid, resno, true)).unwrap_or_default();
                    let name = crate::extract::relation(relid).qualified();
                    let column = super::quote_identifier(&column);
                    return Some(Refusal {
                        message: format!(
                            "agent may not assign to masked column {name}.{column} a value computed from masked data"
                        ),
                        detail: format!(
                            "Agents read masked columns only masked: the value assigned to {column} is computed from masked columns (of this or another row or relation, through a subquery, CTE or view) or by a function that may read them, so {name} would store a mask in place of real data."
                        ),
                        hint: "Assign a literal, a parameter or an expression of immutable built-in functions of values that are not masked; or leave the column out of the statement.".into(),
                        code: "masked_writeback",
                    });
                }
            }
        }
        None
    }
}

impl Lineage<'_> {
    /// Whether the expression (in the innermost query of the stack) may carry masked values.
    unsafe fn expr(&mut self, node: *mut pg_sys::Node) -> bool {
        !node.is_null() && unsafe { walker(node, self as *mut Lineage as *mut c_void) }
    }

    /// Follow `f` with `sub` as the innermost query, nested in the query at `outer`.
    unsafe fn inside(
        &mut self,
        outer: usize,
        sub: *mut pg_sys::Query,
        f: impl FnOnce(&mut Self) -> bool,
    ) -> bool {
        let saved = self.stack.split_off(outer + 1);
        self.stack.push(sub);
        let found = f(self);
        self.stack.pop();
        self.stack.extend(saved);
        found
    }

    /// The output columns `attno` (0: every one) of `sub`, nested in the query at `outer`.
    unsafe fn output(
        &mut self,
        outer: usize,
        sub: *mut pg_sys::Query,
        attno: i16,
        returning: bool,
    ) -> bool {
        unsafe {
            if sub.is_null() || !self.following.insert((sub as usize, attno)) {
                return false;
            }
            let found = self.inside(outer, sub, |l| {
                if !(*sub).setOperations.is_null() {
                    // every branch of a set operation is a subquery entry
                    return PgList::<pg_sys::RangeTblEntry>::from_pg((*sub).rtable)
                        .iter_ptr()
                        .enumerate()
                        .any(|(i, r)| {
                            (*r).rtekind == pg_sys::RTEKind::RTE_SUBQUERY
                                && l.var(i as i32 + 1, attno, 0)
                        });
                }
                let list = if returning {
                    (*sub).returningList
                } else {
                    (*sub).targetList
                };
                PgList::<pg_sys::TargetEntry>::from_pg(list)
                    .iter_ptr()
                    .filter(|t| !(**t).resjunk && (attno == 0 || (**t).resno == attno))
                    .any(|t| l.expr((*t).expr as *mut pg_sys::Node))
            });
            self.following.remove(&(sub as usize, attno));
            found
        }
    }

    /// Whether column `attno` (0: the whole row) of entry `varno`, `levelsup` queries out, may carry masks.
    unsafe fn var(&mut self, varno: i32, attno: i16, levelsup: u32) -> bool {
        use pg_sys::RTEKind::*;
        unsafe {
            let Some(level) = self.stack.len().checked_sub(1 + levelsup as usize) else {
                return true; // not resolvable: assume the worst
            };
            let q = self.stack[level];
            let Some(r) = rte(q, varno) else { return true };
            match (*r).rtekind {
                RTE_RELATION => {
                    if !(*q).onConflict.is_null() && (*(*q).onConflict).exclRelIndex == varno {
                        // EXCLUDED: the row the INSERT proposes
                        let tl = (*q).targetList;
                        let saved = self.stack.split_off(level + 1);
                        let found = PgList::<pg_sys::TargetEntry>::from_pg(tl)
                            .iter_ptr()
                            .filter(|t| !(**t).resjunk && (attno == 0 || (**t).resno == attno))
                            .any(|t| self.expr((*t).expr as *mut pg_sys::Node));
                        self.stack.extend(saved);
                        return found;
                    }
                    match self.rules.relation((*r).relid) {
                        Some(m) => attno == 0 || m.masks(attno),
                        None => false,
                    }
                }
                RTE_SUBQUERY => self.output(level, (*r).subquery, attno, false),
                RTE_JOIN => {
                    let vars = PgList::<pg_sys::Node>::from_pg((*r).joinaliasvars);
                    let saved = self.stack.split_off(level + 1);
                    let found = if attno == 0 {
                        vars.iter_ptr().any(|v| self.expr(v))
                    } else {
                        vars.get_ptr(attno as usize - 1)
                            .is_none_or(|v| self.expr(v))
                    };
                    self.stack.extend(saved);
                    found
                }
                RTE_CTE => {
                    let Some(cte_level) = level.checked_sub((*r).ctelevelsup as usize) else {
                        return true;
                    };
                    let name = super::cstr((*r).ctename);
                    let cte = PgList::<pg_sys::CommonTableExpr>::from_pg(
                        (*self.stack[cte_level]).cteList,
                    )
                    .iter_ptr()
                    .find(|c| super::cstr((**c).ctename) == name);
                    let Some(cte) = cte else { return true };
                    let cq = (*cte).ctequery as *mut pg_sys::Query;
                    if cq.is_null() || (*cq).type_ != NodeTag::T_Query {
                        return true;
                    }
                    let returning = (*cq).commandType != pg_sys::CmdType::CMD_SELECT;
                    self.output(cte_level, cq, attno, returning)
                }
                RTE_VALUES => {
                    let saved = self.stack.split_off(level + 1);
                    let mut found = false;
                    for row in PgList::<pg_sys::List>::from_pg((*r).values_lists).iter_ptr() {
                        let row = PgList::<pg_sys::Node>::from_pg(row);
                        found = if attno == 0 {
                            row.iter_ptr().any(|e| self.expr(e))
                        } else {
                            row.get_ptr(attno as usize - 1).is_none_or(|e| self.expr(e))
                        };
                        if found {
                            break;
                        }
                    }
                    self.stack.extend(saved);
                    found
                }
                RTE_FUNCTION | RTE_TABLEFUNC => {
                    let node = if (*r).rtekind == RTE_FUNCTION {
                        (*r).functions as *mut pg_sys::Node
                    } else {
                        (*r).tablefunc as *mut pg_sys::Node
                    };
                    let saved = self.stack.split_off(level + 1);
                    let found = self.expr(node);
                    self.stack.extend(saved);
                    found
                }
                // transition tables hold the real rows a trigger's statement changed
                RTE_NAMEDTUPLESTORE | RTE_RESULT => false,
                _ => true,
            }
        }
    }

    /// `SET (a, b) = (SELECT …)`: column `column` of the write's sub-select `id`.
    unsafe fn multiexpr(&mut self, id: i32, column: i16) -> bool {
        unsafe {
            let write = self.stack[0];
            for tle in PgList::<pg_sys::TargetEntry>::from_pg((*write).targetList).iter_ptr() {
                let e = (*tle).expr as *mut pg_sys::Node;
                if !e.is_null() && (*e).type_ == NodeTag::T_SubLink {
                    let link = e as *mut pg_sys::SubLink;
                    if (*link).subLinkType == pg_sys::SubLinkType::MULTIEXPR_SUBLINK
                        && (*link).subLinkId == id
                    {
                        let sub = (*link).subselect as *mut pg_sys::Query;
                        return self.output(0, sub, column, false);
                    }
                }
            }
            true
        }
    }
}

/// Whether a function may read data: anything but IMMUTABLE C or internal code.
#[pg_guard]
unsafe extern "C-unwind" fn may_read_data(func: pg_sys::Oid, _ctx: *mut c_void) -> bool {
    // pg_language "internal" and "c" (INTERNALlanguageId, ClanguageId)
    const INTERNAL: u32 = 12;
    const C: u32 = 13;
    unsafe {
        if pg_sys::func_volatile(func) as u8 != pg_sys::PROVOLATILE_IMMUTABLE {
            return true;
        }
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(func),
        );
        if tup.is_null() {
            return true;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tup);
        let lang = (*form).prolang.to_u32();
        pg_sys::ReleaseSysCache(tup);
        lang != INTERNAL && lang != C
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        let l = &mut *(ctx as *mut Lineage);
        match (*node).type_ {
            NodeTag::T_Var => {
                let v = node as *mut pg_sys::Var;
                return l.var((*v).varno, (*v).varattno, (*v).varlevelsup);
            }
            NodeTag::T_Param => {
                let p = node as *mut pg_sys::Param;
                if (*p).paramkind == pg_sys::ParamKind::PARAM_MULTIEXPR {
                    return l.multiexpr((*p).paramid >> 16, ((*p).paramid & 0xFFFF) as i16);
                }
                return false;
            }
            NodeTag::T_SubLink => {
                let link = node as *mut pg_sys::SubLink;
                if walker((*link).testexpr, ctx) {
                    return true;
                }
                let sub = (*link).subselect as *mut pg_sys::Query;
                let outer = l.stack.len() - 1;
                return l.output(outer, sub, 0, false);
            }
            NodeTag::T_Query => return true, // not reached through a SubLink: assume the worst
            _ => {}
        }
        if pg_sys::check_functions_in_node(node, Some(may_read_data), ctx) {
            return true;
        }
        pg_sys::expression_tree_walker(node, Some(walker), ctx)
    }
}
