//! From facts to a risk category.
//!
//! One function, [`classify`], serves both run-time enforcement and
//! `agent_guard.classify()`. Unknown utility statements are `admin`: what
//! agent_guard does not understand, an agent may not run.

use crate::facts::{Facts, Operation, PlanFacts, Relation, UtilityFacts};
use crate::risk::Risk;
use crate::{GUARD_SCHEMA, REQUEST_ID_SETTING};

/// The verdict on one statement, before any policy is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// Command as people say it, e.g. `DELETE`, `CREATE TABLE`, `SET ROLE`.
    pub command: String,
    pub risk: Risk,
    /// The objects the risk applies to, qualified.
    pub objects: Vec<String>,
    /// Relations changed (or locked): what a grant must cover.
    pub written: Vec<Relation>,
    pub sensitive_columns: Vec<String>,
    /// The statement would change agent_guard itself: its schema, extension or settings.
    pub touches_guard: bool,
    /// Why this category, for people.
    pub reason: String,
    /// The statement's own text, when the caller knows it (for grant
    /// fingerprints and for the request a refusal suggests).
    pub statement: Option<String>,
}

impl Classification {
    /// A classification with no objects.
    pub fn new(command: &str, risk: Risk, reason: impl Into<String>) -> Classification {
        Classification {
            command: command.to_string(),
            risk,
            objects: vec![],
            written: vec![],
            sensitive_columns: vec![],
            touches_guard: false,
            reason: reason.into(),
            statement: None,
        }
    }

    fn with_objects(mut self, objects: Vec<String>) -> Classification {
        self.objects = objects;
        self
    }

    /// Session housekeeping stays possible even for orphaned agents.
    pub fn is_housekeeping(&self) -> bool {
        self.risk == Risk::Session
    }
}

/// Classify one statement.
pub fn classify(facts: &Facts) -> Classification {
    match facts {
        Facts::Plan(plan) => classify_plan(plan),
        Facts::Utility(utility) => classify_utility(utility),
    }
}

fn in_guard_schema(rel: &Relation) -> bool {
    rel.schema == GUARD_SCHEMA
}

fn dedup(mut v: Vec<Relation>) -> Vec<Relation> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|r| seen.insert(r.oid));
    v
}

/// Reads and writes of foreign tables: the foreign server runs them as the
/// user mapping's remote role (a human's, for all agent_guard knows), where
/// no agent is recognised, nothing is masked and nothing is audited.
fn foreign_access(command: &str, foreign: &[Relation]) -> Classification {
    let names: Vec<String> = foreign.iter().map(Relation::qualified).collect();
    let mut c = Classification::new(
        &format!("{command} of a foreign table"),
        Risk::Admin,
        format!(
            "{} is a foreign table: its rows are read and written by another server, as the user mapping's remote role, outside agent_guard's identification, masking and audit",
            names.join(", ")
        ),
    );
    c.objects = names;
    c
}

fn classify_plan(p: &PlanFacts) -> Classification {
    if !p.foreign.is_empty() {
        return foreign_access(p.operation.tag(), &p.foreign);
    }
    let mut c = classify_plan_relations(p);
    // A call whose risk exceeds the statement's decides (pg_read_file, nextval, …).
    for (schema, name) in &p.functions {
        if let Some(f) = classify_function(schema, name, p.runs_as_superuser) {
            if f.risk > c.risk {
                let objects = c.objects.clone();
                c = f;
                c.objects = objects;
            }
        }
    }
    c
}

fn classify_plan_relations(p: &PlanFacts) -> Classification {
    let command = p.operation.tag();
    let names = |rels: &[Relation]| rels.iter().map(Relation::qualified).collect::<Vec<_>>();

    if p.integrity_check && p.written.is_empty() && p.operation == Operation::Select {
        let mut c = Classification::new(
            command,
            Risk::Read,
            "foreign-key check issued by PostgreSQL's referential-integrity trigger",
        );
        c.objects = names(&p.read);
        return c;
    }

    let writes = !p.written.is_empty() || p.operation != Operation::Select || p.has_modifying_cte;
    if writes || !p.locked.is_empty() {
        let mut written = p.written.clone();
        written.extend(p.locked.iter().cloned());
        let written = dedup(written);
        let reason = if p.has_modifying_cte && p.operation == Operation::Select {
            format!(
                "data-modifying WITH changes {}",
                names(&p.written).join(", ")
            )
        } else if writes {
            format!("{} changes {}", command, names(&p.written).join(", "))
        } else {
            format!(
                "row locks (FOR UPDATE/SHARE) on {}",
                names(&p.locked).join(", ")
            )
        };
        let command = if !writes {
            "SELECT FOR UPDATE/SHARE"
        } else {
            command
        };
        let mut c = Classification::new(command, Risk::Write, reason);
        c.objects = names(&written);
        c.touches_guard = written.iter().any(in_guard_schema);
        c.written = written;
        c.sensitive_columns = p.sensitive_columns.clone();
        return c;
    }

    if !p.sensitive_columns.is_empty() {
        let mut c = Classification::new(
            command,
            Risk::SensitiveRead,
            format!("reads sensitive {}", p.sensitive_columns.join(", ")),
        );
        c.objects = names(&p.read);
        c.sensitive_columns = p.sensitive_columns.clone();
        return c;
    }

    let reason = if p.read.is_empty() {
        "reads no table".to_string()
    } else {
        format!("reads {}", names(&p.read).join(", "))
    };
    Classification::new(command, Risk::Read, reason).with_objects(names(&p.read))
}

/// Node tags of statements that change privileges, roles, ownership or row security.
const PRIVILEGE_NODES: &[&str] = &[
    "GrantStmt",
    "GrantRoleStmt",
    "CreateRoleStmt",
    "AlterRoleStmt",
    "AlterRoleSetStmt",
    "DropRoleStmt",
    "AlterDefaultPrivilegesStmt",
    "AlterOwnerStmt",
    "ReassignOwnedStmt",
    "DropOwnedStmt",
    "SecLabelStmt",
    "CreatePolicyStmt",
    "AlterPolicyStmt",
    "CreateUserMappingStmt",
    "AlterUserMappingStmt",
    "DropUserMappingStmt",
];

/// Node tags of server administration.
const ADMIN_NODES: &[&str] = &[
    "AlterSystemStmt",
    "LoadStmt",
    "CreatedbStmt",
    "AlterDatabaseStmt",
    "AlterDatabaseSetStmt",
    "AlterDatabaseRefreshCollStmt",
    "DropdbStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
    "AlterTableSpaceOptionsStmt",
    "AlterTableMoveAllStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "CreateEventTrigStmt",
    "AlterEventTrigStmt",
    "CreatePLangStmt",
    "CreatePublicationStmt",
    "AlterPublicationStmt",
    "CreateSubscriptionStmt",
    "AlterSubscriptionStmt",
    "DropSubscriptionStmt",
    "VacuumStmt",
    "ClusterStmt",
    "ReindexStmt",
    "CheckPointStmt",
    "CreateFdwStmt",
    "AlterFdwStmt",
    "CreateForeignServerStmt",
    "AlterForeignServerStmt",
    "CreateAmStmt",
    "CreateTransformStmt",
];

/// Node tags of schema changes.
const DDL_NODES: &[&str] = &[
    "CreateStmt",
    "CreateTableAsStmt",
    "RefreshMatViewStmt",
    "AlterTableStmt",
    "IndexStmt",
    "ViewStmt",
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "CreateTrigStmt",
    "CreateSchemaStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "DefineStmt",
    "CompositeTypeStmt",
    "CreateEnumStmt",
    "CreateRangeStmt",
    "AlterEnumStmt",
    "CreateDomainStmt",
    "AlterDomainStmt",
    "CommentStmt",
    "RenameStmt",
    "AlterObjectSchemaStmt",
    "RuleStmt",
    "CreateCastStmt",
    "CreateConversionStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "AlterOpFamilyStmt",
    "AlterOperatorStmt",
    "AlterTypeStmt",
    "CreateStatsStmt",
    "AlterStatsStmt",
    "AlterCollationStmt",
    "AlterTSDictionaryStmt",
    "AlterTSConfigurationStmt",
    "CreateForeignTableStmt",
    "ImportForeignSchemaStmt",
    "AlterObjectDependsStmt",
    "DropStmt",
];

/// Session housekeeping.
const SESSION_NODES: &[&str] = &[
    "TransactionStmt",
    "VariableShowStmt",
    "DiscardStmt",
    "ListenStmt",
    "UnlistenStmt",
    "NotifyStmt",
    "DeallocateStmt",
    "ClosePortalStmt",
    "PrepareStmt",
    "ConstraintsSetStmt",
];

/// Object types whose DROP/RENAME/COMMENT is administration, not schema work.
const ADMIN_OBJECT_TYPES: &[&str] = &[
    "EXTENSION",
    "EVENT TRIGGER",
    "LANGUAGE",
    "PUBLICATION",
    "SUBSCRIPTION",
    "FOREIGN DATA WRAPPER",
    "SERVER",
    "ACCESS METHOD",
    "TRANSFORM",
    "DATABASE",
    "TABLESPACE",
];

/// Object types whose DROP/RENAME is a privilege change.
const PRIVILEGE_OBJECT_TYPES: &[&str] = &["ROLE", "POLICY", "USER MAPPING"];

fn touches_guard_utility(u: &UtilityFacts) -> bool {
    let guard_object = |o: &String| {
        o == GUARD_SCHEMA
            || o.starts_with(&format!("{GUARD_SCHEMA}."))
            || o.starts_with(&format!("\"{GUARD_SCHEMA}\"."))
    };
    let guard_setting = u
        .setting
        .as_deref()
        .is_some_and(|s| s.starts_with("agent_guard.") && s != REQUEST_ID_SETTING);
    let extension_stmt = matches!(
        u.node.as_str(),
        "CreateExtensionStmt" | "AlterExtensionStmt" | "AlterExtensionContentsStmt"
    ) || u.object_type.as_deref() == Some("EXTENSION");
    guard_setting
        || u.relations.iter().any(in_guard_schema)
        || (extension_stmt && u.objects.iter().any(|o| o == GUARD_SCHEMA))
        || (!matches!(
            u.node.as_str(),
            "VariableShowStmt" | "ExplainStmt" | "CopyStmt" | "DeclareCursorStmt" | "ExecuteStmt"
        ) && u.objects.iter().any(guard_object))
        || (u.copy.is_some_and(|c| c.from) && u.relations.iter().any(in_guard_schema))
}

fn classify_utility(u: &UtilityFacts) -> Classification {
    let mut c = classify_utility_risk(u);
    c.touches_guard = c.touches_guard || (c.risk > Risk::SensitiveRead && touches_guard_utility(u));
    if c.objects.is_empty() {
        c.objects = u.objects.clone();
    }
    c
}

fn inner_or(u: &UtilityFacts, command: &str, fallback: Classification) -> Classification {
    match &u.inner {
        Some(inner) => {
            let mut c = classify(inner);
            c.reason = format!("{} of {}: {}", command, c.command, c.reason);
            c.command = format!("{} {}", command, c.command);
            c
        }
        None => fallback,
    }
}

fn classify_utility_risk(u: &UtilityFacts) -> Classification {
    let node = u.node.as_str();
    let cmd = if u.command.is_empty() {
        node
    } else {
        u.command.as_str()
    };
    let object_type = u.object_type.as_deref().unwrap_or("");

    match node {
        "VariableSetStmt" => return classify_set(u, cmd),
        "ExplainStmt" => {
            if !u.explain_analyze {
                return Classification::new(
                    "EXPLAIN",
                    Risk::Read,
                    "EXPLAIN without ANALYZE plans but does not run",
                );
            }
            let fallback = Classification::new(
                "EXPLAIN ANALYZE",
                Risk::Read,
                "EXPLAIN ANALYZE of a statement that is checked when it runs",
            );
            let mut c = inner_or(u, "EXPLAIN ANALYZE", fallback);
            // EXPLAIN ANALYZE runs the statement, so it carries the statement's risk.
            if c.risk == Risk::Session {
                c.risk = Risk::Read;
            }
            return c;
        }
        "DeclareCursorStmt" => {
            let fallback = Classification::new("DECLARE CURSOR", Risk::Read, "cursor over a query");
            return inner_or(u, "DECLARE CURSOR", fallback);
        }
        "ExecuteStmt" => {
            let fallback = Classification::new(
                "EXECUTE",
                Risk::Session,
                "runs a prepared statement, which is checked when it runs",
            );
            return inner_or(u, "EXECUTE", fallback);
        }
        "FetchStmt" => {
            return if u.is_move {
                Classification::new("MOVE", Risk::Session, "moves a cursor")
            } else {
                Classification::new("FETCH", Risk::Read, "fetches from a cursor")
            };
        }
        "CopyStmt" | "TruncateStmt" if !u.foreign.is_empty() => {
            return foreign_access(&u.command, &u.foreign);
        }
        "ImportForeignSchemaStmt" => {
            return Classification::new(
                "IMPORT FOREIGN SCHEMA",
                Risk::Admin,
                "IMPORT FOREIGN SCHEMA connects to another server as the user mapping's remote role",
            )
            .with_objects(u.objects.clone());
        }
        "CopyStmt" => return classify_copy(u),
        "TruncateStmt" => {
            let mut c = Classification::new(
                "TRUNCATE TABLE",
                Risk::Write,
                format!("TRUNCATE empties {}", u.objects.join(", ")),
            );
            c.written = u.relations.clone();
            return c;
        }
        "LockStmt" => {
            return if u.lock_strong {
                let mut c = Classification::new(
                    "LOCK TABLE",
                    Risk::Write,
                    "explicit table lock stronger than ACCESS SHARE",
                );
                c.written = u.relations.clone();
                c
            } else {
                Classification::new("LOCK TABLE", Risk::Read, "ACCESS SHARE table lock")
            };
        }
        "DoStmt" => {
            return if u.untrusted_language {
                Classification::new(
                    "DO",
                    Risk::Admin,
                    "DO block in an untrusted language can reach the server's files and programs",
                )
            } else {
                Classification::new(
                    "DO",
                    Risk::Read,
                    "code block; each statement inside is classified as it runs",
                )
            };
        }
        "CallStmt" => {
            return Classification::new(
                "CALL",
                Risk::Read,
                "procedure call; each statement inside is classified as it runs",
            );
        }
        "CreateTableAsStmt" => {
            return Classification::new(
                cmd,
                Risk::Ddl,
                format!("{} creates {}", cmd, u.objects.join(", ")),
            );
        }
        "AlterTableStmt" if u.changes_owner_or_row_security => {
            return Classification::new(
                cmd,
                Risk::Privilege,
                "changes ownership or row-level security",
            );
        }
        "DropStmt" | "RenameStmt" | "CommentStmt" | "AlterObjectSchemaStmt" => {
            if ADMIN_OBJECT_TYPES.contains(&object_type) {
                return Classification::new(
                    cmd,
                    Risk::Admin,
                    format!("{cmd} of a {}", object_type.to_lowercase()),
                );
            }
            if PRIVILEGE_OBJECT_TYPES.contains(&object_type) && node != "CommentStmt" {
                return Classification::new(
                    cmd,
                    Risk::Privilege,
                    format!("{cmd} of a {}", object_type.to_lowercase()),
                );
            }
        }
        "AlterRoleSetStmt" | "AlterDatabaseSetStmt" => {}
        _ => {}
    }

    if SESSION_NODES.contains(&node) {
        return Classification::new(cmd, Risk::Session, "session housekeeping");
    }
    if PRIVILEGE_NODES.contains(&node) {
        return Classification::new(
            cmd,
            Risk::Privilege,
            "changes privileges, roles, ownership, labels or row security",
        );
    }
    if ADMIN_NODES.contains(&node) {
        return Classification::new(cmd, Risk::Admin, "server administration");
    }
    if DDL_NODES.contains(&node) {
        let what = if u.objects.is_empty() {
            String::new()
        } else {
            format!(" {}", u.objects.join(", "))
        };
        let mut c = Classification::new(cmd, Risk::Ddl, format!("schema change{what}"));
        c.written = u.relations.clone();
        return c;
    }
    Classification::new(
        cmd,
        Risk::Admin,
        format!("statement {node} is not recognised, so it is treated as administration"),
    )
}

fn classify_set(u: &UtilityFacts, cmd: &str) -> Classification {
    let name = u.setting.as_deref().unwrap_or("");
    let value_none = u
        .setting_value
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("none"));
    match name {
        "role" if !(u.reset || value_none) => Classification::new(
            "SET ROLE",
            Risk::Privilege,
            "SET ROLE switches to another role's privileges",
        ),
        "session_authorization" if !u.reset => Classification::new(
            "SET SESSION AUTHORIZATION",
            Risk::Privilege,
            "SET SESSION AUTHORIZATION switches the session's identity",
        ),
        n if n.starts_with("agent_guard.") && n != REQUEST_ID_SETTING => {
            let mut c = Classification::new(
                &format!("{cmd} {n}"),
                Risk::Admin,
                format!("changes agent_guard's own setting {n}"),
            );
            c.touches_guard = true;
            c
        }
        n if u.setting_superuser_only && !u.reset => Classification::new(
            cmd,
            Risk::Admin,
            format!("changes the superuser-only setting {n}"),
        ),
        _ => Classification::new(cmd, Risk::Session, "ordinary setting"),
    }
}

fn classify_copy(u: &UtilityFacts) -> Classification {
    let copy = u.copy.unwrap_or(crate::facts::CopyFacts {
        from: false,
        file_or_program: false,
    });
    if copy.file_or_program {
        let dir = if copy.from { "FROM" } else { "TO" };
        return Classification::new(
            &format!("COPY {dir}"),
            Risk::Admin,
            "COPY with a server file or PROGRAM reaches the server's filesystem or shell",
        );
    }
    if copy.from {
        let mut c = Classification::new(
            "COPY FROM",
            Risk::Write,
            format!("COPY FROM loads into {}", u.objects.join(", ")),
        );
        c.written = u.relations.clone();
        return c;
    }
    if let Some(inner) = &u.inner {
        let mut c = classify(inner);
        c.command = "COPY TO".into();
        c.reason = format!("COPY TO of a query: {}", c.reason);
        return c;
    }
    Classification::new(
        "COPY TO",
        Risk::Read,
        format!("COPY TO exports {}", u.objects.join(", ")),
    )
}

/// What calling a function means, when its call alone carries a risk.
///
/// `schema` and `name` identify the function; `caller_is_superuser` is the
/// role the call would run as. Returns `None` for ordinary functions.
pub fn classify_function(
    schema: &str,
    name: &str,
    caller_is_superuser: bool,
) -> Option<Classification> {
    const ADMIN_FUNCTIONS: &[&str] = &[
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalmapdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_replslotdir",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "lo_import",
        "lo_export",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_replication_origin_create",
        "pg_replication_origin_drop",
        "pg_replication_origin_advance",
        "pg_replication_origin_session_setup",
        "pg_log_backend_memory_contexts",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_logical_emit_message",
    ];
    const WRITE_FUNCTIONS: &[&str] = &[
        "nextval",
        "setval",
        "lo_create",
        "lo_creat",
        "lo_unlink",
        "lo_put",
        "lo_from_bytea",
        "lo_truncate",
        "lo_truncate64",
        "lowrite",
    ];
    let qualified = format!("{schema}.{name}");
    if schema == "pg_catalog" && ADMIN_FUNCTIONS.contains(&name) {
        return Some(Classification::new(
            &format!("SELECT {name}()"),
            Risk::Admin,
            format!("{qualified}() is a server-administration function"),
        ));
    }
    // Readers of raw pages, WAL records or logical decoding output, in
    // whatever schema their extension lives: they bypass every column mask.
    const RAW_DATA_FUNCTIONS: &[&str] = &[
        "get_raw_page",
        "heap_page_items",
        "heap_page_item_attrs",
        "tuple_data_split",
        "bt_page_items",
        "brin_page_items",
        "gin_leafpage_items",
        "hash_page_items",
        "gist_page_items",
        "gist_page_items_bytea",
        "pg_get_wal_record_info",
        "pg_get_wal_records_info",
        "pg_get_wal_records_info_till_end_of_wal",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes",
    ];
    if RAW_DATA_FUNCTIONS.contains(&name) {
        return Some(Classification::new(
            &format!("SELECT {name}()"),
            Risk::Admin,
            format!(
                "{qualified}() reads raw pages, WAL or decoded changes, past every column mask"
            ),
        ));
    }
    if name.starts_with("dblink") {
        return Some(Classification::new(
            &format!("SELECT {name}()"),
            Risk::Admin,
            format!("{qualified}() opens connections to other servers"),
        ));
    }
    if schema == "pg_catalog" && name == "set_config" && caller_is_superuser {
        return Some(Classification::new(
            "SELECT set_config()",
            Risk::Admin,
            "set_config() run as a superuser can change protected settings; use SET, which agent_guard can inspect",
        ));
    }
    if schema == "pg_catalog" && WRITE_FUNCTIONS.contains(&name) {
        return Some(Classification::new(
            &format!("SELECT {name}()"),
            Risk::Write,
            format!("{qualified}() changes a sequence or large object"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::CopyFacts;

    fn rel(name: &str) -> Relation {
        Relation::new(100 + name.len() as u32, "public", name)
    }

    fn util(node: &str, command: &str) -> UtilityFacts {
        UtilityFacts {
            node: node.into(),
            command: command.into(),
            ..Default::default()
        }
    }

    fn plan(op: Operation) -> PlanFacts {
        PlanFacts {
            operation: op,
            ..PlanFacts::select()
        }
    }

    fn risk_of_util(u: UtilityFacts) -> Risk {
        classify(&Facts::Utility(u)).risk
    }

    #[test]
    fn foreign_tables_are_administration() {
        let ft = Relation::new(900, "public", "remote_customers");
        for op in [Operation::Select, Operation::Insert, Operation::Update] {
            let mut p = plan(op);
            p.read = vec![ft.clone(), rel("orders")];
            p.foreign = vec![ft.clone()];
            let c = classify(&Facts::Plan(p));
            assert_eq!(c.risk, Risk::Admin, "{op:?}");
            assert_eq!(c.objects, vec!["public.remote_customers".to_string()]);
            assert!(c.command.ends_with("of a foreign table"), "{}", c.command);
        }
        for (node, command) in [("CopyStmt", "COPY"), ("TruncateStmt", "TRUNCATE TABLE")] {
            let mut u = util(node, command);
            u.copy = Some(CopyFacts { from: true, file_or_program: false });
            u.relations = vec![ft.clone()];
            u.foreign = vec![ft.clone()];
            assert_eq!(risk_of_util(u), Risk::Admin, "{node}");
        }
        assert_eq!(
            risk_of_util(util("ImportForeignSchemaStmt", "IMPORT FOREIGN SCHEMA")),
            Risk::Admin
        );
        // a local table stays a read
        let mut p = plan(Operation::Select);
        p.read = vec![rel("orders")];
        assert_eq!(classify(&Facts::Plan(p)).risk, Risk::Read);
    }

    #[test]
    fn function_calls_raise_the_risk() {
        let mut p = PlanFacts::select();
        p.functions = vec![
            ("pg_catalog".into(), "lower".into()),
            ("pg_catalog".into(), "pg_read_file".into()),
        ];
        assert_eq!(classify(&Facts::Plan(p.clone())).risk, Risk::Admin);
        p.functions = vec![("pg_catalog".into(), "nextval".into())];
        assert_eq!(classify(&Facts::Plan(p)).risk, Risk::Write);
    }

    #[test]
    fn plain_select_is_read() {
        let mut p = PlanFacts::select();
        p.read = vec![rel("orders")];
        let c = classify(&Facts::Plan(p));
        assert_eq!(c.risk, Risk::Read);
        assert_eq!(c.objects, vec!["public.orders"]);
    }

    #[test]
    fn sensitive_column_makes_sensitive_read() {
        let mut p = PlanFacts::select();
        p.read = vec![rel("customers")];
        p.sensitive_columns = vec!["public.customers.ssn".into()];
        let c = classify(&Facts::Plan(p));
        assert_eq!(c.risk, Risk::SensitiveRead);
        assert_eq!(c.sensitive_columns, vec!["public.customers.ssn"]);
    }

    #[test]
    fn every_dml_operation_is_write() {
        for op in [
            Operation::Insert,
            Operation::Update,
            Operation::Delete,
            Operation::Merge,
        ] {
            let mut p = plan(op);
            p.written = vec![rel("t")];
            let c = classify(&Facts::Plan(p));
            assert_eq!(c.risk, Risk::Write, "{op:?}");
            assert_eq!(c.written, vec![rel("t")]);
        }
    }

    #[test]
    fn writable_cte_inside_select_is_write() {
        let mut p = PlanFacts::select();
        p.has_modifying_cte = true;
        p.written = vec![rel("t")];
        let c = classify(&Facts::Plan(p));
        assert_eq!(c.risk, Risk::Write);
        assert!(c.reason.contains("data-modifying WITH"));
    }

    #[test]
    fn row_locks_are_write_but_fk_checks_are_not() {
        let mut p = PlanFacts::select();
        p.locked = vec![rel("t")];
        assert_eq!(classify(&Facts::Plan(p.clone())).risk, Risk::Write);
        p.integrity_check = true;
        assert_eq!(classify(&Facts::Plan(p)).risk, Risk::Read);
    }

    #[test]
    fn fk_trigger_writes_still_need_coverage() {
        let mut p = plan(Operation::Delete);
        p.written = vec![rel("child")];
        p.integrity_check = true;
        assert_eq!(classify(&Facts::Plan(p)).risk, Risk::Write);
    }

    #[test]
    fn writes_to_guard_schema_touch_the_guard() {
        let mut p = plan(Operation::Update);
        p.written = vec![Relation::new(1, "agent_guard", "agent_registry")];
        assert!(classify(&Facts::Plan(p)).touches_guard);
    }

    #[test]
    fn session_statements() {
        for node in [
            "TransactionStmt",
            "VariableShowStmt",
            "DiscardStmt",
            "ListenStmt",
            "DeallocateStmt",
            "ClosePortalStmt",
        ] {
            assert_eq!(risk_of_util(util(node, "X")), Risk::Session, "{node}");
        }
        let mut set = util("VariableSetStmt", "SET");
        set.setting = Some("work_mem".into());
        assert_eq!(risk_of_util(set), Risk::Session);
    }

    #[test]
    fn set_role_and_session_authorization_are_privilege() {
        let mut set = util("VariableSetStmt", "SET");
        set.setting = Some("role".into());
        set.setting_value = Some("admin".into());
        assert_eq!(risk_of_util(set.clone()), Risk::Privilege);
        set.setting_value = Some("none".into());
        assert_eq!(
            risk_of_util(set.clone()),
            Risk::Session,
            "SET ROLE NONE goes back"
        );
        set.reset = true;
        set.setting_value = None;
        assert_eq!(risk_of_util(set), Risk::Session, "RESET ROLE goes back");
        let mut auth = util("VariableSetStmt", "SET");
        auth.setting = Some("session_authorization".into());
        assert_eq!(risk_of_util(auth), Risk::Privilege);
    }

    #[test]
    fn guard_settings_are_protected_except_request_id() {
        let mut set = util("VariableSetStmt", "SET");
        set.setting = Some("agent_guard.enabled".into());
        let c = classify(&Facts::Utility(set.clone()));
        assert_eq!(c.risk, Risk::Admin);
        assert!(c.touches_guard);
        set.setting = Some("agent_guard.request_id".into());
        let c = classify(&Facts::Utility(set));
        assert_eq!(c.risk, Risk::Session);
        assert!(!c.touches_guard);
    }

    #[test]
    fn superuser_only_settings_are_admin() {
        let mut set = util("VariableSetStmt", "SET");
        set.setting = Some("session_replication_role".into());
        set.setting_superuser_only = true;
        assert_eq!(risk_of_util(set), Risk::Admin);
    }

    #[test]
    fn copy_directions() {
        let mut c = util("CopyStmt", "COPY");
        c.objects = vec!["public.t".into()];
        c.copy = Some(CopyFacts {
            from: false,
            file_or_program: false,
        });
        assert_eq!(risk_of_util(c.clone()), Risk::Read);
        c.copy = Some(CopyFacts {
            from: true,
            file_or_program: false,
        });
        assert_eq!(risk_of_util(c.clone()), Risk::Write);
        c.copy = Some(CopyFacts {
            from: false,
            file_or_program: true,
        });
        assert_eq!(risk_of_util(c.clone()), Risk::Admin);
        c.copy = Some(CopyFacts {
            from: true,
            file_or_program: true,
        });
        assert_eq!(risk_of_util(c), Risk::Admin);
    }

    #[test]
    fn explain_carries_the_inner_risk_only_with_analyze() {
        let mut inner = plan(Operation::Delete);
        inner.written = vec![rel("t")];
        let mut e = util("ExplainStmt", "EXPLAIN");
        e.inner = Some(Box::new(Facts::Plan(inner)));
        assert_eq!(risk_of_util(e.clone()), Risk::Read);
        e.explain_analyze = true;
        let c = classify(&Facts::Utility(e));
        assert_eq!(c.risk, Risk::Write);
        assert_eq!(c.command, "EXPLAIN ANALYZE DELETE");
    }

    #[test]
    fn ddl_statements() {
        for (node, cmd) in [
            ("CreateStmt", "CREATE TABLE"),
            ("IndexStmt", "CREATE INDEX"),
            ("ViewStmt", "CREATE VIEW"),
            ("CreateFunctionStmt", "CREATE FUNCTION"),
            ("CreateTrigStmt", "CREATE TRIGGER"),
            ("CreateSchemaStmt", "CREATE SCHEMA"),
            ("CreateSeqStmt", "CREATE SEQUENCE"),
            ("CommentStmt", "COMMENT"),
            ("CreateTableAsStmt", "SELECT INTO"),
            ("RefreshMatViewStmt", "REFRESH MATERIALIZED VIEW"),
            ("AlterTableStmt", "ALTER TABLE"),
        ] {
            assert_eq!(risk_of_util(util(node, cmd)), Risk::Ddl, "{node}");
        }
        let mut d = util("DropStmt", "DROP TABLE");
        d.object_type = Some("TABLE".into());
        assert_eq!(risk_of_util(d), Risk::Ddl);
    }

    #[test]
    fn privilege_statements() {
        for node in [
            "GrantStmt",
            "GrantRoleStmt",
            "CreateRoleStmt",
            "AlterRoleStmt",
            "DropRoleStmt",
            "AlterDefaultPrivilegesStmt",
            "AlterOwnerStmt",
            "SecLabelStmt",
            "CreatePolicyStmt",
            "CreateUserMappingStmt",
        ] {
            assert_eq!(risk_of_util(util(node, "X")), Risk::Privilege, "{node}");
        }
        let mut a = util("AlterTableStmt", "ALTER TABLE");
        a.changes_owner_or_row_security = true;
        assert_eq!(risk_of_util(a), Risk::Privilege);
        let mut d = util("DropStmt", "DROP POLICY");
        d.object_type = Some("POLICY".into());
        assert_eq!(risk_of_util(d), Risk::Privilege);
    }

    #[test]
    fn admin_statements() {
        for node in [
            "AlterSystemStmt",
            "LoadStmt",
            "CreatedbStmt",
            "DropdbStmt",
            "CreateTableSpaceStmt",
            "CreateExtensionStmt",
            "CreateEventTrigStmt",
            "CreatePLangStmt",
            "CreatePublicationStmt",
            "VacuumStmt",
            "ClusterStmt",
            "ReindexStmt",
            "CheckPointStmt",
        ] {
            assert_eq!(risk_of_util(util(node, "X")), Risk::Admin, "{node}");
        }
        let mut d = util("DropStmt", "DROP EXTENSION");
        d.object_type = Some("EXTENSION".into());
        d.objects = vec!["agent_guard".into()];
        let c = classify(&Facts::Utility(d));
        assert_eq!(c.risk, Risk::Admin);
        assert!(c.touches_guard);
    }

    #[test]
    fn unknown_utility_fails_closed() {
        assert_eq!(risk_of_util(util("SomeFutureStmt", "FUTURE")), Risk::Admin);
    }

    #[test]
    fn untrusted_do_is_admin() {
        let mut d = util("DoStmt", "DO");
        assert_eq!(risk_of_util(d.clone()), Risk::Read);
        d.untrusted_language = true;
        assert_eq!(risk_of_util(d), Risk::Admin);
    }

    #[test]
    fn functions_with_risk() {
        assert_eq!(
            classify_function("pg_catalog", "pg_read_file", false)
                .unwrap()
                .risk,
            Risk::Admin
        );
        assert_eq!(
            classify_function("pg_catalog", "pg_terminate_backend", false)
                .unwrap()
                .risk,
            Risk::Admin
        );
        assert_eq!(
            classify_function("public", "dblink_connect", false)
                .unwrap()
                .risk,
            Risk::Admin
        );
        assert_eq!(
            classify_function("pg_catalog", "nextval", false)
                .unwrap()
                .risk,
            Risk::Write
        );
        assert!(classify_function("pg_catalog", "set_config", false).is_none());
        assert_eq!(
            classify_function("pg_catalog", "set_config", true)
                .unwrap()
                .risk,
            Risk::Admin
        );
        assert!(classify_function("pg_catalog", "lower", true).is_none());
        assert!(
            classify_function("public", "pg_read_file", true).is_none(),
            "only the catalog's own"
        );
        for (schema, f) in [
            ("public", "heap_page_items"),
            ("public", "bt_page_items"),
            ("pg_catalog", "pg_logical_slot_peek_changes"),
        ] {
            assert_eq!(
                classify_function(schema, f, true).unwrap().risk,
                Risk::Admin,
                "{f} reads raw data past the masks"
            );
        }
    }
}
