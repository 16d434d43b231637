//! Masking labels from PostgreSQL's parse trees.
//!
//! A `MASKED WITH FUNCTION`/`VALUE` expression is parsed by PostgreSQL's own
//! raw parser (`RAW_PARSE_PLPGSQL_EXPR`: the expression alone, as PL/pgSQL
//! parses `x := <expr>`), simplified into [`agent_guard_core::mask::Expr`]
//! and checked by the pure rules of `agent_guard_core::mask` when the label
//! is written. The mask the column then gets is built from the same raw tree
//! by parse analysis against the relation — never from spliced text — with
//! every column reference pointing at the masked column by attribute number,
//! so a rename does not break it, and coerced (explicitly) to the column's type.

use agent_guard_core::label::parse_column_label;
use agent_guard_core::mask::{
    default_mask, validate_function, validate_value, DefaultMask, Expr, MaskRule,
};
use pgrx::pg_sys::{self, NodeTag};
use pgrx::prelude::*;
use pgrx::{is_a, PgList};
use std::ffi::CString;

use super::cstr;

fn node_kind(node: *mut pg_sys::Node) -> String {
    use NodeTag::*;
    let tag = unsafe { (*node).type_ };
    match tag {
        T_A_Expr => "an operator".into(),
        T_SubLink => "a subquery".into(),
        T_CaseExpr => "CASE".into(),
        T_ParamRef => "a parameter".into(),
        T_A_ArrayExpr => "an array constructor".into(),
        T_RowExpr => "a row constructor".into(),
        T_CoalesceExpr => "COALESCE".into(),
        T_MinMaxExpr => "GREATEST/LEAST".into(),
        T_BoolExpr => "AND/OR/NOT".into(),
        T_NullTest => "IS [NOT] NULL".into(),
        T_BooleanTest => "IS TRUE/FALSE".into(),
        T_SQLValueFunction => "a session value function (CURRENT_USER, CURRENT_DATE, ...)".into(),
        T_CollateClause => "COLLATE".into(),
        T_A_Indirection => "a subscript or field selection".into(),
        T_NamedArgExpr => "a named argument".into(),
        T_XmlExpr => "an XML expression".into(),
        T_GroupingFunc => "GROUPING()".into(),
        T_A_Star => "*".into(),
        other => format!("{other:?}").trim_start_matches("T_").to_string(),
    }
}

unsafe fn string_list(list: *mut pg_sys::List) -> Option<Vec<String>> {
    let mut out = vec![];
    for n in unsafe { PgList::<pg_sys::Node>::from_pg(list) }.iter_ptr() {
        if !unsafe { is_a(n, NodeTag::T_String) } {
            return None;
        }
        out.push(cstr(unsafe { (*(n as *mut pg_sys::String)).sval })?);
    }
    Some(out)
}

/// The schema and name of the type a raw TypeName resolves to.
unsafe fn resolved_type(tn: *mut pg_sys::TypeName) -> (String, String) {
    unsafe {
        let oid = pg_sys::typenameTypeId(std::ptr::null_mut(), tn);
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::TYPEOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tup.is_null() {
            return (String::new(), oid.to_u32().to_string());
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup);
        let name = cstr((*form).typname.data.as_ptr()).unwrap_or_default();
        let nsp = cstr(pg_sys::get_namespace_name((*form).typnamespace)).unwrap_or_default();
        pg_sys::ReleaseSysCache(tup);
        (nsp, name)
    }
}

/// Simplify a raw expression tree for the rules of `agent_guard_core::mask`.
unsafe fn simplify(node: *mut pg_sys::Node) -> Expr {
    use NodeTag::*;
    unsafe {
        if node.is_null() {
            return Expr::Other("an empty expression".into());
        }
        match (*node).type_ {
            T_FuncCall => {
                let f = node as *mut pg_sys::FuncCall;
                let Some(parts) = string_list((*f).funcname) else {
                    return Expr::Other("a function name".into());
                };
                let (schema, name) = match parts.as_slice() {
                    [name] => (None, name.clone()),
                    [schema, name] => (Some(schema.clone()), name.clone()),
                    _ => return Expr::Other(format!("the name {}", parts.join("."))),
                };
                let args: Vec<*mut pg_sys::Node> = PgList::<pg_sys::Node>::from_pg((*f).args)
                    .iter_ptr()
                    .collect();
                let named = args.iter().any(|a| is_a(*a, T_NamedArgExpr));
                let plain = !named
                    && (*f).agg_order.is_null()
                    && (*f).agg_filter.is_null()
                    && (*f).over.is_null()
                    && !(*f).agg_within_group
                    && !(*f).agg_star
                    && !(*f).agg_distinct
                    && !(*f).func_variadic;
                Expr::Call {
                    schema,
                    name,
                    args: args.into_iter().map(|a| simplify(a)).collect(),
                    plain,
                }
            }
            T_ColumnRef => match string_list((*(node as *mut pg_sys::ColumnRef)).fields) {
                Some(parts) => Expr::Column(parts),
                None => Expr::Other("*".into()),
            },
            T_A_Const => {
                if (*(node as *mut pg_sys::A_Const)).isnull {
                    Expr::Null
                } else {
                    Expr::Const
                }
            }
            T_TypeCast => {
                let c = node as *mut pg_sys::TypeCast;
                if (*(*c).typeName).pct_type {
                    return Expr::Other("%TYPE".into());
                }
                let (type_schema, type_name) = resolved_type((*c).typeName);
                Expr::Cast {
                    arg: Box::new(simplify((*c).arg)),
                    type_schema,
                    type_name,
                }
            }
            _ => Expr::Other(node_kind(node)),
        }
    }
}

/// Parse a mask expression with PostgreSQL's raw parser: exactly one
/// expression, nothing else (no FROM, WHERE, second target, ...).
unsafe fn parse_expression(text: &str) -> Result<*mut pg_sys::Node, String> {
    let c =
        CString::new(text).map_err(|_| "the mask expression contains a NUL byte".to_string())?;
    unsafe {
        let raws = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR);
        let list = PgList::<pg_sys::RawStmt>::from_pg(raws);
        let bad = || Err(format!("\"{text}\" is not a single expression"));
        if list.len() != 1 {
            return bad();
        }
        let stmt = (*list.get_ptr(0).unwrap()).stmt;
        if !is_a(stmt, NodeTag::T_SelectStmt) {
            return bad();
        }
        let s = stmt as *mut pg_sys::SelectStmt;
        let targets = PgList::<pg_sys::ResTarget>::from_pg((*s).targetList);
        let extra = !(*s).distinctClause.is_null()
            || !(*s).intoClause.is_null()
            || !(*s).fromClause.is_null()
            || !(*s).whereClause.is_null()
            || !(*s).groupClause.is_null()
            || !(*s).havingClause.is_null()
            || !(*s).windowClause.is_null()
            || !(*s).valuesLists.is_null()
            || !(*s).sortClause.is_null()
            || !(*s).limitOffset.is_null()
            || !(*s).limitCount.is_null()
            || !(*s).lockingClause.is_null()
            || !(*s).withClause.is_null()
            || (*s).op != pg_sys::SetOperation::SETOP_NONE;
        if extra || targets.len() != 1 {
            return bad();
        }
        let target = targets.get_ptr(0).unwrap();
        if !(*target).name.is_null() || !(*target).indirection.is_null() {
            return bad();
        }
        Ok((*target).val)
    }
}

/// Point every column reference of a (validated) raw tree at `column`.
#[pg_guard]
unsafe extern "C-unwind" fn retarget_columns(
    node: *mut pg_sys::Node,
    ctx: *mut std::ffi::c_void,
) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        if is_a(node, NodeTag::T_ColumnRef) {
            let name = ctx as *const std::ffi::c_char;
            let s = pg_sys::makeString(pg_sys::pstrdup(name));
            (*(node as *mut pg_sys::ColumnRef)).fields =
                pg_sys::lappend(std::ptr::null_mut(), s as *mut std::ffi::c_void);
            return false;
        }
        pg_sys::raw_expression_tree_walker(node, Some(retarget_columns), ctx)
    }
}

/// One attribute of a relation.
pub(crate) struct Attribute {
    pub name: String,
    pub type_oid: pg_sys::Oid,
    pub typmod: i32,
    pub collation: pg_sys::Oid,
    pub dropped: bool,
}

/// The attributes of an open relation, by attnum - 1.
pub(crate) unsafe fn attributes(rel: pg_sys::Relation) -> Vec<Attribute> {
    unsafe {
        let desc = (*rel).rd_att;
        (0..(*desc).natts as usize)
            .map(|i| {
                let a = crate::compat::tuple_desc_attr(desc, i);
                Attribute {
                    name: cstr((*a).attname.data.as_ptr()).unwrap_or_default(),
                    type_oid: (*a).atttypid,
                    typmod: (*a).atttypmod,
                    collation: (*a).attcollation,
                    dropped: (*a).attisdropped,
                }
            })
            .collect()
    }
}

fn type_category(type_oid: pg_sys::Oid) -> char {
    let mut category: std::ffi::c_char = 0;
    let mut preferred = false;
    unsafe { pg_sys::get_type_category_preferred(type_oid, &mut category, &mut preferred) };
    category as u8 as char
}

fn type_name(type_oid: pg_sys::Oid, typmod: i32) -> String {
    cstr(unsafe { pg_sys::format_type_with_typemod(type_oid, typmod) }).unwrap_or_default()
}

/// The raw expression of a rule, validated, with column references retargeted.
/// `writing`: the label is being written (its column references must name
/// the column); otherwise a rename may have made them stale.
unsafe fn raw_mask(
    rule: &MaskRule,
    att: &Attribute,
    writing: bool,
) -> Result<*mut pg_sys::Node, String> {
    unsafe {
        let raw = match rule {
            MaskRule::Function(text) => {
                let raw = parse_expression(text)?;
                validate_function(&simplify(raw), writing.then_some(att.name.as_str()))?;
                raw
            }
            MaskRule::Value(text) => {
                let raw = parse_expression(text)?;
                validate_value(&simplify(raw))?;
                raw
            }
            MaskRule::Default => {
                let base = pg_sys::getBaseType(att.type_oid);
                let template = match default_mask(type_category(base), &type_name(base, -1)) {
                    DefaultMask::Redact => "agent_guard.redact(c)",
                    DefaultMask::Zero => "0",
                    DefaultMask::Year => "agent_guard.generalize_date(c, 'year')",
                    DefaultMask::Null => "NULL",
                };
                parse_expression(template)?
            }
        };
        let name = CString::new(att.name.as_str()).unwrap_or_default();
        retarget_columns(raw, name.as_ptr() as *mut std::ffi::c_void);
        Ok(raw)
    }
}

/// Functions in an analysed mask that are not trusted (a cast to a
/// user-defined type may bring one in).
#[pg_guard]
unsafe extern "C-unwind" fn untrusted_function(
    node: *mut pg_sys::Node,
    ctx: *mut std::ffi::c_void,
) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        let funcid = match (*node).type_ {
            NodeTag::T_FuncExpr => Some((*(node as *mut pg_sys::FuncExpr)).funcid),
            NodeTag::T_OpExpr => Some((*(node as *mut pg_sys::OpExpr)).opfuncid),
            _ => None,
        };
        if let Some(f) = funcid {
            let nsp =
                cstr(pg_sys::get_namespace_name(pg_sys::get_func_namespace(f))).unwrap_or_default();
            if nsp != "pg_catalog" && nsp != agent_guard_core::GUARD_SCHEMA {
                let name = cstr(pg_sys::get_func_name(f)).unwrap_or_default();
                *(ctx as *mut Option<String>) = Some(format!("{nsp}.{name}"));
                return true;
            }
        }
        pg_sys::expression_tree_walker(node, Some(untrusted_function), ctx)
    }
}

/// The analysed mask of column `attnum` of `rel` (its Vars have varno 1),
/// coerced to the column's type. Errors of parse analysis (unknown function,
/// wrong argument types) are PostgreSQL's own.
pub(crate) unsafe fn analysed_mask(
    rel: pg_sys::Relation,
    attnum: i16,
    rule: &MaskRule,
    writing: bool,
) -> Result<*mut pg_sys::Node, String> {
    unsafe {
        let atts = attributes(rel);
        let att = atts
            .get((attnum - 1) as usize)
            .filter(|a| !a.dropped)
            .ok_or_else(|| format!("column {attnum} does not exist"))?;
        let raw = raw_mask(rule, att, writing)?;
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let nsitem = pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::AccessShareLock as i32,
            std::ptr::null_mut(),
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, nsitem, false, true, true);
        let expr =
            pg_sys::transformExpr(pstate, raw, pg_sys::ParseExprKind::EXPR_KIND_SELECT_TARGET);
        let from = pg_sys::exprType(expr);
        let coerced = pg_sys::coerce_to_target_type(
            pstate,
            expr,
            from,
            att.type_oid,
            att.typmod,
            pg_sys::CoercionContext::COERCION_EXPLICIT,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CAST,
            -1,
        );
        pg_sys::assign_expr_collations(pstate, coerced);
        pg_sys::free_parsestate(pstate);
        if coerced.is_null() {
            return Err(format!(
                "the mask of column {} returns {}, which cannot be cast to the column's type {}",
                super::quote_identifier(&att.name),
                type_name(from, -1),
                type_name(att.type_oid, att.typmod)
            ));
        }
        let mut bad: Option<String> = None;
        untrusted_function(
            coerced,
            &mut bad as *mut Option<String> as *mut std::ffi::c_void,
        );
        if let Some(f) = bad {
            return Err(format!(
                "the mask of column {} would call {f}, which is not a trusted function",
                super::quote_identifier(&att.name)
            ));
        }
        Ok(coerced)
    }
}

fn reject(message: String) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        "agent_guard",
    )
    .set_hint("A mask calls agent_guard's mask functions (redact, partial, email, card_number, hash, generalize_date, bucket) or selected pg_catalog functions, schema-qualified, on the column itself and constants, e.g. 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)'.")
    .report(pgrx::PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Check a column label as it is written (from the label provider hook): its
/// grammar, its expression's parse tree, that it applies to a relation that
/// can be masked, and that the mask can be built for the column.
pub fn check_column_label(relid: pg_sys::Oid, attnum: i32, label: &str) {
    let rule = match parse_column_label(label) {
        Ok(l) => l.rule(),
        Err(e) => reject(e),
    };
    unsafe {
        let kind = pg_sys::get_rel_relkind(relid) as u8;
        if pg_sys::get_rel_persistence(relid) as u8 == b't' {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                "agent_guard masks columns of permanent relations, not of temporary tables"
            );
        }
        if !matches!(kind, b'r' | b'p' | b'm' | b'f') {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                "agent_guard masks columns of tables, materialized views and foreign tables",
                "Label the column of the table the view reads: the view then shows it masked to agents."
            );
        }
        let rel = pg_sys::relation_open(relid, pg_sys::AccessShareLock as i32);
        let built = analysed_mask(rel, attnum as i16, &rule, true);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        if let Err(e) = built {
            reject(e);
        }
    }
}

/// The SQL of a column's mask, deparsed by PostgreSQL (for the masking view).
pub(crate) fn mask_sql(relid: pg_sys::Oid, attnum: i16, label: &str) -> Result<String, String> {
    let rule = parse_column_label(label)?.rule();
    unsafe {
        let rel = pg_sys::relation_open(relid, pg_sys::AccessShareLock as i32);
        let result = analysed_mask(rel, attnum, &rule, false).map(|expr| {
            let relname = pg_sys::get_rel_name(relid);
            let ctx = pg_sys::deparse_context_for(relname, relid);
            cstr(pg_sys::deparse_expression(expr, ctx, false, false)).unwrap_or_default()
        });
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        result
    }
}

/// The mask agent sessions see for a column, as SQL (for people and tests;
/// `agent_guard.mask_expression(regclass, name)` in sql/masking.sql).
#[pg_extern(name = "_mask_expression", stable, parallel_safe)]
fn mask_expression(relation: pg_sys::Oid, column: &str) -> Option<String> {
    let c = CString::new(column).ok()?;
    let attnum = unsafe { pg_sys::get_attnum(relation, c.as_ptr()) };
    if attnum <= 0 {
        error!(
            "column \"{column}\" of relation {} does not exist",
            relation.to_u32()
        );
    }
    let rules = super::rules::rules();
    let label = rules.label_of(relation, attnum)?;
    match mask_sql(relation, attnum, &label) {
        Ok(sql) => Some(sql),
        Err(e) => error!("{e}"),
    }
}
