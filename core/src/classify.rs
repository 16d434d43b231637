//! From facts to a risk category.
//!
//! One function, [`classify`], serves both run-time enforcement and
//! `agent_guard.classify()`. Unknown utility statements are `admin`: what
//! agent_guard does not understand, an agent may not run.

use crate::facts::{
    CallContext, Facts, FunctionFacts, Operation, PlanFacts, Relation, UtilityFacts,
};
use crate::risk::Risk;
use crate::{GUARD_SCHEMA, MASKED_SCHEMA, NOTIFY_CHANNEL, REQUEST_ID_SETTING};

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
    rel.schema == GUARD_SCHEMA || rel.schema == MASKED_SCHEMA
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

/// Schemas whose objects agents may never write or change, not even under a
/// grant: PostgreSQL's catalogs, TOAST tables and information schema, and
/// agent_guard's own schemas (its registry labels live in `pg_shseclabel`, its
/// masks in `agent_guard_masked`).
pub fn is_protected_schema(schema: &str) -> bool {
    matches!(
        schema,
        "pg_catalog" | "pg_toast" | "information_schema" | GUARD_SCHEMA | MASKED_SCHEMA
    ) || schema.starts_with("pg_toast_temp_")
}

/// The schema part of an object name as the extension writes it
/// (`schema.name`, either part possibly double-quoted); `None` when unqualified.
pub fn schema_of(object: &str) -> Option<String> {
    let o = object.trim();
    if let Some(rest) = o.strip_prefix('"') {
        let mut schema = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(ch) = chars.next() {
            if ch == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    schema.push('"');
                    continue;
                }
                return (chars.next() == Some('.')).then_some(schema);
            }
            schema.push(ch);
        }
        return None;
    }
    let (schema, rest) = o.split_once('.')?;
    (!schema.is_empty() && !rest.is_empty() && !schema.contains(char::is_whitespace))
        .then(|| schema.to_string())
}

fn in_protected_schema(rel: &Relation) -> bool {
    is_protected_schema(&rel.schema)
}

/// The riskiest of the calls, if any carries a risk of its own.
pub fn riskiest_call(functions: &[FunctionFacts], ctx: CallContext) -> Option<Classification> {
    let mut best: Option<Classification> = None;
    for f in functions {
        if let Some(c) = classify_function(f, ctx) {
            if best.as_ref().is_none_or(|b| c.risk > b.risk) {
                best = Some(c);
            }
        }
    }
    best
}

/// `c`, or the riskiest call when that is riskier (keeping `c`'s objects).
fn with_calls(
    mut c: Classification,
    functions: &[FunctionFacts],
    superuser: bool,
) -> Classification {
    let ctx = CallContext {
        superuser,
        from_guard_code: false,
    };
    if let Some(f) = riskiest_call(functions, ctx) {
        if f.risk > c.risk {
            let objects = std::mem::take(&mut c.objects);
            let sensitive = std::mem::take(&mut c.sensitive_columns);
            c = f;
            c.objects = objects;
            c.sensitive_columns = sensitive;
        }
    }
    c
}

fn classify_plan(p: &PlanFacts) -> Classification {
    if !p.foreign.is_empty() {
        return foreign_access(p.operation.tag(), &p.foreign);
    }
    // A call whose risk exceeds the statement's decides (pg_read_file, nextval, …).
    with_calls(
        classify_plan_relations(p),
        &p.functions,
        p.runs_as_superuser,
    )
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
        let protected: Vec<Relation> = written
            .iter()
            .filter(|r| in_protected_schema(r))
            .cloned()
            .collect();
        let mut c = if protected.is_empty() {
            Classification::new(command, Risk::Write, reason)
        } else {
            Classification::new(
                command,
                Risk::Admin,
                format!(
                    "{reason}: {} belongs to PostgreSQL's catalogs or to agent_guard, which agents never change",
                    names(&protected).join(", ")
                ),
            )
        };
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
    let guard_setting = u.setting.as_deref().is_some_and(protected_setting);
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

/// Objects of a write or schema change that lie in a protected schema.
fn protected_targets(u: &UtilityFacts) -> Vec<String> {
    let mut out: Vec<String> = u
        .relations
        .iter()
        .filter(|r| in_protected_schema(r))
        .map(Relation::qualified)
        .collect();
    for o in &u.objects {
        if schema_of(o).is_some_and(|s| is_protected_schema(&s)) && !out.contains(o) {
            out.push(o.clone());
        }
    }
    out
}

fn classify_utility(u: &UtilityFacts) -> Classification {
    let mut c = with_calls(classify_utility_risk(u), &u.functions, u.runs_as_superuser);
    c.touches_guard = c.touches_guard || (c.risk > Risk::SensitiveRead && touches_guard_utility(u));
    // Writes and schema changes of catalogs and of agent_guard are never grantable.
    if matches!(c.risk, Risk::Write | Risk::Ddl) && !u.node.starts_with("Explain") {
        let protected = protected_targets(u);
        if !protected.is_empty() {
            c.risk = Risk::Admin;
            c.reason = format!(
                "{}: {} belongs to PostgreSQL's catalogs or to agent_guard, which agents never change",
                c.reason,
                protected.join(", ")
            );
        }
    }
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
                // The plan is not run, but its expressions are initialised:
                // the calls in it are checked as in any statement.
                let c = Classification::new(
                    "EXPLAIN",
                    Risk::Read,
                    "EXPLAIN without ANALYZE plans but does not run",
                );
                return match u.inner.as_deref() {
                    Some(Facts::Plan(p)) => with_calls(c, &p.functions, p.runs_as_superuser),
                    _ => c,
                };
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
            let mut c = Classification::new(
                cmd,
                Risk::Ddl,
                format!("{} creates {}", cmd, u.objects.join(", ")),
            );
            // Its query runs too: a riskier query (a call of an
            // administration function) decides; sensitive columns it reads
            // come along (the statement's literals are then all redacted).
            if let Some(inner) = &u.inner {
                let q = classify(inner);
                if q.risk > c.risk {
                    let mut q = q;
                    q.command = format!("{} {}", cmd, q.command);
                    return q;
                }
                c.sensitive_columns = q.sensitive_columns;
            }
            return c;
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

    if node == "TransactionStmt"
        && matches!(
            cmd,
            "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED"
        )
    {
        return Classification::new(
            cmd,
            Risk::Admin,
            "two-phase commit: a prepared transaction outlives the session and the outcome its audit records, and COMMIT/ROLLBACK PREPARED finish other sessions' transactions",
        );
    }
    if node == "NotifyStmt" && u.channel.as_deref() == Some(NOTIFY_CHANNEL) {
        let mut c = Classification::new(
            cmd,
            Risk::Admin,
            format!("NOTIFY on {NOTIFY_CHANNEL}, the approvers' channel, would forge agent_guard's request and decision events"),
        );
        c.touches_guard = true;
        return c;
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
        n if LEXER_SETTINGS.contains(&n) && !u.reset && !lexer_value_is_safe(n, u.setting_value.as_deref()) => {
            Classification::new(
                &format!("{cmd} {n}"),
                Risk::Admin,
                format!("{n} changes how PostgreSQL reads string literals, so a statement could run otherwise than an approver read it"),
            )
        }
        n if protected_setting(n) => {
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

/// Whether SETting a lexer setting to `value` keeps PostgreSQL's default reading
/// of string literals (`standard_conforming_strings` on, `backslash_quote` not on).
fn lexer_value_is_safe(name: &str, value: Option<&str>) -> bool {
    let Some(v) = value.map(|v| v.trim().to_ascii_lowercase()) else {
        return false;
    };
    match name {
        "standard_conforming_strings" => parse_bool(&v) == Some(true),
        "backslash_quote" => v == "safe_encoding" || parse_bool(&v) == Some(false),
        _ => false,
    }
}

/// PostgreSQL's `parse_bool` (prefixes of true/false/yes/no, on/off, 1/0).
pub fn parse_bool(v: &str) -> Option<bool> {
    let v = v.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || v == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == "0" {
        Some(false)
    } else {
        None
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

/// The functions of PostgreSQL whose ACL says nothing about their risk:
/// PUBLIC may execute them, and they check their caller's rights inside
/// (superuser, replication, signal or ownership checks) — which a superuser
/// agent passes. Everything else that is administration is revoked from
/// PUBLIC as shipped and caught by the rule of [`classify_function`].
const SELF_CHECKING_ADMIN_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_nextoid",
    "pg_import_system_collations",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    // maintenance, as VACUUM is
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
];

/// Readers of raw pages, WAL records or logical decoding output, in whatever
/// schema their extension lives: they bypass every column mask. (Their
/// extensions revoke them from PUBLIC, so the ACL rule catches them too; the
/// names stay as a second line for a copy installed some other way.)
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

/// Functions that change sequences or large objects: writes.
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

/// Languages that are not procedural languages at all: PostgreSQL's own
/// built-ins and compiled C. Only superusers create functions in them, so a
/// C function PUBLIC may execute was put there for everyone on purpose.
fn compiled_language(language: &str) -> bool {
    matches!(language, "internal" | "c")
}

/// What calling a function means for an agent, when the call alone carries a risk.
///
/// The rule, from the catalog rather than a list of names (`None`: an
/// ordinary function, whose statements are classified as they run):
///
/// 1. **agent_guard's own internals** — its functions PUBLIC may not execute
///    as shipped (`_masking_sync()`, `_register_agent()`, `approve()`,
///    `rotate_masking_key()`, …), or no longer may, are `admin`, unless
///    agent_guard's own SECURITY DEFINER code makes the call
///    ([`CallContext::from_guard_code`]: `request_access()` calling
///    `_request_access()`, an event trigger regenerating masking views). What
///    agent_guard leaves executable by PUBLIC (its public API, and the
///    read-only helpers its views and wrappers call in the caller's name,
///    such as `_masking_rules()` or `_classify()`) is meant for everyone.
/// 2. **untrusted languages** — a function in a procedural language PostgreSQL
///    does not mark trusted (`plpython3u`, `plperlu`, `pltclu`, …) can reach the
///    server's files and programs: `admin`, whoever may execute it. Built-in
///    (`internal`) and C functions are not procedural code; they fall to rule 3.
/// 3. **shipped without EXECUTE for PUBLIC** — a function of PostgreSQL or of
///    an extension whose initial privileges (`pg_init_privs`, recorded by
///    initdb and `CREATE EXTENSION`) do not let PUBLIC execute it is an
///    administration function (`pg_read_file`, `pg_stat_reset`, `pg_reload_conf`,
///    `lo_import`, pageinspect, …): `admin`, even after a later `GRANT … TO
///    PUBLIC`. For `pg_catalog` functions the current ACL counts too (one an
///    administrator revoked from PUBLIC is administration as well). A user's
///    own function in a trusted language is not judged by its ACL: restricting
///    EXECUTE to the agent is ordinary practice, and its statements are
///    checked as they run.
/// 4. the few built-ins that PUBLIC may execute but that check superuser,
///    replication or signalling rights inside ([`SELF_CHECKING_ADMIN_FUNCTIONS`]),
///    readers of raw data past the masks, dblink's connections, `pg_notify()`
///    (its channel cannot be inspected before it runs; agents use `NOTIFY`,
///    which can) and, for superusers, `set_config()`: `admin`.
/// 5. `nextval`, `setval` and the large-object writers: `write`.
pub fn classify_function(f: &FunctionFacts, ctx: CallContext) -> Option<Classification> {
    let name = f.name.as_str();
    let qualified = f.qualified();
    let command = format!("SELECT {name}()");
    let admin = |reason: String| Some(Classification::new(&command, Risk::Admin, reason));

    if f.schema == GUARD_SCHEMA && !ctx.from_guard_code && (!f.public_as_shipped || !f.public_now) {
        let mut c = Classification::new(
            &command,
            Risk::Admin,
            format!("{qualified}() is internal to agent_guard or reserved to its administrators and approvers"),
        );
        c.touches_guard = true;
        return Some(c);
    }
    if !f.language_trusted && !compiled_language(&f.language) {
        return admin(format!(
            "{qualified}() is written in {}, an untrusted language that can reach the server's files and programs",
            f.language
        ));
    }
    let catalog = f.schema == "pg_catalog";
    if f.shipped && f.schema != GUARD_SCHEMA && (!f.public_as_shipped || (catalog && !f.public_now))
    {
        return admin(format!("{qualified}() is a server-administration function"));
    }
    if catalog && SELF_CHECKING_ADMIN_FUNCTIONS.contains(&name) {
        return admin(format!("{qualified}() is a server-administration function"));
    }
    if RAW_DATA_FUNCTIONS.contains(&name) {
        return admin(format!(
            "{qualified}() reads raw pages, WAL or decoded changes, past every column mask"
        ));
    }
    if name.starts_with("dblink") {
        return admin(format!("{qualified}() opens connections to other servers"));
    }
    if catalog && name == "pg_notify" {
        return admin(
            "pg_notify() could send on agent_guard's channel of approvers, and its channel cannot be inspected before it runs; use NOTIFY, which agent_guard can inspect".into(),
        );
    }
    if catalog && name == "set_config" {
        if let Some(setting) = f.first_argument.as_deref().map(str::to_lowercase) {
            if protected_setting(&setting) {
                let mut c = Classification::new(
                    "SELECT set_config()",
                    Risk::Admin,
                    format!("set_config() of agent_guard's own setting {setting}"),
                );
                c.touches_guard = true;
                return Some(c);
            }
        }
        if ctx.superuser {
            return admin(
                "set_config() run as a superuser can change protected settings; use SET, which agent_guard can inspect".into(),
            );
        }
    }
    if catalog && WRITE_FUNCTIONS.contains(&name) {
        return Some(Classification::new(
            &command,
            Risk::Write,
            format!("{qualified}() changes a sequence or large object"),
        ));
    }
    None
}

/// An agent_guard setting agents may not change (all but `agent_guard.request_id`).
pub fn protected_setting(name: &str) -> bool {
    name.starts_with("agent_guard.") && name != REQUEST_ID_SETTING
}

/// Settings that change how PostgreSQL's lexer reads string literals: with
/// `standard_conforming_strings = off` (or `backslash_quote = on`) a statement
/// an approver reads one way runs another way. Agents may not change them.
pub const LEXER_SETTINGS: &[&str] = &["standard_conforming_strings", "backslash_quote"];

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

    fn builtin(name: &str) -> FunctionFacts {
        FunctionFacts::builtin("pg_catalog", name)
    }

    /// A pg_catalog function revoked from PUBLIC as shipped (pg_read_file, pg_stat_reset, …).
    fn revoked(schema: &str, name: &str) -> FunctionFacts {
        FunctionFacts {
            public_as_shipped: false,
            public_now: false,
            ..FunctionFacts::builtin(schema, name)
        }
    }

    fn user_fn(name: &str, language: &str, trusted: bool) -> FunctionFacts {
        FunctionFacts {
            language: language.into(),
            language_trusted: trusted,
            shipped: false,
            ..FunctionFacts::builtin("public", name)
        }
    }

    const AGENT: CallContext = CallContext {
        superuser: true,
        from_guard_code: false,
    };

    fn risk_of_call(f: &FunctionFacts) -> Option<Risk> {
        classify_function(f, AGENT).map(|c| c.risk)
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
            u.copy = Some(CopyFacts {
                from: true,
                file_or_program: false,
            });
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
        p.functions = vec![builtin("lower"), revoked("pg_catalog", "pg_read_file")];
        assert_eq!(classify(&Facts::Plan(p.clone())).risk, Risk::Admin);
        p.functions = vec![builtin("nextval")];
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
    fn functions_public_may_not_execute_as_shipped_are_admin() {
        // pg_stat_reset, pg_stat_reset_shared, pg_read_file, lo_import, … are
        // revoked from PUBLIC by initdb: administration, without naming them
        for name in [
            "pg_stat_reset",
            "pg_stat_reset_shared",
            "pg_read_file",
            "lo_import",
            "pg_reload_conf",
        ] {
            assert_eq!(
                risk_of_call(&revoked("pg_catalog", name)),
                Some(Risk::Admin),
                "{name}"
            );
        }
        // an administrator's later GRANT ... TO PUBLIC does not make it safe
        let granted = FunctionFacts {
            public_now: true,
            ..revoked("pg_catalog", "pg_read_file")
        };
        assert_eq!(risk_of_call(&granted), Some(Risk::Admin));
        // a catalog function revoked from PUBLIC later is administration too
        let later = FunctionFacts {
            public_now: false,
            ..builtin("pg_ls_waldir_like")
        };
        assert_eq!(risk_of_call(&later), Some(Risk::Admin));
        // an extension's function shipped without EXECUTE for PUBLIC (pageinspect)
        assert_eq!(
            risk_of_call(&revoked("public", "page_header")),
            Some(Risk::Admin)
        );
        // an extension's function an administrator revoked later is the administrator's choice
        let pgcrypto = FunctionFacts {
            language: "c".into(),
            public_now: false,
            ..FunctionFacts::builtin("public", "digest")
        };
        assert_eq!(risk_of_call(&pgcrypto), None);
        // a user's own function restricted to the agent is judged by its statements
        let mine = FunctionFacts {
            public_as_shipped: false,
            public_now: false,
            ..user_fn("helper", "plpgsql", true)
        };
        assert_eq!(risk_of_call(&mine), None);
        // the safe built-ins stay ordinary
        for name in ["now", "lower", "count", "int4eq", "pg_advisory_lock"] {
            assert_eq!(risk_of_call(&builtin(name)), None, "{name}");
        }
    }

    #[test]
    fn built_ins_that_check_privileges_inside_are_admin() {
        for name in [
            "pg_nextoid",
            "pg_import_system_collations",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_create_logical_replication_slot",
            "pg_logical_emit_message",
        ] {
            assert_eq!(risk_of_call(&builtin(name)), Some(Risk::Admin), "{name}");
        }
    }

    #[test]
    fn untrusted_languages_are_admin_compiled_code_is_not() {
        assert_eq!(
            risk_of_call(&user_fn("shell", "plpython3u", false)),
            Some(Risk::Admin)
        );
        assert_eq!(
            risk_of_call(&user_fn("shell", "plperlu", false)),
            Some(Risk::Admin)
        );
        assert_eq!(risk_of_call(&user_fn("f", "plpgsql", true)), None);
        assert_eq!(risk_of_call(&user_fn("f", "sql", true)), None);
        assert_eq!(risk_of_call(&user_fn("f", "plperl", true)), None);
        // a C function PUBLIC may execute (pgcrypto's digest) stays allowed
        assert_eq!(risk_of_call(&user_fn("digest", "c", false)), None);
        let c = classify_function(&user_fn("shell", "plpython3u", false), AGENT).unwrap();
        assert!(c.reason.contains("plpython3u"), "{}", c.reason);
    }

    #[test]
    fn agent_guard_internals_are_admin_unless_its_own_code_calls_them() {
        let sync = FunctionFacts {
            public_as_shipped: false,
            public_now: false,
            language: "c".into(),
            ..FunctionFacts::builtin("agent_guard", "_masking_sync")
        };
        let c = classify_function(&sync, AGENT).unwrap();
        assert_eq!(c.risk, Risk::Admin);
        assert!(c.touches_guard);
        let from_guard = CallContext {
            superuser: false,
            from_guard_code: true,
        };
        assert!(
            classify_function(&sync, from_guard).is_none(),
            "an event trigger regenerates the views"
        );
        assert_eq!(
            risk_of_call(&revoked("agent_guard", "_masking_changed")),
            Some(Risk::Admin)
        );
        assert_eq!(
            risk_of_call(&revoked("agent_guard", "_register_agent")),
            Some(Risk::Admin)
        );
        // one an administrator revoked from PUBLIC later
        let later = FunctionFacts {
            public_now: false,
            ..FunctionFacts::builtin("agent_guard", "suggest_sensitive")
        };
        assert_eq!(risk_of_call(&later), Some(Risk::Admin));
        // API reserved to approvers and administrators
        assert_eq!(
            risk_of_call(&revoked("agent_guard", "approve")),
            Some(Risk::Admin)
        );
        // the public API and read-only helpers its wrappers call stay open
        for name in [
            "request_access",
            "classify",
            "status",
            "partial",
            "hash",
            "_classify",
            "_masking_rules",
            "_mask_expression",
        ] {
            assert_eq!(
                risk_of_call(&FunctionFacts::builtin("agent_guard", name)),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn other_functions_with_risk() {
        let call = |schema: &str, name: &str, superuser: bool| {
            classify_function(
                &FunctionFacts::builtin(schema, name),
                CallContext {
                    superuser,
                    from_guard_code: false,
                },
            )
            .map(|c| c.risk)
        };
        assert_eq!(call("public", "dblink_connect", false), Some(Risk::Admin));
        assert_eq!(call("pg_catalog", "nextval", false), Some(Risk::Write));
        assert_eq!(call("pg_catalog", "set_config", false), None);
        assert_eq!(call("pg_catalog", "set_config", true), Some(Risk::Admin));
        assert_eq!(call("pg_catalog", "pg_notify", false), Some(Risk::Admin));
        assert_eq!(
            call("public", "pg_read_file", true),
            None,
            "only the catalog's own"
        );
        for (schema, f) in [
            ("public", "heap_page_items"),
            ("public", "bt_page_items"),
            ("pg_catalog", "pg_logical_slot_peek_changes"),
        ] {
            assert_eq!(
                call(schema, f, true),
                Some(Risk::Admin),
                "{f} reads raw data past the masks"
            );
        }
        // set_config() of agent_guard's settings, seen by classify(), is admin for anyone
        let mut f = FunctionFacts::builtin("pg_catalog", "set_config");
        f.first_argument = Some("agent_guard.enabled".into());
        let c = classify_function(&f, CallContext::default()).unwrap();
        assert_eq!(c.risk, Risk::Admin);
        assert!(c.touches_guard);
        f.first_argument = Some("agent_guard.request_id".into());
        assert!(classify_function(&f, CallContext::default()).is_none());
    }

    #[test]
    fn writes_and_ddl_of_catalogs_and_agent_guard_are_admin() {
        for (schema, table) in [
            ("pg_catalog", "pg_shseclabel"),
            ("pg_toast", "pg_toast_1262"),
            ("information_schema", "sql_features"),
            ("agent_guard", "agent_registry"),
            ("agent_guard_masked", "customers"),
        ] {
            let mut p = plan(Operation::Delete);
            p.written = vec![Relation::new(9, schema, table)];
            let c = classify(&Facts::Plan(p));
            assert_eq!(c.risk, Risk::Admin, "{schema}.{table}");
            let mut l = PlanFacts::select();
            l.locked = vec![Relation::new(9, schema, table)];
            assert_eq!(
                classify(&Facts::Plan(l)).risk,
                Risk::Admin,
                "FOR UPDATE of {schema}.{table}"
            );
        }
        let mut t = util("TruncateStmt", "TRUNCATE TABLE");
        t.relations = vec![Relation::new(9, "pg_catalog", "pg_shseclabel")];
        assert_eq!(risk_of_util(t), Risk::Admin);
        let mut d = util("CreateStmt", "CREATE TABLE");
        d.objects = vec!["pg_catalog.x".into()];
        assert_eq!(risk_of_util(d.clone()), Risk::Admin);
        d.objects = vec!["\"information_schema\".x".into()];
        assert_eq!(risk_of_util(d.clone()), Risk::Admin);
        d.objects = vec!["public.pg_catalog_copy".into()];
        assert_eq!(risk_of_util(d), Risk::Ddl);
        let mut cf = util("CopyStmt", "COPY");
        cf.relations = vec![Relation::new(9, "pg_catalog", "pg_class")];
        cf.copy = Some(CopyFacts {
            from: true,
            file_or_program: false,
        });
        assert_eq!(risk_of_util(cf), Risk::Admin);
        // reading them is not affected
        let mut r = PlanFacts::select();
        r.read = vec![Relation::new(9, "pg_catalog", "pg_class")];
        assert_eq!(classify(&Facts::Plan(r)).risk, Risk::Read);
        assert_eq!(schema_of("\"a.b\".c").as_deref(), Some("a.b"));
        assert_eq!(schema_of("c"), None);
        assert_eq!(schema_of("LANGUAGE plpgsql"), None);
    }

    #[test]
    fn notify_on_the_approvers_channel_and_two_phase_commit_are_admin() {
        let mut n = util("NotifyStmt", "NOTIFY");
        n.channel = Some("agent_guard".into());
        assert_eq!(risk_of_util(n.clone()), Risk::Admin);
        n.channel = Some("jobs".into());
        assert_eq!(risk_of_util(n), Risk::Session);
        for cmd in [
            "PREPARE TRANSACTION",
            "COMMIT PREPARED",
            "ROLLBACK PREPARED",
        ] {
            assert_eq!(
                risk_of_util(util("TransactionStmt", cmd)),
                Risk::Admin,
                "{cmd}"
            );
        }
        for cmd in ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT"] {
            assert_eq!(
                risk_of_util(util("TransactionStmt", cmd)),
                Risk::Session,
                "{cmd}"
            );
        }
    }

    #[test]
    fn lexer_settings_may_only_be_set_to_their_safe_values() {
        let set = |name: &str, value: Option<&str>| {
            let mut u = util("VariableSetStmt", "SET");
            u.setting = Some(name.into());
            u.setting_value = value.map(str::to_string);
            risk_of_util(u)
        };
        assert_eq!(set("standard_conforming_strings", Some("off")), Risk::Admin);
        assert_eq!(
            set("standard_conforming_strings", Some("false")),
            Risk::Admin
        );
        assert_eq!(set("standard_conforming_strings", None), Risk::Admin);
        assert_eq!(
            set("standard_conforming_strings", Some("on")),
            Risk::Session
        );
        assert_eq!(
            set("standard_conforming_strings", Some("true")),
            Risk::Session
        );
        assert_eq!(set("backslash_quote", Some("on")), Risk::Admin);
        assert_eq!(set("backslash_quote", Some("safe_encoding")), Risk::Session);
        assert_eq!(set("backslash_quote", Some("off")), Risk::Session);
        let mut reset = util("VariableSetStmt", "RESET");
        reset.setting = Some("standard_conforming_strings".into());
        reset.reset = true;
        assert_eq!(risk_of_util(reset), Risk::Session);
        assert_eq!(parse_bool("of"), Some(false));
        assert_eq!(parse_bool("o"), None);
    }

    #[test]
    fn explain_and_create_table_as_carry_the_calls_of_their_query() {
        let mut q = PlanFacts::select();
        q.functions = vec![revoked("pg_catalog", "pg_read_file")];
        let mut e = util("ExplainStmt", "EXPLAIN");
        e.inner = Some(Box::new(Facts::Plan(q.clone())));
        assert_eq!(
            risk_of_util(e),
            Risk::Admin,
            "the plan's calls are checked even without ANALYZE"
        );
        let mut ctas = util("CreateTableAsStmt", "CREATE TABLE AS");
        ctas.inner = Some(Box::new(Facts::Plan(q)));
        assert_eq!(risk_of_util(ctas.clone()), Risk::Admin);
        let mut s = PlanFacts::select();
        s.sensitive_columns = vec!["public.c.ssn".into()];
        ctas.inner = Some(Box::new(Facts::Plan(s)));
        let c = classify(&Facts::Utility(ctas));
        assert_eq!(c.risk, Risk::Ddl);
        assert_eq!(c.sensitive_columns, vec!["public.c.ssn"]);
        let mut call = util("CallStmt", "CALL");
        call.functions = vec![user_fn("shell", "plpython3u", false)];
        assert_eq!(risk_of_util(call), Risk::Admin);
    }
}
