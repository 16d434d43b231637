//! What PostgreSQL's own trees say about a statement, as plain data.
//!
//! Only the extension's `extract` module fills these structs (from
//! `PlannedStmt`, range tables, row marks and utility nodes); everything else
//! reads them. Nothing here is derived from statement text.

use crate::quote_ident;

/// A relation named by OID and resolved name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

impl Relation {
    pub fn new(oid: u32, schema: &str, name: &str) -> Relation {
        Relation {
            oid,
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    /// `schema.name`, each part quoted when needed.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// The command of a plannable statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
}

impl Operation {
    pub fn tag(self) -> &'static str {
        match self {
            Operation::Select => "SELECT",
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Merge => "MERGE",
        }
    }
}

/// Facts of a statement the executor runs (from its `PlannedStmt`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanFacts {
    pub operation: Operation,
    /// Result relations: targets of INSERT/UPDATE/DELETE/MERGE, writable CTEs included.
    pub written: Vec<Relation>,
    /// Relations whose rows are locked (FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE).
    pub locked: Vec<Relation>,
    /// Every table, view and materialized view in the range table.
    pub read: Vec<Relation>,
    /// Sensitive columns referenced anywhere, as `schema.table.column`.
    pub sensitive_columns: Vec<String>,
    /// A data-modifying WITH is present.
    pub has_modifying_cte: bool,
    /// The statement was issued by a foreign-key trigger to check or lock referenced rows.
    pub integrity_check: bool,
    /// Functions the statement calls, when known before execution (`classify()`).
    /// At run time each call is checked as the executor initialises it instead,
    /// with the same [`crate::classify::classify_function`].
    pub functions: Vec<FunctionFacts>,
    /// The statement runs as a superuser.
    pub runs_as_superuser: bool,
    /// Foreign tables it reads or writes (also as partitions or inheritance
    /// children): their rows come from another server, fetched as the user
    /// mapping's remote role.
    pub foreign: Vec<Relation>,
}

impl PlanFacts {
    /// A plain SELECT with nothing else known; a starting point for builders and tests.
    pub fn select() -> PlanFacts {
        PlanFacts {
            operation: Operation::Select,
            written: vec![],
            locked: vec![],
            read: vec![],
            sensitive_columns: vec![],
            has_modifying_cte: false,
            integrity_check: false,
            functions: vec![],
            runs_as_superuser: false,
            foreign: vec![],
        }
    }
}

/// What the catalog says about a function, as far as calling it carries risk.
///
/// The extension fills it from the syscache (`pg_proc`, `pg_language`) and
/// `pg_init_privs`; see [`crate::classify::classify_function`] for the rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionFacts {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// The language's name (`internal`, `c`, `sql`, `plpgsql`, `plpython3u`, …).
    pub language: String,
    /// `pg_language.lanpltrusted`.
    pub language_trusted: bool,
    /// Shipped with PostgreSQL (in `pg_catalog`) or by an extension's script,
    /// rather than written by a user of the database.
    pub shipped: bool,
    /// PUBLIC could execute it as shipped: its initial privileges
    /// (`pg_init_privs`, recorded by initdb and by `CREATE EXTENSION`) grant
    /// EXECUTE to PUBLIC, or it has none recorded (the default ACL does).
    pub public_as_shipped: bool,
    /// PUBLIC may execute it now (`pg_proc.proacl` NULL or granting EXECUTE to PUBLIC).
    pub public_now: bool,
    /// The first argument of the call when it is a constant text (only
    /// `classify()` knows it; the run-time check sees no arguments).
    pub first_argument: Option<String>,
}

impl FunctionFacts {
    /// A built-in function with PostgreSQL's default privileges (for tests and builders).
    pub fn builtin(schema: &str, name: &str) -> FunctionFacts {
        FunctionFacts {
            oid: 0,
            schema: schema.to_string(),
            name: name.to_string(),
            language: "internal".into(),
            language_trusted: false,
            shipped: true,
            public_as_shipped: true,
            public_now: true,
            first_argument: None,
        }
    }

    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Who makes a function call, as far as its risk depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallContext {
    /// The call runs as a superuser.
    pub superuser: bool,
    /// The call is made by agent_guard's own SECURITY DEFINER code (a wrapper
    /// such as `request_access()`, an event trigger): the current user is the
    /// called function's owner, not the agent, after a SECURITY DEFINER switch.
    pub from_guard_code: bool,
}

/// How COPY moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyFacts {
    /// COPY … FROM (data flows into the table).
    pub from: bool,
    /// A server-side file or PROGRAM is involved.
    pub file_or_program: bool,
}

/// Facts of a utility statement (from its parse node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UtilityFacts {
    /// The parse node's tag without the `T_` prefix, e.g. `CreateStmt`.
    pub node: String,
    /// PostgreSQL's command tag, e.g. `CREATE TABLE`.
    pub command: String,
    /// Objects named by the statement, qualified where PostgreSQL's tree says so.
    pub objects: Vec<String>,
    /// Existing relations the statement touches (resolved by OID).
    pub relations: Vec<Relation>,
    /// For DROP, RENAME, COMMENT, ALTER … OWNER and similar: the object type, e.g. `EXTENSION`.
    pub object_type: Option<String>,
    /// For SET/RESET/ALTER SYSTEM/ALTER ROLE … SET: the setting's name, lower case.
    pub setting: Option<String>,
    /// The new value of a SET when it is a constant.
    pub setting_value: Option<String>,
    /// The setting can only be changed by superusers (PGC_SUSET or stricter).
    pub setting_superuser_only: bool,
    /// RESET (or SET … TO DEFAULT).
    pub reset: bool,
    pub copy: Option<CopyFacts>,
    /// EXPLAIN with ANALYZE: the inner statement runs.
    pub explain_analyze: bool,
    /// ALTER TABLE subcommands that change ownership or row security.
    pub changes_owner_or_row_security: bool,
    /// LOCK TABLE in a mode stronger than ACCESS SHARE.
    pub lock_strong: bool,
    /// DO in a language that is not trusted.
    pub untrusted_language: bool,
    /// MOVE rather than FETCH.
    pub is_move: bool,
    /// The channel of NOTIFY (and of LISTEN/UNLISTEN), as PostgreSQL folded it.
    pub channel: Option<String>,
    /// Functions the statement itself calls (CALL's procedure and its
    /// arguments), when known before execution (`classify()`).
    pub functions: Vec<FunctionFacts>,
    /// The statement runs as a superuser (for [`Self::functions`]).
    pub runs_as_superuser: bool,
    /// The statement an EXPLAIN, DECLARE CURSOR, EXECUTE or CREATE TABLE AS carries, when known.
    pub inner: Option<Box<Facts>>,
    /// Of `relations`, the foreign tables.
    pub foreign: Vec<Relation>,
}

/// Everything agent_guard knows about one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Facts {
    Plan(PlanFacts),
    Utility(UtilityFacts),
}
