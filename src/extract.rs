//! The only module that reads PostgreSQL's trees.
//!
//! It turns a `PlannedStmt` (range table, result relations, row marks,
//! column permissions) or a utility parse node into
//! [`agent_guard_core::Facts`]. Everything downstream is plain Rust.

mod objects;

pub use objects::object_text;

use crate::labels::SensitiveColumns;
use agent_guard_core::facts::{CopyFacts, Facts, Operation, PlanFacts, Relation, UtilityFacts};
use pgrx::pg_sys::{self, NodeTag};
use pgrx::{is_a, PgList};
use std::collections::BTreeSet;
use std::ffi::{c_char, CStr, CString};

fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// Name a relation by OID.
pub fn relation(relid: pg_sys::Oid) -> Relation {
    unsafe {
        let name = cstr(pg_sys::get_rel_name(relid)).unwrap_or_else(|| relid.to_u32().to_string());
        let nsp = pg_sys::get_rel_namespace(relid);
        let schema = cstr(pg_sys::get_namespace_name(nsp)).unwrap_or_default();
        Relation::new(relid.to_u32(), &schema, &name)
    }
}

fn operation(cmd: pg_sys::CmdType::Type) -> Operation {
    match cmd {
        pg_sys::CmdType::CMD_INSERT => Operation::Insert,
        pg_sys::CmdType::CMD_UPDATE => Operation::Update,
        pg_sys::CmdType::CMD_DELETE => Operation::Delete,
        c if crate::compat::is_merge(c) => Operation::Merge,
        _ => Operation::Select,
    }
}

/// The columns a range-table entry reads, inserts or updates (attnums; 0 means the whole row).
unsafe fn selected_columns(
    pstmt: *mut pg_sys::PlannedStmt,
    rte: *mut pg_sys::RangeTblEntry,
) -> Vec<i32> {
    unsafe {
        crate::compat::rte_columns(pstmt, rte)
            .into_iter()
            .flat_map(|set| bitmap_members(set))
            .collect()
    }
}

pub(crate) unsafe fn bitmap_members(set: *mut pg_sys::Bitmapset) -> Vec<i32> {
    let mut out = vec![];
    let mut m = -1;
    loop {
        m = unsafe { pg_sys::bms_next_member(set, m) };
        if m < 0 {
            break;
        }
        out.push(m + pg_sys::FirstLowInvalidHeapAttributeNumber);
    }
    out
}

/// Facts of a statement about to be executed.
///
/// # Safety
/// `pstmt` must be a valid `PlannedStmt` of a plannable statement.
pub unsafe fn plan_facts(
    pstmt: *mut pg_sys::PlannedStmt,
    sensitive: &SensitiveColumns,
    integrity_check: bool,
) -> PlanFacts {
    unsafe {
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*pstmt).rtable);
        let rel_at = |rti: u32| -> Option<Relation> {
            let rte = rtable.get_ptr(rti.checked_sub(1)? as usize)?;
            ((*rte).rtekind == pg_sys::RTEKind::RTE_RELATION).then(|| relation((*rte).relid))
        };
        let mut facts = PlanFacts {
            operation: operation((*pstmt).commandType),
            has_modifying_cte: (*pstmt).hasModifyingCTE,
            integrity_check,
            ..PlanFacts::select()
        };
        let mut seen = BTreeSet::new();
        let mut sensitive_cols = BTreeSet::new();
        for rte in rtable.iter_ptr() {
            if !crate::compat::is_relation_entry(rte) {
                continue;
            }
            let relid = (*rte).relid;
            if seen.insert(relid.to_u32()) {
                facts.read.push(relation(relid));
                if (*rte).relkind as u8 == pg_sys::RELKIND_FOREIGN_TABLE {
                    facts.foreign.push(relation(relid));
                }
            }
            if let Some(cols) = sensitive.of_relation(relid) {
                let selected = selected_columns(pstmt, rte);
                for (attnum, name) in cols {
                    if selected.iter().any(|&a| a == 0 || a == *attnum as i32) {
                        sensitive_cols.insert(name.clone());
                    }
                }
            }
        }
        facts.sensitive_columns = sensitive_cols.into_iter().collect();
        for rti in PgList::<std::ffi::c_void>::from_pg((*pstmt).resultRelations).iter_int() {
            if let Some(r) = rel_at(rti as u32) {
                if !facts.written.contains(&r) {
                    facts.written.push(r);
                }
            }
        }
        // rows routed into partitions at run time: a foreign partition is written too
        for r in &facts.written {
            let relid = pg_sys::Oid::from(r.oid);
            if pg_sys::get_rel_relkind(relid) as u8 == pg_sys::RELKIND_PARTITIONED_TABLE {
                foreign_descendants(relid, &mut facts.foreign);
            }
        }
        for mark in PgList::<pg_sys::PlanRowMark>::from_pg((*pstmt).rowMarks).iter_ptr() {
            let locking = (*mark).markType <= pg_sys::RowMarkType::ROW_MARK_KEYSHARE;
            if locking && !(*mark).isParent {
                if let Some(r) = rel_at((*mark).rti) {
                    if !facts.locked.contains(&r) {
                        facts.locked.push(r);
                    }
                }
            }
        }
        facts
    }
}

/// Facts of an analyzed (not yet planned) query, for EXPLAIN and DECLARE CURSOR wrappers.
pub(crate) unsafe fn query_facts(query: *mut pg_sys::Query) -> Facts {
    unsafe {
        if (*query).commandType == pg_sys::CmdType::CMD_UTILITY {
            return Facts::Utility(utility_facts((*query).utilityStmt));
        }
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*query).rtable);
        let rel_at = |rti: u32| -> Option<Relation> {
            let rte = rtable.get_ptr(rti.checked_sub(1)? as usize)?;
            ((*rte).rtekind == pg_sys::RTEKind::RTE_RELATION).then(|| relation((*rte).relid))
        };
        let mut facts = PlanFacts {
            operation: operation((*query).commandType),
            has_modifying_cte: (*query).hasModifyingCTE,
            ..PlanFacts::select()
        };
        for rte in rtable.iter_ptr() {
            if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION {
                facts.read.push(relation((*rte).relid));
                if (*rte).relkind as u8 == pg_sys::RELKIND_FOREIGN_TABLE {
                    facts.foreign.push(relation((*rte).relid));
                }
            }
        }
        if let Some(r) = rel_at((*query).resultRelation as u32) {
            facts.written.push(r);
        }
        for rc in PgList::<pg_sys::RowMarkClause>::from_pg((*query).rowMarks).iter_ptr() {
            if let Some(r) = rel_at((*rc).rti) {
                facts.locked.push(r);
            }
        }
        // the calls it would make, judged as classify() judges them
        facts.functions = crate::functions::call_facts(query as *mut pg_sys::Node);
        facts.runs_as_superuser = pg_sys::superuser_arg(pg_sys::GetUserId());
        Facts::Plan(facts)
    }
}

fn node_name(node: *mut pg_sys::Node) -> String {
    let tag = unsafe { (*node).type_ };
    format!("{tag:?}").trim_start_matches("T_").to_string()
}

/// An object type as SQL names it (`DROP <type> ...`).
fn object_type_name(t: pg_sys::ObjectType::Type) -> String {
    use pg_sys::ObjectType::*;
    let s = match t {
        OBJECT_ACCESS_METHOD => "ACCESS METHOD",
        OBJECT_AGGREGATE => "AGGREGATE",
        OBJECT_AMOP => "OPERATOR OF OPERATOR FAMILY",
        OBJECT_AMPROC => "FUNCTION OF OPERATOR FAMILY",
        OBJECT_ATTRIBUTE => "ATTRIBUTE",
        OBJECT_CAST => "CAST",
        OBJECT_COLUMN => "COLUMN",
        OBJECT_COLLATION => "COLLATION",
        OBJECT_CONVERSION => "CONVERSION",
        OBJECT_DATABASE => "DATABASE",
        OBJECT_DEFAULT => "DEFAULT",
        OBJECT_DEFACL => "DEFAULT PRIVILEGES",
        OBJECT_DOMAIN => "DOMAIN",
        OBJECT_DOMCONSTRAINT => "DOMAIN CONSTRAINT",
        OBJECT_EVENT_TRIGGER => "EVENT TRIGGER",
        OBJECT_EXTENSION => "EXTENSION",
        OBJECT_FDW => "FOREIGN DATA WRAPPER",
        OBJECT_FOREIGN_SERVER => "SERVER",
        OBJECT_FOREIGN_TABLE => "FOREIGN TABLE",
        OBJECT_FUNCTION => "FUNCTION",
        OBJECT_INDEX => "INDEX",
        OBJECT_LANGUAGE => "LANGUAGE",
        OBJECT_LARGEOBJECT => "LARGE OBJECT",
        OBJECT_MATVIEW => "MATERIALIZED VIEW",
        OBJECT_OPCLASS => "OPERATOR CLASS",
        OBJECT_OPERATOR => "OPERATOR",
        OBJECT_OPFAMILY => "OPERATOR FAMILY",
        OBJECT_PARAMETER_ACL => "PARAMETER",
        OBJECT_POLICY => "POLICY",
        OBJECT_PROCEDURE => "PROCEDURE",
        OBJECT_PUBLICATION => "PUBLICATION",
        OBJECT_PUBLICATION_NAMESPACE => "PUBLICATION SCHEMA",
        OBJECT_PUBLICATION_REL => "PUBLICATION RELATION",
        OBJECT_ROLE => "ROLE",
        OBJECT_ROUTINE => "ROUTINE",
        OBJECT_RULE => "RULE",
        OBJECT_SCHEMA => "SCHEMA",
        OBJECT_SEQUENCE => "SEQUENCE",
        OBJECT_SUBSCRIPTION => "SUBSCRIPTION",
        OBJECT_STATISTIC_EXT => "STATISTICS",
        OBJECT_TABCONSTRAINT => "CONSTRAINT",
        OBJECT_TABLE => "TABLE",
        OBJECT_TABLESPACE => "TABLESPACE",
        OBJECT_TRANSFORM => "TRANSFORM",
        OBJECT_TRIGGER => "TRIGGER",
        OBJECT_TSCONFIGURATION => "TEXT SEARCH CONFIGURATION",
        OBJECT_TSDICTIONARY => "TEXT SEARCH DICTIONARY",
        OBJECT_TSPARSER => "TEXT SEARCH PARSER",
        OBJECT_TSTEMPLATE => "TEXT SEARCH TEMPLATE",
        OBJECT_TYPE => "TYPE",
        OBJECT_USER_MAPPING => "USER MAPPING",
        OBJECT_VIEW => "VIEW",
        _ => "OBJECT",
    };
    s.to_string()
}

fn is_relation_type(t: pg_sys::ObjectType::Type) -> bool {
    use pg_sys::ObjectType::*;
    matches!(
        t,
        OBJECT_TABLE
            | OBJECT_VIEW
            | OBJECT_MATVIEW
            | OBJECT_INDEX
            | OBJECT_SEQUENCE
            | OBJECT_FOREIGN_TABLE
    )
}

/// The OID of the relation `[[catalog.]schema.]name` refers to, resolved as
/// PostgreSQL resolves it (search path, `pg_temp`; a temporary relation is
/// looked for in the session's temporary schema only) but without locks,
/// without permission checks and without ever raising: None when the name
/// does not resolve — PostgreSQL itself then reports whatever is wrong, with
/// its own message and position.
unsafe fn lookup_relation(
    catalog: Option<&str>,
    schema: Option<&str>,
    name: &str,
    temporary: bool,
) -> Option<pg_sys::Oid> {
    unsafe {
        if !pg_sys::IsTransactionState() {
            return None;
        }
        if catalog.is_some_and(|c| c != crate::identity::database_name()) {
            return None;
        }
        let cname = CString::new(name).ok()?;
        let mut temp_nsp = pg_sys::InvalidOid;
        let mut temp_toast = pg_sys::InvalidOid;
        pg_sys::GetTempNamespaceState(&mut temp_nsp, &mut temp_toast);
        let nsp = match schema {
            Some("pg_temp") => temp_nsp,
            Some(s) => {
                let cs = CString::new(s).ok()?;
                pg_sys::get_namespace_oid(cs.as_ptr(), true)
            }
            None if temporary => temp_nsp,
            None => {
                let oid = pg_sys::RelnameGetRelid(cname.as_ptr());
                return (oid != pg_sys::InvalidOid).then_some(oid);
            }
        };
        if nsp == pg_sys::InvalidOid || (temporary && nsp != temp_nsp) {
            return None;
        }
        let oid = pg_sys::get_relname_relid(cname.as_ptr(), nsp);
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// The relation a RangeVar names, if it exists (never raises; see [`lookup_relation`]).
///
/// # Safety
/// `rv` must be NULL or a valid RangeVar.
pub unsafe fn range_var_relid(rv: *mut pg_sys::RangeVar) -> Option<pg_sys::Oid> {
    if rv.is_null() {
        return None;
    }
    unsafe {
        let name = cstr((*rv).relname)?;
        lookup_relation(
            cstr((*rv).catalogname).as_deref(),
            cstr((*rv).schemaname).as_deref(),
            &name,
            (*rv).relpersistence as u8 == pg_sys::RELPERSISTENCE_TEMP,
        )
    }
}

/// The relation a qualified name (a List of Strings, as DROP TABLE gives it)
/// names, if it exists (never raises; see [`lookup_relation`]).
///
/// # Safety
/// `names` must be NULL or a valid List.
pub unsafe fn name_list_relid(names: *mut pg_sys::List) -> Option<pg_sys::Oid> {
    unsafe {
        let parts = objects::string_list(names)?;
        match parts.as_slice() {
            [name] => lookup_relation(None, None, name, false),
            [schema, name] => lookup_relation(None, Some(schema), name, false),
            [catalog, schema, name] => lookup_relation(Some(catalog), Some(schema), name, false),
            _ => None,
        }
    }
}

/// `schema.name` (or `name`) of a RangeVar, plus the relation if it exists.
unsafe fn range_var(rv: *mut pg_sys::RangeVar) -> (Option<String>, Option<Relation>) {
    if rv.is_null() {
        return (None, None);
    }
    unsafe {
        let name = cstr((*rv).relname).unwrap_or_default();
        let text = match cstr((*rv).schemaname) {
            Some(s) => format!("{s}.{name}"),
            None => name,
        };
        let rel = range_var_relid(rv).map(relation);
        (Some(rel.as_ref().map_or(text, Relation::qualified)), rel)
    }
}

/// A name from a node that is a String, a List of Strings or an ObjectWithArgs
/// (COPY's column list, DO's language).
unsafe fn object_name(node: *mut pg_sys::Node) -> Option<String> {
    unsafe { objects::node_text(node) }
}

/// Name the object of a DROP/COMMENT/SECURITY LABEL/ALTER statement: a
/// relation (looked up, also recorded as a relation the statement changes)
/// or any other object, by its name; by its type when its shape is unknown.
unsafe fn add_object(u: &mut UtilityFacts, t: pg_sys::ObjectType::Type, node: *mut pg_sys::Node) {
    if node.is_null() {
        return;
    }
    unsafe {
        if is_relation_type(t) && is_a(node, NodeTag::T_List) {
            if let Some(relid) = name_list_relid(node as *mut pg_sys::List) {
                let rel = relation(relid);
                u.objects.push(rel.qualified());
                u.relations.push(rel);
                return;
            }
        }
        match object_text(t, node) {
            Some(name) => u.objects.push(name),
            None => u.objects.push(object_type_name(t)),
        }
    }
}

unsafe fn add_range_var(u: &mut UtilityFacts, rv: *mut pg_sys::RangeVar) {
    let (name, rel) = unsafe { range_var(rv) };
    u.objects.extend(name);
    u.relations.extend(rel);
}

unsafe fn set_stmt(u: &mut UtilityFacts, s: *mut pg_sys::VariableSetStmt) {
    if s.is_null() {
        return;
    }
    unsafe {
        let name = cstr((*s).name).map(|n| n.to_lowercase());
        u.reset = matches!(
            (*s).kind,
            pg_sys::VariableSetKind::VAR_RESET
                | pg_sys::VariableSetKind::VAR_RESET_ALL
                | pg_sys::VariableSetKind::VAR_SET_DEFAULT
        );
        if let Some(first) = PgList::<pg_sys::Node>::from_pg((*s).args).head() {
            if is_a(first, NodeTag::T_A_Const) {
                let c = first as *mut pg_sys::A_Const;
                if !(*c).isnull && (*c).val.node.type_ == NodeTag::T_String {
                    u.setting_value = cstr((*c).val.sval.sval);
                }
            }
        }
        if let Some(n) = &name {
            u.setting_superuser_only = (*s).kind != pg_sys::VariableSetKind::VAR_SET_MULTI
                && crate::gucs::is_superuser_only(n);
        }
        u.setting = name;
    }
}

/// A boolean option's value as `defGetBoolean()` reads it, without raising
/// for a value it would reject (PostgreSQL reports that itself; here it
/// counts as true, the cautious reading for EXPLAIN ANALYZE).
pub(crate) fn defelem_bool(opt: *mut pg_sys::DefElem) -> bool {
    unsafe {
        let arg = (*opt).arg;
        if arg.is_null() {
            return true;
        }
        match (*arg).type_ {
            NodeTag::T_Integer => (*(arg as *mut pg_sys::Integer)).ival != 0,
            NodeTag::T_Boolean => (*(arg as *mut pg_sys::Boolean)).boolval,
            NodeTag::T_String => {
                let s = (*(arg as *mut pg_sys::String)).sval;
                let mut value = true;
                if s.is_null() || !pg_sys::parse_bool(s, &mut value) {
                    return true;
                }
                value
            }
            _ => true,
        }
    }
}

/// Facts of a utility statement.
///
/// # Safety
/// `node` must be a valid utility parse node (as ProcessUtility receives it).
#[allow(non_upper_case_globals)]
pub unsafe fn utility_facts(node: *mut pg_sys::Node) -> UtilityFacts {
    unsafe {
        let mut u = UtilityFacts {
            node: node_name(node),
            command: cstr(pg_sys::GetCommandTagName(pg_sys::CreateCommandTag(node)))
                .unwrap_or_default(),
            ..Default::default()
        };
        match (*node).type_ {
            NodeTag::T_VariableSetStmt => set_stmt(&mut u, node as *mut pg_sys::VariableSetStmt),
            NodeTag::T_VariableShowStmt => {
                u.setting = cstr((*(node as *mut pg_sys::VariableShowStmt)).name)
            }
            NodeTag::T_AlterSystemStmt => {
                set_stmt(&mut u, (*(node as *mut pg_sys::AlterSystemStmt)).setstmt)
            }
            NodeTag::T_AlterRoleSetStmt => {
                set_stmt(&mut u, (*(node as *mut pg_sys::AlterRoleSetStmt)).setstmt)
            }
            NodeTag::T_AlterDatabaseSetStmt => set_stmt(
                &mut u,
                (*(node as *mut pg_sys::AlterDatabaseSetStmt)).setstmt,
            ),
            NodeTag::T_CopyStmt => {
                let s = node as *mut pg_sys::CopyStmt;
                add_range_var(&mut u, (*s).relation);
                u.copy = Some(CopyFacts {
                    from: (*s).is_from,
                    file_or_program: (*s).is_program || !(*s).filename.is_null(),
                });
                // COPY table TO reads the table without the executor: say which columns it exports.
                if let (false, Some(rel)) = ((*s).is_from, u.relations.first().cloned()) {
                    let sensitive = crate::labels::sensitive_columns();
                    let wanted: Vec<String> = PgList::<pg_sys::Node>::from_pg((*s).attlist)
                        .iter_ptr()
                        .filter_map(|n| object_name(n))
                        .collect();
                    let mut read = PlanFacts::select();
                    if let Some(cols) = sensitive.of_relation(pg_sys::Oid::from(rel.oid)) {
                        read.sensitive_columns = cols
                            .iter()
                            .filter(|(_, name)| {
                                wanted.is_empty()
                                    || wanted.iter().any(|w| {
                                        name.ends_with(&format!(
                                            ".{}",
                                            agent_guard_core::quote_ident(w)
                                        ))
                                    })
                            })
                            .map(|(_, name)| name.clone())
                            .collect();
                    }
                    read.read = vec![rel];
                    u.inner = Some(Box::new(Facts::Plan(read)));
                }
            }
            NodeTag::T_ExplainStmt => {
                let s = node as *mut pg_sys::ExplainStmt;
                for opt in PgList::<pg_sys::DefElem>::from_pg((*s).options).iter_ptr() {
                    if cstr((*opt).defname).as_deref() == Some("analyze") {
                        u.explain_analyze = defelem_bool(opt);
                    }
                }
                if is_a((*s).query, NodeTag::T_Query) {
                    u.inner = Some(Box::new(query_facts((*s).query as *mut pg_sys::Query)));
                }
            }
            NodeTag::T_DeclareCursorStmt => {
                let s = node as *mut pg_sys::DeclareCursorStmt;
                if is_a((*s).query, NodeTag::T_Query) {
                    u.inner = Some(Box::new(query_facts((*s).query as *mut pg_sys::Query)));
                }
            }
            NodeTag::T_FetchStmt => u.is_move = (*(node as *mut pg_sys::FetchStmt)).ismove,
            NodeTag::T_NotifyStmt => {
                u.channel = cstr((*(node as *mut pg_sys::NotifyStmt)).conditionname)
            }
            NodeTag::T_TruncateStmt => {
                for rv in PgList::<pg_sys::RangeVar>::from_pg(
                    (*(node as *mut pg_sys::TruncateStmt)).relations,
                )
                .iter_ptr()
                {
                    add_range_var(&mut u, rv);
                }
            }
            NodeTag::T_LockStmt => {
                let s = node as *mut pg_sys::LockStmt;
                u.lock_strong = (*s).mode > pg_sys::AccessShareLock as i32;
                for rv in PgList::<pg_sys::RangeVar>::from_pg((*s).relations).iter_ptr() {
                    add_range_var(&mut u, rv);
                }
            }
            NodeTag::T_CreateStmt => {
                add_range_var(&mut u, (*(node as *mut pg_sys::CreateStmt)).relation)
            }
            NodeTag::T_CreateTableAsStmt => {
                let into = (*(node as *mut pg_sys::CreateTableAsStmt)).into;
                if !into.is_null() {
                    add_range_var(&mut u, (*into).rel);
                }
            }
            NodeTag::T_IndexStmt => {
                add_range_var(&mut u, (*(node as *mut pg_sys::IndexStmt)).relation)
            }
            NodeTag::T_ViewStmt => add_range_var(&mut u, (*(node as *mut pg_sys::ViewStmt)).view),
            NodeTag::T_CreateTrigStmt => {
                add_range_var(&mut u, (*(node as *mut pg_sys::CreateTrigStmt)).relation)
            }
            NodeTag::T_RefreshMatViewStmt => add_range_var(
                &mut u,
                (*(node as *mut pg_sys::RefreshMatViewStmt)).relation,
            ),
            NodeTag::T_CreateSchemaStmt => u
                .objects
                .extend(cstr((*(node as *mut pg_sys::CreateSchemaStmt)).schemaname)),
            NodeTag::T_AlterTableStmt => {
                let s = node as *mut pg_sys::AlterTableStmt;
                add_range_var(&mut u, (*s).relation);
                use pg_sys::AlterTableType::*;
                for cmd in PgList::<pg_sys::AlterTableCmd>::from_pg((*s).cmds).iter_ptr() {
                    if matches!(
                        (*cmd).subtype,
                        AT_ChangeOwner
                            | AT_EnableRowSecurity
                            | AT_DisableRowSecurity
                            | AT_ForceRowSecurity
                            | AT_NoForceRowSecurity
                    ) {
                        u.changes_owner_or_row_security = true;
                    }
                }
            }
            NodeTag::T_DropStmt => {
                let s = node as *mut pg_sys::DropStmt;
                u.object_type = Some(object_type_name((*s).removeType));
                for obj in PgList::<pg_sys::Node>::from_pg((*s).objects).iter_ptr() {
                    add_object(&mut u, (*s).removeType, obj);
                }
            }
            NodeTag::T_RenameStmt => {
                let s = node as *mut pg_sys::RenameStmt;
                u.object_type = Some(object_type_name((*s).renameType));
                add_range_var(&mut u, (*s).relation);
                use pg_sys::ObjectType::*;
                let sub = cstr((*s).subname);
                match ((*s).renameType, (*s).object.is_null(), sub) {
                    // ALTER DOMAIN d RENAME CONSTRAINT c: the domain, then the constraint
                    (OBJECT_DOMCONSTRAINT, false, Some(c)) => u.objects.extend(
                        object_text(OBJECT_DOMAIN, (*s).object).map(|d| format!("{d}.{c}")),
                    ),
                    (t, false, _) => add_object(&mut u, t, (*s).object),
                    // schemas, databases, roles, tablespaces, ...: the old name
                    (_, true, Some(name)) if (*s).relation.is_null() => u.objects.push(name),
                    _ => {}
                }
            }
            NodeTag::T_CommentStmt => {
                let s = node as *mut pg_sys::CommentStmt;
                u.object_type = Some(object_type_name((*s).objtype));
                add_object(&mut u, (*s).objtype, (*s).object);
            }
            NodeTag::T_SecLabelStmt => {
                let s = node as *mut pg_sys::SecLabelStmt;
                u.object_type = Some(object_type_name((*s).objtype));
                add_object(&mut u, (*s).objtype, (*s).object);
            }
            NodeTag::T_AlterOwnerStmt => {
                let s = node as *mut pg_sys::AlterOwnerStmt;
                u.object_type = Some(object_type_name((*s).objectType));
                add_range_var(&mut u, (*s).relation);
                add_object(&mut u, (*s).objectType, (*s).object);
            }
            NodeTag::T_AlterObjectSchemaStmt => {
                let s = node as *mut pg_sys::AlterObjectSchemaStmt;
                u.object_type = Some(object_type_name((*s).objectType));
                add_range_var(&mut u, (*s).relation);
                add_object(&mut u, (*s).objectType, (*s).object);
                // the schema it moves into is changed too
                u.objects.extend(cstr((*s).newschema));
            }
            NodeTag::T_CreateExtensionStmt => u
                .objects
                .extend(cstr((*(node as *mut pg_sys::CreateExtensionStmt)).extname)),
            NodeTag::T_AlterExtensionStmt => u
                .objects
                .extend(cstr((*(node as *mut pg_sys::AlterExtensionStmt)).extname)),
            NodeTag::T_AlterExtensionContentsStmt => u.objects.extend(cstr(
                (*(node as *mut pg_sys::AlterExtensionContentsStmt)).extname,
            )),
            NodeTag::T_LoadStmt => u
                .objects
                .extend(cstr((*(node as *mut pg_sys::LoadStmt)).filename)),
            NodeTag::T_DoStmt => {
                let mut language = "plpgsql".to_string();
                for opt in PgList::<pg_sys::DefElem>::from_pg((*(node as *mut pg_sys::DoStmt)).args)
                    .iter_ptr()
                {
                    if cstr((*opt).defname).as_deref() == Some("language") {
                        if let Some(l) = object_name((*opt).arg) {
                            language = l;
                        }
                    }
                }
                u.untrusted_language = !language_is_trusted(&language);
                u.objects.push(format!("LANGUAGE {language}"));
            }
            _ => {}
        }
        // COPY FROM routes rows into partitions, TRUNCATE empties children too
        for r in &u.relations {
            foreign_descendants(pg_sys::Oid::from(r.oid), &mut u.foreign);
        }
        u
    }
}

/// `relid` and its partitions and inheritance descendants that are foreign tables.
fn foreign_descendants(relid: pg_sys::Oid, out: &mut Vec<Relation>) {
    for d in crate::catalog::with_descendants(relid) {
        if unsafe { pg_sys::get_rel_relkind(d) } as u8 == pg_sys::RELKIND_FOREIGN_TABLE {
            let r = relation(d);
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
}

/// Trusted procedural languages run with the caller's privileges only.
/// (Unknown languages count as trusted: PostgreSQL itself reports them.)
/// Looked up in the language syscache, without a query.
fn language_is_trusted(name: &str) -> bool {
    if !unsafe { pg_sys::IsTransactionState() } {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(name) else {
        return true;
    };
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::LANGNAME as i32,
            pg_sys::Datum::from(c.as_ptr()),
        );
        if tup.is_null() {
            return true;
        }
        const ANUM_LANPLTRUSTED: pg_sys::AttrNumber = 5; // catalog/pg_language_d.h
        let mut isnull = false;
        let d = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::LANGNAME as i32,
            tup,
            ANUM_LANPLTRUSTED,
            &mut isnull,
        );
        let trusted = (!isnull && d.value() != 0) || name == "internal";
        pg_sys::ReleaseSysCache(tup);
        trusted
    }
}

/// Functions an analysed query (or an expression) calls anywhere — target
/// list, quals, sublinks, subqueries, FROM-clause functions — by OID, with
/// the first argument when it is a text constant (set_config's setting).
///
/// # Safety
/// `node` must be a valid analysed `Query` or expression tree.
pub unsafe fn called_functions(node: *mut pg_sys::Node) -> Vec<(pg_sys::Oid, Option<String>)> {
    let mut calls: Vec<(pg_sys::Oid, Option<String>)> = vec![];
    unsafe {
        collect_functions(
            node,
            &mut calls as *mut Vec<(pg_sys::Oid, Option<String>)> as *mut std::ffi::c_void,
        );
    }
    calls.sort_by(|a, b| (a.0.to_u32(), &a.1).cmp(&(b.0.to_u32(), &b.1)));
    calls.dedup();
    calls
}

/// The value of a text constant, if `node` is one.
unsafe fn text_constant(node: *mut pg_sys::Node) -> Option<String> {
    unsafe {
        if node.is_null() || !is_a(node, NodeTag::T_Const) {
            return None;
        }
        let c = node as *mut pg_sys::Const;
        if (*c).constisnull || (*c).consttype != pg_sys::TEXTOID {
            return None;
        }
        let text = pg_sys::text_to_cstring((*c).constvalue.cast_mut_ptr());
        cstr(text)
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn collect_functions(
    node: *mut pg_sys::Node,
    ctx: *mut std::ffi::c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    unsafe {
        let calls = &mut *(ctx as *mut Vec<(pg_sys::Oid, Option<String>)>);
        match (*node).type_ {
            NodeTag::T_FuncExpr => {
                let f = node as *mut pg_sys::FuncExpr;
                let first = PgList::<pg_sys::Node>::from_pg((*f).args).head();
                calls.push(((*f).funcid, first.and_then(|n| text_constant(n))))
            }
            NodeTag::T_OpExpr | NodeTag::T_DistinctExpr | NodeTag::T_NullIfExpr => {
                // parse analysis leaves opfuncid to the planner
                let op = node as *mut pg_sys::OpExpr;
                let f = if (*op).opfuncid == pg_sys::InvalidOid {
                    pg_sys::get_opcode((*op).opno)
                } else {
                    (*op).opfuncid
                };
                calls.push((f, None))
            }
            NodeTag::T_ScalarArrayOpExpr => {
                let op = node as *mut pg_sys::ScalarArrayOpExpr;
                let f = if (*op).opfuncid == pg_sys::InvalidOid {
                    pg_sys::get_opcode((*op).opno)
                } else {
                    (*op).opfuncid
                };
                calls.push((f, None))
            }
            NodeTag::T_Aggref => calls.push(((*(node as *mut pg_sys::Aggref)).aggfnoid, None)),
            NodeTag::T_WindowFunc => {
                calls.push(((*(node as *mut pg_sys::WindowFunc)).winfnoid, None))
            }
            NodeTag::T_Query => {
                return pg_sys::query_tree_walker(
                    node as *mut pg_sys::Query,
                    Some(collect_functions),
                    ctx,
                    0,
                )
            }
            _ => {}
        }
        pg_sys::expression_tree_walker(node, Some(collect_functions), ctx)
    }
}
