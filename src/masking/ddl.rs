//! Schema changes by agents that would reach the real values of masked columns.
//!
//! Reads are masked in the planner, but some DDL evaluates expressions over a
//! table's stored rows itself, outside any plan the masks reach: the
//! expressions and predicates of `CREATE INDEX`, `CHECK` and `EXCLUDE`
//! constraints (validated now, `NOT VALID` ones at every later write),
//! generated columns (`ADD COLUMN … GENERATED`, `SET EXPRESSION`) and
//! `ALTER COLUMN … TYPE … USING`. Run by an agent over a masked column, their
//! errors quote real values (`invalid input syntax for type integer:
//! "Maria"`), functions they call receive them (`RAISE NOTICE`), and `USING`
//! copies them into columns that are not masked. Other DDL takes masks away
//! from stored values: `DETACH PARTITION` and `NO INHERIT` leave a partition
//! or child without the labels it inherited, `DROP EXPRESSION` turns a
//! generated column masked for what it is computed from into a plain column.
//! A masked column's type conversion runs input functions, casts and domain
//! checks over its stored values (`regclass` quotes `relation "Maria" does
//! not exist`), and so does a `CHECK` added to its domain. Row-level
//! triggers, transition tables and rules receive a relation's whole real
//! rows, in every session that writes it (humans' too).
//!
//! In agent sessions (with or without a grant, which a human may have
//! approved for an innocent-looking migration) these are refused, judged from
//! the utility parse node: column references of the raw expressions are
//! matched by name against the masked columns of the relation and of its
//! partitions and inheritance children (the expressions recurse to them); a
//! reference to the relation itself (a whole row) counts as reading every
//! column. Plain column lists (`CREATE INDEX ON t (ssn)`, `UNIQUE (ssn)`,
//! foreign keys) evaluate nothing and pass; violations they report lose their
//! DETAIL in agent sessions (errors.rs). Humans run such migrations.

use super::rules::Rules;
use agent_guard_core::Refusal;
use pgrx::pg_sys::{self, NodeTag};
use pgrx::{is_a, pg_guard, PgList};
use std::collections::BTreeSet;
use std::ffi::{c_void, CStr, CString};

/// The refusal for an agent's utility statement that would evaluate
/// expressions over masked values or take masks away, if any.
///
/// # Safety
/// `node` must be a valid utility parse node.
#[allow(non_upper_case_globals)]
pub unsafe fn refusal(node: *mut pg_sys::Node) -> Option<Refusal> {
    unsafe {
        if is_a(node, NodeTag::T_IndexStmt) {
            let s = node as *mut pg_sys::IndexStmt;
            let relid = crate::extract::range_var_relid((*s).relation)?;
            let rules = super::rules::rules();
            let masked = masked_names(&rules, relid);
            if masked.is_empty() {
                return None;
            }
            let mut exprs: Vec<*mut pg_sys::Node> = vec![(*s).whereClause];
            exprs.extend(index_elem_exprs((*s).indexParams));
            return evaluates(&rules, relid, &masked, &exprs, "CREATE INDEX");
        }
        if is_a(node, NodeTag::T_AlterDomainStmt) {
            return domain_check(node as *mut pg_sys::AlterDomainStmt);
        }
        if is_a(node, NodeTag::T_CreateTrigStmt) {
            let t = node as *mut pg_sys::CreateTrigStmt;
            let receives_rows = (*t).row || !(*t).transitionRels.is_null();
            if !receives_rows {
                return None;
            }
            let relid = crate::extract::range_var_relid((*t).relation)?;
            return attaches(relid, "a row-level trigger (or one with transition tables)");
        }
        if is_a(node, NodeTag::T_RuleStmt) {
            let relid =
                crate::extract::range_var_relid((*(node as *mut pg_sys::RuleStmt)).relation)?;
            return attaches(relid, "a rule");
        }
        if !is_a(node, NodeTag::T_AlterTableStmt) {
            return None;
        }
        let s = node as *mut pg_sys::AlterTableStmt;
        let relid = crate::extract::range_var_relid((*s).relation)?;
        let rules = super::rules::rules();
        let masked = masked_names(&rules, relid);
        use pg_sys::AlterTableType::*;
        for cmd in PgList::<pg_sys::AlterTableCmd>::from_pg((*s).cmds).iter_ptr() {
            let def = (*cmd).def;
            let found = match (*cmd).subtype {
                AT_AddConstraint if !def.is_null() && is_a(def, NodeTag::T_Constraint) => {
                    let what = "ALTER TABLE ADD CONSTRAINT";
                    evaluates(&rules, relid, &masked, &constraint_exprs(def), what)
                }
                AT_AddColumn if !def.is_null() && is_a(def, NodeTag::T_ColumnDef) => {
                    let c = def as *mut pg_sys::ColumnDef;
                    let exprs: Vec<_> = PgList::<pg_sys::Node>::from_pg((*c).constraints)
                        .iter_ptr()
                        .flat_map(|n| constraint_exprs(n))
                        .collect();
                    evaluates(&rules, relid, &masked, &exprs, "ALTER TABLE ADD COLUMN")
                }
                #[cfg(not(any(
                    feature = "pg13",
                    feature = "pg14",
                    feature = "pg15",
                    feature = "pg16"
                )))]
                AT_SetExpression => evaluates(
                    &rules,
                    relid,
                    &masked,
                    &[def],
                    "ALTER TABLE ALTER COLUMN SET EXPRESSION",
                ),
                AT_AlterColumnType if !def.is_null() && is_a(def, NodeTag::T_ColumnDef) => {
                    let def = def as *mut pg_sys::ColumnDef;
                    let using = (*def).raw_default;
                    let column = super::cstr((*cmd).name).unwrap_or_default();
                    // no USING, or USING the masked column itself: its stored
                    // values go through the conversion to the new type
                    let itself = masked.contains(&column)
                        && (using.is_null()
                            || column_ref(using).is_some_and(|f| f.last() == Some(&column)));
                    if itself {
                        converts(&rules, relid, &column, (*def).typeName)
                    } else {
                        let what = "ALTER TABLE ALTER COLUMN TYPE ... USING";
                        evaluates(&rules, relid, &masked, &[using], what)
                    }
                }
                AT_DropExpression => drops_expression(&rules, relid, (*cmd).name),
                // the parent's row-level triggers are cloned onto the new partition
                AT_AttachPartition
                    if !def.is_null()
                        && is_a(def, NodeTag::T_PartitionCmd)
                        && crate::catalog::has_triggers(relid) =>
                {
                    let part = (*(def as *mut pg_sys::PartitionCmd)).name;
                    crate::extract::range_var_relid(part).and_then(|child| {
                        attaches(child, "the row-level triggers of its new parent")
                    })
                }
                AT_DetachPartition | AT_DetachPartitionFinalize
                    if !def.is_null() && is_a(def, NodeTag::T_PartitionCmd) =>
                {
                    let part = (*(def as *mut pg_sys::PartitionCmd)).name;
                    crate::extract::range_var_relid(part)
                        .and_then(|child| detaches(&rules, child, relid, "DETACH PARTITION"))
                }
                AT_DropInherit if !def.is_null() && is_a(def, NodeTag::T_RangeVar) => {
                    crate::extract::range_var_relid(def as *mut pg_sys::RangeVar)
                        .and_then(|parent| detaches(&rules, relid, parent, "NO INHERIT"))
                }
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// Names of the columns masked in `relid` or in any of its partitions or
/// inheritance children (expressions and constraints recurse to them).
fn masked_names(rules: &Rules, relid: pg_sys::Oid) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![relid];
    let mut seen = BTreeSet::new();
    while let Some(r) = todo.pop() {
        if !seen.insert(r.to_u32()) {
            continue;
        }
        if let Some(m) = rules.relation(r) {
            for (attnum, _) in &m.columns {
                if let Some(name) = attname(r, *attnum) {
                    out.insert(name);
                }
            }
        }
        todo.extend(crate::catalog::children(r));
    }
    out
}

fn attname(relid: pg_sys::Oid, attnum: i16) -> Option<String> {
    unsafe { super::cstr(pg_sys::get_attname(relid, attnum, true)) }
}

/// The expressions of index elements (and `EXCLUDE` elements): plain columns have none.
unsafe fn index_elem_exprs(list: *mut pg_sys::List) -> Vec<*mut pg_sys::Node> {
    unsafe {
        PgList::<pg_sys::Node>::from_pg(list)
            .iter_ptr()
            .filter(|n| !n.is_null() && is_a(*n, NodeTag::T_IndexElem))
            .map(|n| (*(n as *mut pg_sys::IndexElem)).expr)
            .collect()
    }
}

/// The expressions a raw constraint evaluates over rows: `CHECK`, generated
/// columns, `EXCLUDE` elements and predicate.
unsafe fn constraint_exprs(node: *mut pg_sys::Node) -> Vec<*mut pg_sys::Node> {
    unsafe {
        if node.is_null() || !is_a(node, NodeTag::T_Constraint) {
            return vec![];
        }
        let c = node as *mut pg_sys::Constraint;
        use pg_sys::ConstrType::*;
        match (*c).contype {
            CONSTR_CHECK | CONSTR_GENERATED => vec![(*c).raw_expr],
            CONSTR_EXCLUSION => {
                let mut out = vec![(*c).where_clause];
                // each element is a two-item list: (IndexElem, operator name)
                for pair in PgList::<pg_sys::Node>::from_pg((*c).exclusions).iter_ptr() {
                    if !pair.is_null() && is_a(pair, NodeTag::T_List) {
                        let first =
                            PgList::<pg_sys::Node>::from_pg(pair as *mut pg_sys::List).get_ptr(0);
                        if let Some(elem) = first {
                            if is_a(elem, NodeTag::T_IndexElem) {
                                out.push((*(elem as *mut pg_sys::IndexElem)).expr);
                            }
                        }
                    }
                }
                out
            }
            _ => vec![],
        }
    }
}

/// The fields of a raw column reference (`*` as "*").
unsafe fn column_ref(node: *mut pg_sys::Node) -> Option<Vec<String>> {
    unsafe {
        if node.is_null() || !is_a(node, NodeTag::T_ColumnRef) {
            return None;
        }
        let fields = (*(node as *mut pg_sys::ColumnRef)).fields;
        Some(
            PgList::<pg_sys::Node>::from_pg(fields)
                .iter_ptr()
                .map(|f| {
                    if is_a(f, NodeTag::T_String) {
                        super::cstr((*(f as *mut pg_sys::String)).sval).unwrap_or_default()
                    } else {
                        "*".to_string()
                    }
                })
                .collect(),
        )
    }
}

struct Walk {
    relid: pg_sys::Oid,
    masked: *const BTreeSet<String>,
    /// The first masked column (or "the whole row") referenced.
    found: Option<String>,
}

#[pg_guard]
unsafe extern "C-unwind" fn find_masked(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        let w = &mut *(ctx as *mut Walk);
        if let Some(fields) = column_ref(node) {
            let masked = &*w.masked;
            if let Some(m) = fields.iter().find(|f| masked.contains(*f)) {
                w.found = Some(m.clone());
                return true;
            }
            // `t.*`, or the relation's name where no column has it: a whole-row reference
            let is_column = |f: &String| {
                CString::new(f.as_str())
                    .map(|c| pg_sys::get_attnum(w.relid, c.as_ptr()) > 0)
                    .unwrap_or(false)
            };
            let relname = super::cstr(pg_sys::get_rel_name(w.relid)).unwrap_or_default();
            let whole_row = fields
                .last()
                .is_none_or(|f| f == "*" || (*f == relname && !is_column(f)));
            if whole_row {
                w.found = Some("the whole row".to_string());
                return true;
            }
            return false;
        }
        pg_sys::raw_expression_tree_walker(node, Some(find_masked), ctx)
    }
}

/// The refusal when one of `exprs` reads a masked column of `relid`.
unsafe fn evaluates(
    rules: &Rules,
    relid: pg_sys::Oid,
    masked: &BTreeSet<String>,
    exprs: &[*mut pg_sys::Node],
    what: &str,
) -> Option<Refusal> {
    if masked.is_empty() {
        return None;
    }
    let mut w = Walk {
        relid,
        masked: masked as *const _,
        found: None,
    };
    for e in exprs.iter().filter(|e| !e.is_null()) {
        unsafe { find_masked(*e, &raw mut w as *mut c_void) };
        if w.found.is_some() {
            break;
        }
    }
    let column = w.found?;
    let name = rules.name(relid);
    let column = if column == "the whole row" {
        format!("the whole row of {name}")
    } else {
        format!("masked column {name}.{}", super::quote_identifier(&column))
    };
    Some(Refusal {
        message: format!("agent may not run {what} with an expression over {column}"),
        detail: format!(
            "{what} evaluates its expressions over the stored rows of {name} outside the masks: \
             their errors, the functions they call and the values they store would carry the real values of {column}."
        ),
        hint: "Leave masked columns out of the expression, or have a human run the schema change.".into(),
        code: "masked_ddl",
    })
}

/// The refusal when `child` would lose masks it inherits from `parent`.
fn detaches(rules: &Rules, child: pg_sys::Oid, parent: pg_sys::Oid, what: &str) -> Option<Refusal> {
    let m = rules.relation(child)?;
    // masks inherited through this parent (directly or from its ancestors)
    let mut ancestors = BTreeSet::new();
    let mut todo = vec![parent];
    while let Some(r) = todo.pop() {
        if ancestors.insert(r.to_u32()) {
            todo.extend(crate::catalog::parents(r));
        }
    }
    let lost: Vec<String> = m
        .inherited
        .iter()
        .filter(|(_, from)| ancestors.contains(&from.to_u32()))
        .filter_map(|(attnum, _)| attname(child, *attnum))
        .map(|c| super::quote_identifier(&c))
        .collect();
    if lost.is_empty() {
        return None;
    }
    let (child_name, parent_name) = (rules.name(child), rules.name(parent));
    let cols = lost.join(", ");
    Some(Refusal {
        message: format!(
            "agent may not run {what}: {child_name} would lose the masks it inherits from {parent_name}"
        ),
        detail: format!(
            "Columns {cols} of {child_name} are masked by the labels of {parent_name}; on its own, {child_name} would show their real values."
        ),
        hint: format!(
            "A human can label the columns of {child_name} first (SECURITY LABEL FOR agent_guard ON COLUMN ...), or run it."
        ),
        code: "masked_ddl",
    })
}

/// The refusal when a generated column masked for what it is computed from
/// would become a plain column.
unsafe fn drops_expression(
    rules: &Rules,
    relid: pg_sys::Oid,
    column: *mut std::ffi::c_char,
) -> Option<Refusal> {
    if column.is_null() {
        return None;
    }
    let m = rules.relation(relid)?;
    let attnum = unsafe { pg_sys::get_attnum(relid, column) };
    if !m.generated.contains(&attnum) {
        return None;
    }
    let name = rules.name(relid);
    let col = super::quote_identifier(&unsafe { CStr::from_ptr(column) }.to_string_lossy());
    Some(Refusal {
        message: format!(
            "agent may not drop the expression of {name}.{col}: it is masked because it is computed from masked columns"
        ),
        detail: format!(
            "Without its expression {name}.{col} would be a plain column holding values computed from real data, and no longer masked."
        ),
        hint: format!(
            "A human can label {name}.{col} first (SECURITY LABEL FOR agent_guard ON COLUMN ...), or run it."
        ),
        code: "masked_ddl",
    })
}

/// Whether converting stored values from `source` to `target` runs nothing
/// but PostgreSQL's own code that quotes no value: both types built in, the
/// target no domain, and the same type or binary coercible (at most a
/// built-in length coercion, as `varchar(10)` to `varchar(20)`, follows).
fn conversion_runs_no_code(source: pg_sys::Oid, target: pg_sys::Oid) -> bool {
    let built_in =
        |t: pg_sys::Oid| t != pg_sys::InvalidOid && t.to_u32() < pg_sys::FirstNormalObjectId;
    built_in(source)
        && built_in(target)
        && crate::catalog::domain_base_type(target).is_none()
        && (source == target || unsafe { pg_sys::IsBinaryCoercible(source, target) })
}

/// The refusal when an agent's `ALTER COLUMN … TYPE` would convert the real
/// values of a masked column with more than a binary coercion: input
/// functions quote what they cannot read (`relation "Maria" does not
/// exist` for `regclass`), and user-defined casts and domain checks receive
/// every stored value.
unsafe fn converts(
    rules: &Rules,
    relid: pg_sys::Oid,
    column: &str,
    type_name: *mut pg_sys::TypeName,
) -> Option<Refusal> {
    unsafe {
        let attnum = CString::new(column)
            .map(|c| pg_sys::get_attnum(relid, c.as_ptr()))
            .unwrap_or(0);
        let source = if attnum > 0 {
            pg_sys::get_atttype(relid, attnum)
        } else {
            pg_sys::InvalidOid
        };
        let target = if type_name.is_null() || (*type_name).pct_type {
            pg_sys::InvalidOid
        } else {
            pg_sys::LookupTypeNameOid(std::ptr::null_mut(), type_name, true)
        };
        if conversion_runs_no_code(source, target) {
            return None;
        }
        let name = rules.name(relid);
        let col = format!("{name}.{}", super::quote_identifier(column));
        let new_type = if target == pg_sys::InvalidOid {
            "the new type".to_string()
        } else {
            crate::catalog::format_type(target, -1)
        };
        Some(Refusal {
            message: format!("agent may not change masked column {col} to type {new_type}"),
            detail: format!(
                "The conversion runs over the stored, real values of {col} outside the masks: \
                 its errors and the casts, input functions and domain checks it calls would carry them."
            ),
            hint: "Only binary-compatible changes between built-in types (such as a longer varchar) are open to agents; have a human run this schema change.".into(),
            code: "masked_ddl",
        })
    }
}

/// The refusal when an agent's `ALTER DOMAIN … ADD CONSTRAINT … CHECK` (valid
/// or `NOT VALID`: later writes check it too) or `VALIDATE CONSTRAINT` would
/// evaluate a check over the real values of masked columns of that domain.
unsafe fn domain_check(s: *mut pg_sys::AlterDomainStmt) -> Option<Refusal> {
    unsafe {
        let what = match (*s).subtype as u8 {
            b'C' => {
                let c = (*s).def;
                if c.is_null()
                    || !is_a(c, NodeTag::T_Constraint)
                    || (*(c as *mut pg_sys::Constraint)).contype != pg_sys::ConstrType::CONSTR_CHECK
                {
                    return None;
                }
                "ALTER DOMAIN ADD CONSTRAINT ... CHECK"
            }
            b'V' => "ALTER DOMAIN VALIDATE CONSTRAINT",
            _ => return None,
        };
        let type_name = pg_sys::makeTypeNameFromNameList((*s).typeName);
        let domain = pg_sys::LookupTypeNameOid(std::ptr::null_mut(), type_name, true);
        if domain == pg_sys::InvalidOid {
            return None;
        }
        let rules = super::rules::rules();
        for (relid, m) in rules.labelled() {
            for (attnum, _) in &m.columns {
                if !type_uses_domain(pg_sys::get_atttype(relid, *attnum), domain) {
                    continue;
                }
                let col = format!(
                    "{}.{}",
                    rules.name(relid),
                    super::quote_identifier(&attname(relid, *attnum).unwrap_or_default())
                );
                let dom = crate::catalog::format_type(domain, -1);
                return Some(Refusal {
                    message: format!("agent may not run {what} on domain {dom}: masked column {col} is of that domain"),
                    detail: format!(
                        "The check is evaluated over the stored and the newly written real values of {col} outside the masks: \
                         the functions it calls would receive them."
                    ),
                    hint: "Have a human run this schema change.".into(),
                    code: "masked_ddl",
                });
            }
        }
        None
    }
}

/// Whether values of type `t` are checked against `domain`: `t` is the domain,
/// a domain over it, or an array of either.
fn type_uses_domain(mut t: pg_sys::Oid, domain: pg_sys::Oid) -> bool {
    for _ in 0..32 {
        if t == pg_sys::InvalidOid {
            return false;
        }
        if t == domain {
            return true;
        }
        let element = unsafe { pg_sys::get_element_type(t) };
        t = if element != pg_sys::InvalidOid {
            element
        } else {
            match crate::catalog::domain_base_type(t) {
                Some(base) => base,
                None => return false,
            }
        };
    }
    false
}

/// The refusal when an agent would attach code that receives whole rows
/// (row-level triggers, transition tables, rules' `NEW`/`OLD`) to a relation
/// with masked columns (or partitions or children with them): the code runs
/// over the real rows in every session that writes the relation, humans'
/// included, and can keep them where the agent reads them unmasked.
fn attaches(relid: pg_sys::Oid, what: &str) -> Option<Refusal> {
    let rules = super::rules::rules();
    let masked = masked_names(&rules, relid);
    let first = masked.iter().next()?;
    let name = rules.name(relid);
    let col = format!("{name}.{}", super::quote_identifier(first));
    Some(Refusal {
        message: format!("agent may not attach {what} to {name}: masked column {col} would reach it unmasked"),
        detail: format!(
            "Triggers and rules on {name} receive its real rows in every session that writes it, humans' included; \
             what they keep or raise would carry the real values of its masked columns."
        ),
        hint: "Have a human create it, or use a statement-level trigger without transition tables.".into(),
        code: "masked_ddl",
    })
}
