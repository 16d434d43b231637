//! Access review: from facts about one role to its kind (human, agent,
//! service, unknown), the rights it holds but never used, and findings with
//! a severity and a suggested fix.
//!
//! The extension gathers the facts from the catalog, the audit trail, the
//! activity samples and the grant requests (`sql/review.sql`); everything
//! that judges them lives here.

use crate::{quote_ident, quote_literal, SponsorStatus};

/// How serious a finding is. Ordered most serious first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            "info" => Severity::Info,
            _ => return None,
        })
    }
}

/// Who is behind a login role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A person: a sponsor, an approver or administrator, or interactive clients only.
    Human,
    /// Registered with agent_guard (the role or a group it belongs to).
    Agent,
    /// Not registered, but its sessions look machine-driven.
    Service,
    /// Nothing observed either way.
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Human => "human",
            Kind::Agent => "agent",
            Kind::Service => "service",
            Kind::Unknown => "unknown",
        }
    }
}

/// Which statements of a role the audit trail holds (agents: all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuditLevel {
    #[default]
    None,
    Ddl,
    Write,
    All,
}

impl AuditLevel {
    pub fn parse(s: &str) -> AuditLevel {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => AuditLevel::All,
            "write" => AuditLevel::Write,
            "ddl" => AuditLevel::Ddl,
            _ => AuditLevel::None,
        }
    }
}

/// Parse `agent_guard.sponsor_status()`'s output.
pub fn parse_sponsor_status(s: &str) -> SponsorStatus {
    match s {
        "active" => SponsorStatus::Active,
        "nologin" => SponsorStatus::NoLogin,
        "expired" => SponsorStatus::Expired,
        _ => SponsorStatus::Dropped,
    }
}

fn sponsor_why(s: SponsorStatus) -> &'static str {
    match s {
        SponsorStatus::Active => "is active",
        SponsorStatus::NoLogin => "is disabled (NOLOGIN)",
        SponsorStatus::Expired => "has expired (VALID UNTIL has passed)",
        SponsorStatus::Dropped => "no longer exists (dropped)",
    }
}

/// The agent registration that applies to a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The registered role: the role itself or a group it belongs to.
    pub agent: String,
    pub via_group: bool,
    pub sponsor: String,
    pub sponsor_status: SponsorStatus,
}

/// A role attribute (SUPERUSER, …) or a membership (pg_write_server_files,
/// agent_guard_approver, …) the role holds, itself or through a role it can
/// SET ROLE to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    /// The role that carries it (for a membership: the direct member of it).
    pub source: String,
    /// The first role on the way from the reviewed role to `source`
    /// (None when the reviewed role carries it itself).
    pub first_hop: Option<String>,
}

/// A column whose name suggests regulated data but carries no label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SensitiveColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub reason: String,
}

impl SensitiveColumn {
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.table),
            quote_ident(&self.column)
        )
    }
}

/// Sessions of one application name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppUse {
    pub name: String,
    pub sessions: u64,
}

/// Everything the review knows about one role.
#[derive(Clone, Debug, Default)]
pub struct RoleFacts {
    pub role: String,
    /// The row of a registered group role (NOLOGIN) rather than of a login role.
    pub group_row: bool,
    pub can_login: bool,
    /// For a group row: members that can log in.
    pub members_can_login: Vec<String>,
    pub registration: Option<Registration>,
    /// Sponsors at least one registered agent.
    pub is_sponsor: bool,
    /// superuser, createrole, createdb, bypassrls, replication.
    pub attributes: Vec<Held>,
    /// pg_* roles and agent_guard_admin / agent_guard_approver in the membership closure.
    pub memberships: Vec<Held>,
    /// Relations it may INSERT, UPDATE, DELETE or TRUNCATE (qualified).
    pub write_tables: Vec<String>,
    /// Schemas it may create objects in.
    pub ddl_schemas: Vec<String>,
    pub owned_relations: u64,
    /// Unlabelled columns that look sensitive and that it may read.
    pub readable_unlabelled: Vec<SensitiveColumn>,
    /// Relations named by grants approved for it in the period (qualified).
    pub granted_objects: Vec<String>,
    /// A grant without objects (any relation) was approved in the period.
    pub granted_any: bool,
    pub audit_level: AuditLevel,
    /// Risks of statements it ran (allowed) in the period.
    pub used_risks: Vec<String>,
    pub used_commands: Vec<String>,
    /// Relations its allowed writes and schema changes touched (qualified).
    pub written_objects: Vec<String>,
    /// It read or wrote a table with row security enabled.
    pub rls_used: bool,
    pub statements: u64,
    pub refusals: u64,
    /// Requests it approved as an approver in the period.
    pub approvals_given: u64,
    /// Who approved its grants in the period.
    pub approvers: Vec<String>,
    /// Human, non-superuser login members of agent_guard_approver.
    pub possible_approvers: Vec<String>,
    /// Sessions observed (audit trail and activity samples) in the period.
    pub sessions: u64,
    /// Of those, sessions shorter than five minutes as far as observed.
    pub short_sessions: u64,
    /// Distinct hours of the day (UTC) with activity.
    pub hours_active: u32,
    pub apps: Vec<AppUse>,
    /// Databases it may connect to where agent_guard is not installed.
    pub databases_without_guard: Vec<String>,
    /// Databases it may connect to that could not be checked.
    pub databases_unchecked: Vec<String>,
    /// Any statement or session in the period.
    pub active: bool,
    /// Rows of this database's agent registry that no role label confirms
    /// and that point at this role (see [`crate::registry`]).
    pub registry_problems: Vec<RegistryProblem>,
}

/// A registry row that does not match the cluster's labels, as it concerns one role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryProblem {
    /// `unmatched` (the role's sessions fail closed) or `moved` (the row
    /// carries another cluster's OID; the role is registered by its label).
    pub state: String,
    pub row: crate::registry::RegistryRow,
}

/// A finding: what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub finding: String,
    pub fix: String,
}

/// The review's judgement of one role.
#[derive(Clone, Debug)]
pub struct Assessment {
    pub kind: Kind,
    /// Why its sessions look machine-driven (empty if they do not).
    pub machine_signals: Vec<String>,
    /// Rights held but not used in the period; None when the audit trail
    /// does not cover the role (a human with agent_guard.audit_non_agents = none).
    pub unused_rights: Option<Vec<String>>,
    /// Most serious first.
    pub findings: Vec<Finding>,
}

// ---- application names ----------------------------------------------------------

/// What an application name says about the client, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppClass {
    Ci,
    AiTool,
    Automation,
    Driver,
    Interactive,
}

impl AppClass {
    pub fn describe(self) -> &'static str {
        match self {
            AppClass::Ci => "CI/CD runner",
            AppClass::AiTool => "AI agent or coding assistant",
            AppClass::Automation => "bot or automation",
            AppClass::Driver => "database driver's default name",
            AppClass::Interactive => "interactive client",
        }
    }

    pub fn machine(self) -> bool {
        !matches!(self, AppClass::Interactive)
    }
}

const CI_TOKENS: &[&str] = &[
    "ci",
    "cd",
    "cicd",
    "jenkins",
    "gitlab",
    "circleci",
    "buildkite",
    "travis",
    "teamcity",
    "bamboo",
    "drone",
    "tekton",
    "argo",
    "argocd",
    "spinnaker",
    "concourse",
    "bitbucket",
    "gha",
    "pipeline",
    "pipelines",
    "runner",
    "workflow",
    "actions",
];
const CI_COMPACT: &[&str] = &["githubactions", "gitlabrunner", "azurepipelines"];
const AI_TOKENS: &[&str] = &[
    "agent",
    "agents",
    "cursor",
    "copilot",
    "claude",
    "codex",
    "aider",
    "devin",
    "windsurf",
    "cody",
    "cline",
    "gpt",
    "chatgpt",
    "openai",
    "anthropic",
    "llm",
    "langchain",
    "llamaindex",
    "mcp",
    "gemini",
    "autogpt",
    "crewai",
];
const AUTOMATION_TOKENS: &[&str] = &[
    "bot",
    "bots",
    "automation",
    "cron",
    "crontab",
    "scheduler",
    "airflow",
    "dagster",
    "prefect",
    "dbt",
    "etl",
    "job",
    "jobs",
    "worker",
    "daemon",
    "terraform",
    "ansible",
    "flyway",
    "liquibase",
    "alembic",
    "migrate",
    "migration",
    "migrations",
    "prisma",
    "sqitch",
];
const DRIVER_TOKENS: &[&str] = &[
    "jdbc",
    "psycopg",
    "psycopg2",
    "psycopg3",
    "pgx",
    "asyncpg",
    "npgsql",
    "sqlx",
    "sqlalchemy",
    "hibernate",
    "typeorm",
    "sequelize",
    "knex",
    "gorm",
    "diesel",
    "libpq",
];
const DRIVER_EXACT: &[&str] = &["pg", "pq", "node-postgres", "tokio-postgres", "go-pg"];
const INTERACTIVE_TOKENS: &[&str] = &[
    "psql",
    "pgadmin",
    "dbeaver",
    "datagrip",
    "tableplus",
    "postico",
    "heidisql",
    "navicat",
    "pgcli",
    "beekeeper",
    "dbvisualizer",
    "azuredatastudio",
];

fn tokens(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Classify an application name. Machine classes win over interactive ones.
pub fn classify_app(app: &str) -> Option<AppClass> {
    let lower = app.trim().to_lowercase();
    if lower.is_empty() {
        return None;
    }
    let toks = tokens(&lower);
    let compact: String = toks.concat();
    let has = |list: &[&str]| toks.iter().any(|t| list.contains(&t.as_str()));
    if has(CI_TOKENS) || CI_COMPACT.iter().any(|c| compact.contains(c)) {
        return Some(AppClass::Ci);
    }
    if has(AI_TOKENS) {
        return Some(AppClass::AiTool);
    }
    if has(AUTOMATION_TOKENS) || toks.iter().any(|t| t.len() > 3 && t.ends_with("bot")) {
        return Some(AppClass::Automation);
    }
    if has(DRIVER_TOKENS) || DRIVER_EXACT.contains(&lower.as_str()) || lower.contains("jdbc") {
        return Some(AppClass::Driver);
    }
    if has(INTERACTIVE_TOKENS) || compact.contains("azuredatastudio") {
        return Some(AppClass::Interactive);
    }
    None
}

/// Sessions at least this many, most of them short: a machine's pattern.
pub const MANY_SESSIONS: u64 = 20;
/// Activity in at least this many distinct hours of the day: around the clock.
pub const ALL_HOURS: u32 = 16;

/// Why a role's sessions look machine-driven (empty if they do not).
pub fn machine_signals(f: &RoleFacts) -> Vec<String> {
    let mut out = vec![];
    for a in &f.apps {
        if let Some(class) = classify_app(&a.name).filter(|c| c.machine()) {
            out.push(format!(
                "application_name {} ({}, {} session{})",
                quote_literal(&a.name),
                class.describe(),
                a.sessions,
                if a.sessions == 1 { "" } else { "s" }
            ));
        }
    }
    if many_short_sessions(f) {
        out.push(format!(
            "{} of {} sessions shorter than five minutes",
            f.short_sessions, f.sessions
        ));
    }
    if f.hours_active >= ALL_HOURS {
        out.push(format!(
            "active in {} of 24 hours of the day",
            f.hours_active
        ));
    }
    out
}

fn many_short_sessions(f: &RoleFacts) -> bool {
    f.sessions >= MANY_SESSIONS && f.short_sessions * 4 >= f.sessions * 3
}

fn looks_machine(f: &RoleFacts) -> bool {
    let named = f
        .apps
        .iter()
        .any(|a| classify_app(&a.name).is_some_and(|c| c.machine()));
    let unnamed = f
        .apps
        .iter()
        .any(|a| a.name.trim().is_empty() && a.sessions > 0);
    let short = many_short_sessions(f);
    let clock = f.hours_active >= ALL_HOURS;
    named || (short && clock) || (short && unnamed) || (clock && unnamed)
}

fn holds(f: &RoleFacts, name: &str) -> bool {
    f.memberships.iter().any(|m| m.name == name)
}

/// Human, agent, service or unknown.
pub fn kind(f: &RoleFacts) -> Kind {
    if f.registration.is_some() || f.registry_problems.iter().any(|p| p.state == "unmatched") {
        return Kind::Agent;
    }
    if looks_machine(f) {
        return Kind::Service;
    }
    let interactive = f
        .apps
        .iter()
        .any(|a| classify_app(&a.name) == Some(AppClass::Interactive));
    if f.is_sponsor
        || holds(f, "agent_guard_approver")
        || holds(f, "agent_guard_admin")
        || f.approvals_given > 0
        || interactive
    {
        return Kind::Human;
    }
    Kind::Unknown
}

// ---- rights used and unused -----------------------------------------------------

fn used(f: &RoleFacts, risk: &str) -> bool {
    f.used_risks.iter().any(|r| r == risk)
}

fn used_command_like(f: &RoleFacts, words: &[&str]) -> bool {
    f.used_commands.iter().any(|c| {
        let c = c.to_ascii_uppercase();
        words.iter().any(|w| c.contains(w))
    })
}

/// Whether a held attribute or membership was used in the period; None when
/// the trail cannot tell (the role's statements are not audited enough).
pub fn right_used(f: &RoleFacts, name: &str) -> Option<bool> {
    let agent = f.registration.is_some();
    let need = |level: AuditLevel, v: bool| (f.audit_level >= level).then_some(v);
    let admin = used(f, "admin");
    let privilege = used(f, "privilege");
    let read = used(f, "read") || used(f, "sensitive_read");
    match name {
        "superuser" => need(AuditLevel::Ddl, admin || privilege),
        "createrole" => need(
            AuditLevel::Ddl,
            privilege && used_command_like(f, &["ROLE", "USER", "GRANT", "REVOKE"]),
        ),
        "createdb" => need(
            AuditLevel::Ddl,
            admin && used_command_like(f, &["DATABASE"]),
        ),
        "replication" => need(
            AuditLevel::Ddl,
            admin && used_command_like(f, &["PUBLICATION", "SUBSCRIPTION", "REPLICATION"]),
        ),
        "bypassrls" => need(AuditLevel::All, f.rls_used),
        "pg_read_all_data" => need(AuditLevel::All, read),
        "pg_write_all_data" => need(AuditLevel::Write, !f.written_objects.is_empty()),
        "pg_execute_server_program"
        | "pg_read_server_files"
        | "pg_write_server_files"
        | "pg_signal_backend"
        | "pg_checkpoint" => need(AuditLevel::Ddl, admin),
        "pg_monitor" | "pg_read_all_stats" | "pg_read_all_settings" | "pg_stat_scan_tables" => {
            need(AuditLevel::All, read)
        }
        "agent_guard_approver" => Some(f.approvals_given > 0),
        // Agents can never use it (the registry refuses agent sessions);
        // a human's use is not visible in the trail.
        "agent_guard_admin" => agent.then_some(false),
        _ => None,
    }
}

/// Rights an agent should not have unless it uses them; the first group is high severity.
const ADMIN_HIGH: &[&str] = &[
    "superuser",
    "createrole",
    "replication",
    "bypassrls",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "agent_guard_admin",
];
const ADMIN_MEDIUM: &[&str] = &[
    "createdb",
    "pg_signal_backend",
    "pg_checkpoint",
    "pg_write_all_data",
    "agent_guard_approver",
];

fn schema_of(qualified: &str) -> &str {
    // Qualified names come as quote_ident(schema).quote_ident(name).
    let mut in_quotes = false;
    for (i, c) in qualified.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => return &qualified[..i],
            _ => {}
        }
    }
    qualified
}

/// Held but not used in the period: revocation candidates. None when the
/// trail does not cover the role.
pub fn unused_rights(f: &RoleFacts) -> Option<Vec<String>> {
    if f.audit_level == AuditLevel::None {
        return None;
    }
    let mut out = vec![];
    for h in f.attributes.iter().chain(f.memberships.iter()) {
        if right_used(f, &h.name) == Some(false) {
            out.push(h.name.clone());
        }
    }
    if f.audit_level >= AuditLevel::Write {
        let unused: Vec<&String> = f
            .write_tables
            .iter()
            .filter(|t| !f.written_objects.contains(t))
            .collect();
        let mut schemas: Vec<&str> = unused.iter().map(|t| schema_of(t)).collect();
        schemas.dedup();
        for s in schemas {
            let in_schema: Vec<&&String> = unused.iter().filter(|t| schema_of(t) == s).collect();
            let total = f.write_tables.iter().filter(|t| schema_of(t) == s).count();
            if in_schema.len() > 5 {
                out.push(format!(
                    "write on {} of {} tables in schema {}",
                    in_schema.len(),
                    total,
                    s
                ));
            } else {
                out.extend(in_schema.iter().map(|t| format!("write on {t}")));
            }
        }
    }
    if f.audit_level >= AuditLevel::Ddl && !used(f, "ddl") {
        out.extend(
            f.ddl_schemas
                .iter()
                .map(|s| format!("create in schema {s}")),
        );
    }
    Some(out)
}

// ---- findings -------------------------------------------------------------------

/// The order of findings of equal severity.
const CODE_ORDER: &[&str] = &[
    "unverified_registration",
    "orphaned_agent",
    "stale_registry_row",
    "agent_unused_admin_rights",
    "unregistered_machine_role",
    "sponsor_sole_approver",
    "unlabelled_sensitive_columns",
    "agent_connects_without_guard",
    "dormant_agent",
    "orphaned_registration",
    "agent_write_outside_grant",
];

pub fn code_rank(code: &str) -> usize {
    CODE_ORDER
        .iter()
        .position(|c| *c == code)
        .unwrap_or(CODE_ORDER.len())
}

fn list(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

fn qi(s: &str) -> String {
    quote_ident(s)
}

/// How to take `h` away from `role`.
fn removal(role: &str, h: &Held) -> String {
    let attr = matches!(
        h.name.as_str(),
        "superuser" | "createrole" | "createdb" | "bypassrls" | "replication"
    );
    match &h.first_hop {
        None if attr => format!("ALTER ROLE {} NO{};", qi(role), h.name.to_ascii_uppercase()),
        None => format!("REVOKE {} FROM {};", qi(&h.name), qi(role)),
        Some(hop) if attr => format!(
            "REVOKE {} FROM {}; (or ALTER ROLE {} NO{})",
            qi(hop),
            qi(role),
            qi(&h.source),
            h.name.to_ascii_uppercase()
        ),
        Some(hop) => format!(
            "REVOKE {} FROM {}; (or REVOKE {} FROM {})",
            qi(hop),
            qi(role),
            qi(&h.name),
            qi(&h.source)
        ),
    }
}

fn describe_held(h: &Held) -> String {
    match &h.first_hop {
        None => h.name.clone(),
        Some(_) => format!("{} (through {})", h.name, h.source),
    }
}

fn can_change_things(f: &RoleFacts) -> bool {
    !f.write_tables.is_empty()
        || !f.ddl_schemas.is_empty()
        || f.owned_relations > 0
        || !f.attributes.is_empty()
        || f.memberships.iter().any(|m| {
            ADMIN_HIGH.contains(&m.name.as_str()) || ADMIN_MEDIUM.contains(&m.name.as_str())
        })
}

fn orphaned(f: &RoleFacts, r: &Registration, out: &mut Vec<Finding>) {
    if r.sponsor_status == SponsorStatus::Active {
        return;
    }
    let through = if r.via_group {
        format!(" (registered through group {})", r.agent)
    } else {
        String::new()
    };
    let reregister = format!(
        "or give it an active human sponsor: SELECT agent_guard.register_agent({}, '<new sponsor>');",
        quote_literal(&r.agent)
    );
    if !f.group_row && f.can_login {
        out.push(Finding {
            code: "orphaned_agent",
            severity: Severity::Critical,
            finding: format!(
                "Orphaned agent {} can still log in: its sponsor {} {}{}. agent_guard refuses its statements, but the account is live and unaccountable.",
                f.role,
                r.sponsor,
                sponsor_why(r.sponsor_status),
                through
            ),
            fix: format!("ALTER ROLE {} NOLOGIN; {}", qi(&f.role), reregister),
        });
    } else if f.group_row && !f.members_can_login.is_empty() {
        out.push(Finding {
            code: "orphaned_agent",
            severity: Severity::Critical,
            finding: format!(
                "Orphaned agent group {}: its sponsor {} {}, yet its members {} can still log in.",
                f.role,
                r.sponsor,
                sponsor_why(r.sponsor_status),
                list(&f.members_can_login, 10)
            ),
            fix: format!(
                "{} {}",
                f.members_can_login
                    .iter()
                    .map(|m| format!("ALTER ROLE {} NOLOGIN;", qi(m)))
                    .collect::<Vec<_>>()
                    .join(" "),
                reregister
            ),
        });
    } else {
        out.push(Finding {
            code: "orphaned_registration",
            severity: Severity::Low,
            finding: format!(
                "Agent {} cannot log in and its sponsor {} {}: the registration is left behind.",
                f.role,
                r.sponsor,
                sponsor_why(r.sponsor_status)
            ),
            fix: if r.via_group {
                format!(
                    "SELECT agent_guard.unregister_agent({}); (if the group is no longer used) or DROP ROLE {};",
                    quote_literal(&r.agent),
                    qi(&f.role)
                )
            } else {
                format!(
                    "SELECT agent_guard.unregister_agent({}); then DROP ROLE {}; if it is no longer needed",
                    quote_literal(&r.agent),
                    qi(&f.role)
                )
            },
        });
    }
}

fn unused_admin(f: &RoleFacts, out: &mut Vec<Finding>) {
    let unused: Vec<&Held> = f
        .attributes
        .iter()
        .chain(f.memberships.iter())
        .filter(|h| {
            (ADMIN_HIGH.contains(&h.name.as_str()) || ADMIN_MEDIUM.contains(&h.name.as_str()))
                && right_used(f, &h.name) != Some(true)
        })
        .collect();
    if unused.is_empty() {
        return;
    }
    let severity = if unused.iter().any(|h| ADMIN_HIGH.contains(&h.name.as_str())) {
        Severity::High
    } else {
        Severity::Medium
    };
    let names: Vec<String> = unused.iter().map(|h| describe_held(h)).collect();
    let mut fixes: Vec<String> = vec![];
    for h in &unused {
        let fix = removal(&f.role, h);
        if !fixes.contains(&fix) {
            fixes.push(fix);
        }
    }
    out.push(Finding {
        code: "agent_unused_admin_rights",
        severity,
        finding: format!(
            "Agent {} holds {} and never used {} in the period. agent_guard refuses agents' privilege and administration statements, so these rights only widen what the account can do if the guard is bypassed or switched off{}.",
            f.role,
            list(&names, 10),
            if names.len() == 1 { "it" } else { "them" },
            if unused.iter().any(|h| h.name == "superuser" || h.name == "bypassrls") {
                " (superuser and BYPASSRLS also read past row security and every privilege check)"
            } else {
                ""
            }
        ),
        fix: fixes.join(" "),
    });
}

fn machine_role(f: &RoleFacts, signals: &[String], out: &mut Vec<Finding>) {
    let severity = if can_change_things(f) {
        Severity::High
    } else {
        Severity::Medium
    };
    out.push(Finding {
        code: "unregistered_machine_role",
        severity,
        finding: format!(
            "Login role {} is not registered as an agent but its sessions look machine-driven: {}. Its statements are not attributed to an accountable human and its writes need no approval.",
            f.role,
            signals.join("; ")
        ),
        fix: format!(
            "Register it with a human sponsor: SELECT agent_guard.register_agent({}, '<sponsor>', kind => 'service', note => '<what runs under it>'); (its writes and schema changes then need approved grants)",
            quote_literal(&f.role)
        ),
    });
}

fn write_outside_grants(f: &RoleFacts, out: &mut Vec<Finding>) {
    if f.granted_any || f.write_tables.is_empty() {
        return;
    }
    let outside: Vec<String> = f
        .write_tables
        .iter()
        .filter(|t| !f.granted_objects.contains(t))
        .cloned()
        .collect();
    if outside.is_empty() {
        return;
    }
    out.push(Finding {
        code: "agent_write_outside_grant",
        severity: Severity::Info,
        finding: format!(
            "Agent {} holds INSERT/UPDATE/DELETE/TRUNCATE on {} relation{} no grant covered in the period ({}). agent_guard refuses these writes without an approved grant; the standing privileges matter only if the guard is off.",
            f.role,
            outside.len(),
            if outside.len() == 1 { "" } else { "s" },
            list(&outside, 5)
        ),
        fix: format!(
            "Keep only what approved work needs: REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {};",
            list_sql(&outside, 20),
            qi(&f.role)
        ),
    });
}

fn list_sql(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" /* and {} more */", items.len() - max));
    }
    s
}

fn without_guard(f: &RoleFacts, out: &mut Vec<Finding>) {
    if f.databases_without_guard.is_empty() && f.databases_unchecked.is_empty() {
        return;
    }
    if !f.group_row && !f.can_login {
        return;
    }
    let mut finding = String::new();
    if !f.databases_without_guard.is_empty() {
        finding = format!(
            "Agent {} may connect to database{} {} where agent_guard is not installed: it is refused there (except session housekeeping), but nothing it tries there is audited.",
            f.role,
            if f.databases_without_guard.len() == 1 { "" } else { "s" },
            list(&f.databases_without_guard, 10)
        );
    }
    if !f.databases_unchecked.is_empty() {
        if !finding.is_empty() {
            finding.push(' ');
        }
        finding.push_str(&format!(
            "Agent {} may connect to {} where agent_guard's presence could not be checked.",
            f.role,
            list(&f.databases_unchecked, 10)
        ));
    }
    let dbs: Vec<String> = f
        .databases_without_guard
        .iter()
        .chain(f.databases_unchecked.iter())
        .cloned()
        .collect();
    out.push(Finding {
        code: "agent_connects_without_guard",
        severity: Severity::Low,
        finding,
        fix: format!(
            "Install agent_guard there (CREATE EXTENSION agent_guard; in each), or take CONNECT away: {}",
            dbs.iter()
                .map(|d| format!(
                    "REVOKE CONNECT ON DATABASE {} FROM PUBLIC, {};",
                    qi(d),
                    qi(&f.role)
                ))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    });
}

fn sole_approver(f: &RoleFacts, r: &Registration, out: &mut Vec<Finding>) {
    let observed = !f.approvers.is_empty() && f.approvers.iter().all(|a| *a == r.sponsor);
    let structural = f.approvers.is_empty()
        && f.possible_approvers.len() == 1
        && f.possible_approvers[0] == r.sponsor;
    if !observed && !structural {
        return;
    }
    let finding = if observed {
        format!(
            "Every grant approved for agent {} in the period was approved by its own sponsor {}: no second pair of eyes.",
            f.role, r.sponsor
        )
    } else {
        format!(
            "The sponsor {} of agent {} is the only human (non-superuser) member of agent_guard_approver: it alone would approve the agent's requests.",
            r.sponsor, f.role
        )
    };
    out.push(Finding {
        code: "sponsor_sole_approver",
        severity: Severity::Medium,
        finding,
        fix: "Name another approver (GRANT agent_guard_approver TO <another human>;) and forbid sponsors to approve their agents' requests: ALTER SYSTEM SET agent_guard.require_distinct_sponsor = 'always'; SELECT pg_reload_conf();".to_string(),
    });
}

fn unlabelled(f: &RoleFacts, out: &mut Vec<Finding>) {
    if f.readable_unlabelled.is_empty() {
        return;
    }
    let cols: Vec<String> = f
        .readable_unlabelled
        .iter()
        .map(|c| format!("{} ({})", c.qualified(), c.reason))
        .collect();
    out.push(Finding {
        code: "unlabelled_sensitive_columns",
        severity: Severity::Medium,
        finding: format!(
            "Agent {} can read {} column{} that look{} sensitive but carr{} no agent_guard label: {}. Its reads of them are not classified as sensitive_read, and literals are not redacted for them.",
            f.role,
            cols.len(),
            if cols.len() == 1 { "" } else { "s" },
            if cols.len() == 1 { "s" } else { "" },
            if cols.len() == 1 { "ies" } else { "y" },
            list(&cols, 10)
        ),
        fix: f
            .readable_unlabelled
            .iter()
            .take(20)
            .map(|c| {
                format!(
                    "SECURITY LABEL FOR agent_guard ON COLUMN {} IS 'SENSITIVE';",
                    c.qualified()
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
    });
}

fn dormant(f: &RoleFacts, out: &mut Vec<Finding>) {
    if f.group_row || !f.can_login || f.active {
        return;
    }
    out.push(Finding {
        code: "dormant_agent",
        severity: Severity::Low,
        finding: format!("Agent {} can log in but did nothing in the period.", f.role),
        fix: format!(
            "ALTER ROLE {} NOLOGIN; (or unregister and drop it if it is no longer needed)",
            qi(&f.role)
        ),
    });
}

fn registry_rows(f: &RoleFacts, out: &mut Vec<Finding>) {
    use crate::registry::{unmatched_fix, unverified_reason};
    for p in &f.registry_problems {
        let r = &p.row;
        match p.state.as_str() {
            "unmatched" => out.push(Finding {
                code: "unverified_registration",
                severity: Severity::Critical,
                finding: format!(
                    "Unverified agent registration: {}. agent_guard refuses every statement of {} in this database (fails closed) until it is settled; a restore that lost the role labels (pg_dumpall --no-security-labels, roles created by hand) leaves rows like this.",
                    unverified_reason(r, &f.role),
                    f.role
                ),
                fix: unmatched_fix(r),
            }),
            "moved" => out.push(Finding {
                code: "stale_registry_row",
                severity: Severity::High,
                finding: format!(
                    "The agent registry row of {} carries OID {} of the cluster it was dumped from; the agent is registered here by its role label, but the row's note and history are not linked to it.",
                    f.role, r.agent_oid
                ),
                fix: "SELECT * FROM agent_guard.repair_registry();".into(),
            }),
            _ => {}
        }
    }
}

/// Findings about one role, most serious first.
pub fn findings(f: &RoleFacts, kind: Kind, signals: &[String]) -> Vec<Finding> {
    let mut out = vec![];
    registry_rows(f, &mut out);
    if let Some(r) = &f.registration {
        orphaned(f, r, &mut out);
        unused_admin(f, &mut out);
        sole_approver(f, r, &mut out);
        unlabelled(f, &mut out);
        without_guard(f, &mut out);
        if r.sponsor_status == SponsorStatus::Active {
            dormant(f, &mut out);
        }
        write_outside_grants(f, &mut out);
    } else if kind == Kind::Service {
        machine_role(f, signals, &mut out);
    }
    sort_findings(&mut out);
    out
}

/// Most serious first; equal severities in a fixed order of codes.
pub fn sort_findings(v: &mut [Finding]) {
    v.sort_by_key(|f| (f.severity, code_rank(f.code)));
}

/// Judge one role.
pub fn assess(f: &RoleFacts) -> Assessment {
    let kind = kind(f);
    let signals = machine_signals(f);
    let findings = findings(f, kind, &signals);
    Assessment {
        kind,
        machine_signals: signals,
        unused_rights: unused_rights(f),
        findings,
    }
}

// ---- markdown ---------------------------------------------------------------------

/// Text safe inside a markdown table cell: one line, pipes escaped.
pub fn md_cell(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    one_line
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .trim()
        .to_string()
}

/// Shorten to at most `max` characters (on a character boundary), marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(name: &str) -> Held {
        Held {
            name: name.into(),
            source: "x".into(),
            first_hop: None,
        }
    }

    fn agent(name: &str, sponsor_status: SponsorStatus) -> RoleFacts {
        RoleFacts {
            role: name.into(),
            can_login: true,
            registration: Some(Registration {
                agent: name.into(),
                via_group: false,
                sponsor: "alice".into(),
                sponsor_status,
            }),
            audit_level: AuditLevel::All,
            active: true,
            statements: 3,
            used_risks: vec!["read".into()],
            ..Default::default()
        }
    }

    fn codes(a: &Assessment) -> Vec<(&'static str, Severity)> {
        a.findings.iter().map(|f| (f.code, f.severity)).collect()
    }

    #[test]
    fn unverified_registrations_come_first_and_make_the_role_an_agent() {
        let row = crate::registry::RegistryRow {
            agent_oid: 16400,
            agent_name: "ops_bot".into(),
            sponsor_name: "alice".into(),
            kind: "agent".into(),
            cluster: Some(7),
        };
        // a human whose role got the restored row's OID; the row names ops_bot
        let mut f = RoleFacts {
            role: "ops_bot".into(),
            can_login: true,
            active: true,
            registry_problems: vec![RegistryProblem {
                state: "unmatched".into(),
                row: row.clone(),
            }],
            ..Default::default()
        };
        let a = assess(&f);
        assert_eq!(a.kind, Kind::Agent);
        assert_eq!(
            codes(&a)[0],
            ("unverified_registration", Severity::Critical)
        );
        assert!(
            a.findings[0]
                .fix
                .contains("agent_guard.register_agent('ops_bot', 'alice'"),
            "{}",
            a.findings[0].fix
        );
        // ahead of an orphaned agent's finding
        f.registration = agent("ops_bot", SponsorStatus::NoLogin).registration;
        let a = assess(&f);
        assert_eq!(
            codes(&a)[..2],
            [
                ("unverified_registration", Severity::Critical),
                ("orphaned_agent", Severity::Critical)
            ]
        );
        // a moved row: registered by its label, the row is stale
        let mut g = agent("ops_bot", SponsorStatus::Active);
        g.registry_problems = vec![RegistryProblem {
            state: "moved".into(),
            row,
        }];
        let a = assess(&g);
        assert_eq!(codes(&a)[0], ("stale_registry_row", Severity::High));
        assert!(a.findings[0].fix.contains("repair_registry()"));
    }

    #[test]
    fn application_names_are_classified() {
        assert_eq!(classify_app("GitHub Actions"), Some(AppClass::Ci));
        assert_eq!(classify_app("github-actions[bot]"), Some(AppClass::Ci));
        assert_eq!(classify_app("gitlab-runner"), Some(AppClass::Ci));
        assert_eq!(classify_app("Jenkins"), Some(AppClass::Ci));
        assert_eq!(classify_app("Cursor"), Some(AppClass::AiTool));
        assert_eq!(classify_app("copilot-agent"), Some(AppClass::AiTool));
        assert_eq!(classify_app("claude-code"), Some(AppClass::AiTool));
        assert_eq!(classify_app("renovatebot"), Some(AppClass::Automation));
        assert_eq!(classify_app("my bot"), Some(AppClass::Automation));
        assert_eq!(
            classify_app("PostgreSQL JDBC Driver"),
            Some(AppClass::Driver)
        );
        assert_eq!(classify_app("psycopg"), Some(AppClass::Driver));
        assert_eq!(classify_app("pgx"), Some(AppClass::Driver));
        assert_eq!(classify_app("psql"), Some(AppClass::Interactive));
        assert_eq!(
            classify_app("pgAdmin 4 - DB:shop"),
            Some(AppClass::Interactive)
        );
        assert_eq!(
            classify_app("DBeaver 23.1.0 - Main"),
            Some(AppClass::Interactive)
        );
        assert_eq!(classify_app("pg_regress/50_review"), None);
        assert_eq!(classify_app("billing-api"), None);
        assert_eq!(classify_app("robotics"), None);
        assert_eq!(classify_app(""), None);
    }

    #[test]
    fn a_registered_role_is_an_agent() {
        let f = agent("ci_bot", SponsorStatus::Active);
        let a = assess(&f);
        assert_eq!(a.kind, Kind::Agent);
        assert!(a.findings.is_empty(), "{:?}", a.findings);
    }

    #[test]
    fn orphaned_agent_that_can_log_in_is_critical_and_first() {
        for status in [
            SponsorStatus::NoLogin,
            SponsorStatus::Expired,
            SponsorStatus::Dropped,
        ] {
            let mut f = agent("ci_bot", status);
            f.attributes = vec![held("superuser")];
            f.write_tables = vec!["public.orders".into()];
            let a = assess(&f);
            assert_eq!(a.findings[0].code, "orphaned_agent");
            assert_eq!(a.findings[0].severity, Severity::Critical);
            assert!(a.findings[0].finding.contains("alice"));
            assert!(a.findings[0].fix.starts_with("ALTER ROLE ci_bot NOLOGIN;"));
            assert_eq!(a.findings[1].code, "agent_unused_admin_rights");
        }
    }

    #[test]
    fn orphaned_agent_that_cannot_log_in_is_a_leftover() {
        let mut f = agent("ci_bot", SponsorStatus::NoLogin);
        f.can_login = false;
        let a = assess(&f);
        assert_eq!(codes(&a), vec![("orphaned_registration", Severity::Low)]);
    }

    #[test]
    fn orphaned_group_names_members_that_can_log_in() {
        let mut f = agent("bots", SponsorStatus::Dropped);
        f.group_row = true;
        f.can_login = false;
        f.members_can_login = vec!["bot_a".into(), "Bot B".into()];
        let a = assess(&f);
        assert_eq!(a.findings[0].code, "orphaned_agent");
        assert!(a.findings[0]
            .fix
            .contains("ALTER ROLE bot_a NOLOGIN; ALTER ROLE \"Bot B\" NOLOGIN;"));
    }

    #[test]
    fn unused_superuser_of_an_agent_is_high() {
        let mut f = agent("root_bot", SponsorStatus::Active);
        f.attributes = vec![held("superuser")];
        f.memberships = vec![Held {
            name: "pg_write_server_files".into(),
            source: "ops".into(),
            first_hop: Some("ops".into()),
        }];
        let a = assess(&f);
        assert_eq!(
            codes(&a),
            vec![("agent_unused_admin_rights", Severity::High)]
        );
        let fix = &a.findings[0].fix;
        assert!(fix.contains("ALTER ROLE root_bot NOSUPERUSER;"), "{fix}");
        assert!(fix.contains("REVOKE ops FROM root_bot;"), "{fix}");
        assert_eq!(
            a.unused_rights.unwrap(),
            vec!["superuser".to_string(), "pg_write_server_files".to_string()]
        );
    }

    #[test]
    fn admin_rights_an_agent_used_are_not_reported() {
        let mut f = agent("bot", SponsorStatus::Active);
        f.attributes = vec![held("createdb")];
        f.used_risks = vec!["admin".into()];
        f.used_commands = vec!["CREATE DATABASE".into()];
        assert!(assess(&f).findings.is_empty());
        f.used_commands = vec!["VACUUM".into()];
        assert_eq!(
            codes(&assess(&f)),
            vec![("agent_unused_admin_rights", Severity::Medium)]
        );
    }

    #[test]
    fn ci_application_name_makes_an_unregistered_role_a_service() {
        let f = RoleFacts {
            role: "deployer".into(),
            can_login: true,
            apps: vec![AppUse {
                name: "GitHub Actions".into(),
                sessions: 2,
            }],
            write_tables: vec!["public.orders".into()],
            sessions: 2,
            active: true,
            ..Default::default()
        };
        let a = assess(&f);
        assert_eq!(a.kind, Kind::Service);
        assert_eq!(
            codes(&a),
            vec![("unregistered_machine_role", Severity::High)]
        );
        assert!(a.findings[0]
            .finding
            .contains("'GitHub Actions' (CI/CD runner, 2 sessions)"));
        assert!(a.findings[0].fix.contains(
            "SELECT agent_guard.register_agent('deployer', '<sponsor>', kind => 'service'"
        ));
    }

    #[test]
    fn many_short_sessions_around_the_clock_look_like_a_machine() {
        let mut f = RoleFacts {
            role: "etl".into(),
            can_login: true,
            apps: vec![AppUse {
                name: "billing".into(),
                sessions: 40,
            }],
            sessions: 40,
            short_sessions: 38,
            hours_active: 22,
            ..Default::default()
        };
        let a = assess(&f);
        assert_eq!(a.kind, Kind::Service);
        assert_eq!(a.findings[0].severity, Severity::Medium, "no write rights");
        assert_eq!(a.machine_signals.len(), 2);
        f.hours_active = 9;
        assert_eq!(kind(&f), Kind::Unknown, "office hours, one signal only");
    }

    #[test]
    fn humans_and_unknowns() {
        let mut f = RoleFacts {
            role: "alice".into(),
            can_login: true,
            is_sponsor: true,
            ..Default::default()
        };
        assert_eq!(kind(&f), Kind::Human);
        f.is_sponsor = false;
        assert_eq!(kind(&f), Kind::Unknown);
        f.apps = vec![AppUse {
            name: "psql".into(),
            sessions: 3,
        }];
        assert_eq!(kind(&f), Kind::Human);
        f.memberships = vec![held("agent_guard_approver")];
        f.apps.clear();
        assert_eq!(kind(&f), Kind::Human);
        assert!(assess(&f).findings.is_empty());
    }

    #[test]
    fn write_rights_outside_grants_are_informational() {
        let mut f = agent("bot", SponsorStatus::Active);
        f.write_tables = vec!["public.orders".into(), "public.customers".into()];
        f.granted_objects = vec!["public.orders".into()];
        let a = assess(&f);
        assert_eq!(
            codes(&a),
            vec![("agent_write_outside_grant", Severity::Info)]
        );
        assert!(a.findings[0]
            .fix
            .contains("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.customers FROM bot;"));
        f.granted_any = true;
        assert!(assess(&f).findings.is_empty());
    }

    #[test]
    fn databases_without_the_guard() {
        let mut f = agent("bot", SponsorStatus::Active);
        f.databases_without_guard = vec!["postgres".into()];
        let a = assess(&f);
        assert_eq!(
            codes(&a),
            vec![("agent_connects_without_guard", Severity::Low)]
        );
        assert!(a.findings[0]
            .fix
            .contains("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC, bot;"));
    }

    #[test]
    fn sponsor_as_only_approver() {
        let mut f = agent("bot", SponsorStatus::Active);
        f.approvers = vec!["alice".into()];
        assert_eq!(
            codes(&assess(&f)),
            vec![("sponsor_sole_approver", Severity::Medium)]
        );
        f.approvers = vec!["alice".into(), "bob".into()];
        assert!(assess(&f).findings.is_empty());
        f.approvers.clear();
        f.possible_approvers = vec!["alice".into()];
        assert_eq!(
            codes(&assess(&f)),
            vec![("sponsor_sole_approver", Severity::Medium)]
        );
        f.possible_approvers = vec!["alice".into(), "bob".into()];
        assert!(assess(&f).findings.is_empty());
    }

    #[test]
    fn unlabelled_sensitive_columns_an_agent_can_read() {
        let mut f = agent("bot", SponsorStatus::Active);
        f.readable_unlabelled = vec![SensitiveColumn {
            schema: "public".into(),
            table: "Customers".into(),
            column: "email".into(),
            reason: "e-mail address".into(),
        }];
        let a = assess(&f);
        assert_eq!(
            codes(&a),
            vec![("unlabelled_sensitive_columns", Severity::Medium)]
        );
        assert_eq!(
            a.findings[0].fix,
            "SECURITY LABEL FOR agent_guard ON COLUMN public.\"Customers\".email IS 'SENSITIVE';"
        );
    }

    #[test]
    fn dormant_agent() {
        let mut f = agent("bot", SponsorStatus::Active);
        f.active = false;
        assert_eq!(codes(&assess(&f)), vec![("dormant_agent", Severity::Low)]);
    }

    #[test]
    fn unused_rights_need_an_audited_role() {
        let mut f = RoleFacts {
            role: "alice".into(),
            can_login: true,
            attributes: vec![held("createdb")],
            write_tables: vec!["public.a".into(), "public.b".into()],
            ddl_schemas: vec!["public".into()],
            ..Default::default()
        };
        assert_eq!(unused_rights(&f), None);
        f.audit_level = AuditLevel::Ddl;
        assert_eq!(
            unused_rights(&f).unwrap(),
            vec![
                "createdb".to_string(),
                "create in schema public".to_string()
            ]
        );
        f.audit_level = AuditLevel::All;
        f.written_objects = vec!["public.a".into()];
        assert_eq!(
            unused_rights(&f).unwrap(),
            vec![
                "createdb".to_string(),
                "write on public.b".to_string(),
                "create in schema public".to_string()
            ]
        );
        f.write_tables = (0..8).map(|i| format!("s.t{i}")).collect();
        f.written_objects.clear();
        assert!(unused_rights(&f)
            .unwrap()
            .contains(&"write on 8 of 8 tables in schema s".to_string()));
    }

    #[test]
    fn findings_sort_by_severity_then_code() {
        let mut v = vec![
            Finding {
                code: "agent_write_outside_grant",
                severity: Severity::Info,
                finding: String::new(),
                fix: String::new(),
            },
            Finding {
                code: "agent_unused_admin_rights",
                severity: Severity::High,
                finding: String::new(),
                fix: String::new(),
            },
            Finding {
                code: "orphaned_agent",
                severity: Severity::Critical,
                finding: String::new(),
                fix: String::new(),
            },
        ];
        sort_findings(&mut v);
        let c: Vec<&str> = v.iter().map(|f| f.code).collect();
        assert_eq!(
            c,
            vec![
                "orphaned_agent",
                "agent_unused_admin_rights",
                "agent_write_outside_grant"
            ]
        );
        assert!(Severity::Critical < Severity::Info);
        assert_eq!(Severity::parse("high"), Some(Severity::High));
    }

    #[test]
    fn markdown_cells() {
        assert_eq!(md_cell("a|b\nc"), "a\\|b c");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(schema_of("\"a.b\".c"), "\"a.b\"");
    }
}
