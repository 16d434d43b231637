//! Access review and evidence: the glue between `sql/review.sql` (which
//! gathers facts) and `agent_guard_core::review` (which judges them), the
//! markdown rendering of the report, the activity sampler worker and the
//! probe that tells whether another database of the cluster has agent_guard.

use agent_guard_core::registry::RegistryRow;
use agent_guard_core::review::{
    self as core_review, code_rank, AppUse, AuditLevel, Held, Registration, RegistryProblem,
    RoleFacts, SensitiveColumn, Severity,
};
use pgrx::atomics::PgAtomic;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Map, Value};
use std::ffi::{c_char, CStr};
use std::fmt::Write;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::time::{Duration, Instant};

// ---- who may run it -------------------------------------------------------------

/// The review reveals every role's rights and activity: superusers and
/// members of agent_guard_admin only, and never from an agent session.
#[pg_extern(name = "_review_check")]
fn review_check(what: &str) -> bool {
    if crate::identity::current_agent().is_some() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("agent sessions may not run agent_guard.{what}()"),
            "The access review is for humans: superusers or members of agent_guard_admin."
        );
    }
    unsafe {
        let allowed = crate::identity::is_guard_admin(pg_sys::GetOuterUserId());
        if !allowed {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied for agent_guard.{what}()"),
                "The access review reveals every role's rights and activity; ask a superuser to GRANT agent_guard_admin to you."
            );
        }
    }
    true
}

// ---- facts -> judgement ----------------------------------------------------------

fn s(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn n(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn held(v: &Value, key: &str) -> Vec<Held> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|h| Held {
                    name: s(h, "name"),
                    source: s(h, "source"),
                    first_hop: h
                        .get("first_hop")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The facts `_review_facts()` gathered, as core's plain data.
pub fn role_facts(v: &Value) -> RoleFacts {
    let registration = v
        .get("registration")
        .filter(|r| r.is_object())
        .map(|r| Registration {
            agent: s(r, "agent"),
            via_group: b(r, "via_group"),
            sponsor: s(r, "sponsor"),
            sponsor_status: core_review::parse_sponsor_status(&s(r, "sponsor_status")),
        });
    let registry_problems = v
        .get("registry_problems")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| RegistryProblem {
                    state: s(p, "state"),
                    row: RegistryRow {
                        agent_oid: n(p, "registered_oid") as u32,
                        agent_name: s(p, "agent_name"),
                        sponsor_name: s(p, "sponsor_name"),
                        kind: s(p, "kind"),
                        cluster: None,
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    RoleFacts {
        registry_problems,
        role: s(v, "role"),
        group_row: b(v, "group_row"),
        can_login: b(v, "can_login"),
        members_can_login: strings(v, "members_can_login"),
        registration,
        is_sponsor: b(v, "is_sponsor"),
        attributes: held(v, "attributes"),
        memberships: held(v, "memberships"),
        write_tables: strings(v, "write_tables"),
        ddl_schemas: strings(v, "ddl_schemas"),
        owned_relations: n(v, "owned_relations"),
        readable_unlabelled: v
            .get("readable_unlabelled")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| SensitiveColumn {
                        schema: s(c, "schema"),
                        table: s(c, "table"),
                        column: s(c, "column"),
                        reason: s(c, "reason"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        granted_objects: strings(v, "granted_objects"),
        granted_any: b(v, "granted_any"),
        audit_level: AuditLevel::parse(&s(v, "audit_level")),
        used_risks: strings(v, "used_risks"),
        used_commands: strings(v, "used_commands"),
        written_objects: strings(v, "written_objects"),
        rls_used: b(v, "rls_used"),
        statements: n(v, "statements"),
        refusals: n(v, "refusals"),
        approvals_given: n(v, "approvals_given"),
        approvers: strings(v, "approvers"),
        possible_approvers: strings(v, "possible_approvers"),
        sessions: n(v, "sessions"),
        short_sessions: n(v, "short_sessions"),
        hours_active: n(v, "hours_active") as u32,
        apps: v
            .get("apps")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| AppUse {
                        name: s(x, "name"),
                        sessions: n(x, "sessions"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        databases_without_guard: strings(v, "databases_without_guard"),
        databases_unchecked: strings(v, "databases_unchecked"),
        active: b(v, "active"),
    }
}

/// Rank of a finding across roles: severity first, then a fixed order of codes.
fn rank(severity: Severity, code: &str) -> i32 {
    (severity as i32) * 100 + code_rank(code) as i32
}

/// Judge one role's facts: kind, machine signals, unused rights, findings.
#[pg_extern(immutable, parallel_safe, name = "_review_assess")]
fn review_assess(facts: JsonB) -> JsonB {
    let f = role_facts(&facts.0);
    let a = core_review::assess(&f);
    let findings: Vec<Value> = a
        .findings
        .iter()
        .map(|x| {
            json!({
                "code": x.code,
                "severity": x.severity.as_str(),
                "finding": x.finding,
                "fix": x.fix,
            })
        })
        .collect();
    let top = a.findings.first();
    JsonB(json!({
        "kind": a.kind.as_str(),
        "machine_signals": a.machine_signals,
        "unused_rights": a.unused_rights,
        "findings": findings,
        "top_severity": top.map(|x| x.severity.as_str()),
        "top_rank": top.map(|x| rank(x.severity, x.code)),
    }))
}

/// Sort key of a finding (severity, then code) for lists across roles.
#[pg_extern(immutable, parallel_safe, name = "_review_rank")]
fn review_rank(severity: &str, code: &str) -> i32 {
    rank(Severity::parse(severity).unwrap_or(Severity::Info), code)
}

// ---- is agent_guard installed in the other databases? -----------------------------

const PROBE_UNKNOWN: u32 = 0;
const PROBE_ABSENT: u32 = 1;
const PROBE_PRESENT: u32 = 2;

/// For every other database that accepts connections: is agent_guard
/// installed there? `{name: true | false | null}` (null: could not be checked).
/// A short-lived background worker connects to each in turn and looks.
#[pg_extern(name = "_guard_presence")]
fn guard_presence() -> JsonB {
    let dbs: Vec<(pg_sys::Oid, String)> = crate::search_path::pinned(|| {
        Spi::connect(|client| {
            client
            .select(
                "SELECT d.oid, d.datname::pg_catalog.text FROM pg_catalog.pg_database d \
                 WHERE d.datallowconn AND d.oid <> (SELECT x.oid FROM pg_catalog.pg_database x \
                                                    WHERE x.datname = pg_catalog.current_database()) \
                 ORDER BY d.datname",
                None,
                &[],
            )
            .map(|rows| {
                rows.filter_map(|r| {
                    Some((
                        r.get::<pg_sys::Oid>(1).ok()??,
                        r.get::<String>(2).ok()??,
                    ))
                })
                .collect()
            })
            .unwrap_or_default()
        })
    });
    let mut out = Map::new();
    for (oid, name) in dbs {
        let v = match probe(oid) {
            PROBE_PRESENT => Value::Bool(true),
            PROBE_ABSENT => Value::Bool(false),
            _ => Value::Null,
        };
        out.insert(name, v);
    }
    JsonB(Value::Object(out))
}

/// Start a probe worker for `db` and wait (at most 10 s) for its answer.
fn probe(db: pg_sys::Oid) -> u32 {
    unsafe {
        let seg = pg_sys::dsm_create(8, 0);
        let cell = pg_sys::dsm_segment_address(seg) as *mut u32;
        cell.write_volatile(db.to_u32());
        cell.add(1).write_volatile(PROBE_UNKNOWN);
        let handle = pg_sys::dsm_segment_handle(seg);
        let worker = BackgroundWorkerBuilder::new("agent_guard review probe")
            .set_type("agent_guard review probe")
            .set_library("agent_guard")
            .set_function("agent_guard_review_probe")
            .set_argument(Some(pg_sys::Datum::from(handle as usize)))
            .enable_spi_access()
            // on a hot standby too (it only reads)
            .set_start_time(BgWorkerStartTime::ConsistentState)
            .set_restart_time(None)
            .set_notify_pid(pg_sys::MyProcPid)
            .load_dynamic();
        let mut answer = PROBE_UNKNOWN;
        if let Ok(w) = worker {
            let deadline = Instant::now() + Duration::from_secs(10);
            let stopped = loop {
                match w.pid() {
                    Err(BackgroundWorkerStatus::Stopped) => break true,
                    Err(BackgroundWorkerStatus::PostmasterDied) => break false,
                    _ if Instant::now() > deadline => break false,
                    _ => {
                        pg_sys::WaitLatch(
                            pg_sys::MyLatch,
                            (pg_sys::WL_LATCH_SET
                                | pg_sys::WL_TIMEOUT
                                | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                            20,
                            pg_sys::PG_WAIT_EXTENSION,
                        );
                        pg_sys::ResetLatch(pg_sys::MyLatch);
                        pgrx::check_for_interrupts!();
                    }
                }
            };
            if stopped {
                answer = cell.add(1).read_volatile();
            } else {
                let _ = w.terminate();
            }
        }
        pg_sys::dsm_detach(seg);
        answer
    }
}

/// Entry point of a probe worker: connect to the database named in the
/// shared segment, look for the extension, write the answer, exit.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn agent_guard_review_probe(arg: pg_sys::Datum) {
    crate::hooks::mark_own_worker();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let handle = arg.value() as pg_sys::dsm_handle;
    let seg = unsafe { pg_sys::dsm_attach(handle) };
    if seg.is_null() {
        return; // the reviewer gave up already
    }
    let cell = unsafe { pg_sys::dsm_segment_address(seg) as *mut u32 };
    let db = pg_sys::Oid::from(unsafe { cell.read_volatile() });
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let installed = BackgroundWorker::transaction(crate::identity::extension_installed);
    unsafe {
        cell.add(1).write_volatile(if installed {
            PROBE_PRESENT
        } else {
            PROBE_ABSENT
        });
        pg_sys::dsm_detach(seg);
    }
}

// ---- the activity sampler -----------------------------------------------------------

/// `agent_guard.activity_sample_interval` in seconds (0: no sampling).
static mut SAMPLE_INTERVAL_S: i32 = 60;
/// `agent_guard.activity_sample_database`: where the samples are kept.
static mut SAMPLE_DATABASE: *mut c_char = std::ptr::null_mut();

fn sample_interval() -> i32 {
    unsafe { SAMPLE_INTERVAL_S }
}

fn sample_database() -> String {
    unsafe {
        if SAMPLE_DATABASE.is_null() {
            "postgres".to_string()
        } else {
            CStr::from_ptr(SAMPLE_DATABASE)
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Settings and the sampler worker (from `_PG_init`, preload only).
pub fn init() {
    unsafe {
        pg_sys::DefineCustomIntVariable(
            c"agent_guard.activity_sample_interval".as_ptr(),
            c"How often the activity sampler records the sessions in pg_stat_activity.".as_ptr(),
            c"0 stops sampling. Samples go to agent_guard.activity_samples in agent_guard.activity_sample_database and feed the access review.".as_ptr(),
            &raw mut SAMPLE_INTERVAL_S,
            60,
            0,
            86400,
            pg_sys::GucContext::PGC_SIGHUP,
            pg_sys::GUC_UNIT_S as i32,
            None,
            None,
            None,
        );
        pg_sys::DefineCustomStringVariable(
            c"agent_guard.activity_sample_database".as_ptr(),
            c"The database whose agent_guard.activity_samples the activity sampler fills.".as_ptr(),
            c"The sampler sees the sessions of every database; agent_guard must be installed in this one.".as_ptr(),
            &raw mut SAMPLE_DATABASE,
            c"postgres".as_ptr(),
            pg_sys::GucContext::PGC_POSTMASTER,
            0,
            None,
            None,
            None,
        );
    }
    pgrx::pg_shmem_init!(SAMPLER_PID);
    pgrx::pg_shmem_init!(SAMPLER_STARTED_AT);
    pgrx::pg_shmem_init!(SAMPLER_LAST_SAMPLE);
    BackgroundWorkerBuilder::new("agent_guard activity sampler")
        .set_type("agent_guard activity sampler")
        .set_library("agent_guard")
        .set_function("agent_guard_activity_sampler")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(SAMPLER_RESTART))
        .load();
}

/// How soon the postmaster starts the sampler again after it stopped for
/// any reason but a server shutdown (`pg_terminate_backend`, an error).
const SAMPLER_RESTART: Duration = Duration::from_secs(10);

/// The sampler's process id (0 while none runs), when it started and when
/// it last took a sample (PostgreSQL timestamps), for `agent_guard.status()`.
static SAMPLER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"agent_guard_sampler_pid") };
static SAMPLER_STARTED_AT: PgAtomic<AtomicI64> =
    unsafe { PgAtomic::new(c"agent_guard_sampler_started_at") };
static SAMPLER_LAST_SAMPLE: PgAtomic<AtomicI64> =
    unsafe { PgAtomic::new(c"agent_guard_sampler_last_sample") };

/// The activity sampler as `agent_guard.status()` reports it.
pub fn sampler_status() -> Value {
    let pid = SAMPLER_PID.get().load(Ordering::Acquire);
    let ts = |v: i64| (v != 0).then(|| crate::audit::row::iso_utc(v));
    json!({
        "running": pid != 0,
        "pid": (pid != 0).then_some(pid),
        "database": sample_database(),
        "interval_s": sample_interval(),
        "started_at": ts(SAMPLER_STARTED_AT.get().load(Ordering::Acquire)),
        "last_sample_at": ts(SAMPLER_LAST_SAMPLE.get().load(Ordering::Acquire)),
        "restarts_after_s": SAMPLER_RESTART.as_secs(),
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn sampler_exit(_code: i32, _arg: pg_sys::Datum) {
    let me = unsafe { pg_sys::MyProcPid };
    let _ = SAMPLER_PID
        .get()
        .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
}

/// Entry point of the activity sampler: every interval, if agent_guard is
/// installed in the sample database, `SELECT agent_guard.sample_activity()`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn agent_guard_activity_sampler(_arg: pg_sys::Datum) {
    crate::hooks::mark_own_worker();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    unsafe {
        SAMPLER_PID
            .get()
            .store(pg_sys::MyProcPid, Ordering::Release);
        SAMPLER_STARTED_AT
            .get()
            .store(pg_sys::GetCurrentTimestamp(), Ordering::Release);
        pg_sys::before_shmem_exit(Some(sampler_exit), pg_sys::Datum::from(0));
    }
    let db = sample_database();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // its SQL resolves nothing through the database's search_path
    crate::search_path::pin_for_worker();
    let mut last: Option<Instant> = None;
    loop {
        let interval = sample_interval();
        let due = interval > 0
            && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(interval as u64));
        if due {
            last = Some(Instant::now());
            BackgroundWorker::transaction(|| {
                let ready = Spi::get_one::<bool>(
                    "SELECT pg_catalog.to_regprocedure('agent_guard.sample_activity()') IS NOT NULL",
                )
                .ok()
                .flatten()
                .unwrap_or(false);
                if ready {
                    crate::identity::internal(|| {
                        let _ = Spi::get_one::<i32>("SELECT agent_guard.sample_activity()");
                    });
                    SAMPLER_LAST_SAMPLE
                        .get()
                        .store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Release);
                }
            });
        }
        let wait = if interval > 0 {
            let elapsed = last.map_or(Duration::ZERO, |t| t.elapsed());
            Duration::from_secs(interval as u64)
                .saturating_sub(elapsed)
                .max(Duration::from_millis(100))
        } else {
            Duration::from_secs(60)
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            // SIGTERM: exit code 1 so that the postmaster starts the sampler
            // again after SAMPLER_RESTART (code 0 would unregister it for
            // good); at a server shutdown nothing is restarted anyway.
            unsafe { pg_sys::proc_exit(1) };
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

// ---- markdown ----------------------------------------------------------------------

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => core_review::md_cell(s),
        Value::Array(a) => core_review::md_cell(
            &a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => core_review::md_cell(&other.to_string()),
    }
}

fn text(v: &Value, key: &str) -> String {
    cell(v.get(key).unwrap_or(&Value::Null))
}

/// Timestamps as the report shows them: to the second, "T" and zone kept.
fn when(v: &Value, key: &str) -> String {
    let t = v.get(key).and_then(Value::as_str).unwrap_or_default();
    // 2024-05-01T10:00:00.123456+00:00 -> 2024-05-01 10:00:00+00
    let t = t.replacen('T', " ", 1);
    match (t.find('.'), t.rfind(['+', '-'])) {
        (Some(dot), Some(zone)) if zone > dot => format!("{}{}", &t[..dot], &t[zone..]),
        _ => t,
    }
    .replace("+00:00", " UTC")
}

fn count(v: &Value, key: &str) -> u64 {
    n(v, key)
}

fn rights_summary(a: &Value) -> String {
    let mut r: Vec<String> = [
        "superuser",
        "createrole",
        "createdb",
        "bypassrls",
        "replication",
    ]
    .iter()
    .filter(|k| a.get(**k).and_then(Value::as_bool).unwrap_or(false))
    .map(|k| k.to_string())
    .collect();
    r.extend(strings(a, "pg_roles"));
    for m in strings(a, "member_of") {
        if m.starts_with("agent_guard_") {
            r.push(m);
        }
    }
    let mut s = if r.is_empty() {
        "—".to_string()
    } else {
        r.join(", ")
    };
    let mut caps = vec![];
    if b(a, "can_write") {
        caps.push("write");
    }
    if b(a, "can_ddl") {
        caps.push("DDL");
    }
    if !caps.is_empty() {
        s.push_str(&format!("; {}", caps.join(" + ")));
    }
    if let Some(tp) = a.get("table_privileges").and_then(Value::as_object) {
        let per: Vec<String> = tp
            .iter()
            .map(|(schema, p)| {
                format!(
                    "{schema}: {}/{} read, {} write",
                    count(p, "select"),
                    count(p, "relations"),
                    [
                        count(p, "insert"),
                        count(p, "update"),
                        count(p, "delete"),
                        count(p, "truncate")
                    ]
                    .into_iter()
                    .max()
                    .unwrap_or(0)
                )
            })
            .collect();
        if !per.is_empty() {
            s.push_str(&format!(" ({})", per.join("; ")));
        }
    }
    core_review::md_cell(&s)
}

fn by_risk(a: &Value) -> String {
    let order = [
        "session",
        "read",
        "sensitive_read",
        "write",
        "ddl",
        "privilege",
        "admin",
        "unclassified",
    ];
    let m = a.get("statements_by_risk").and_then(Value::as_object);
    let Some(m) = m else {
        return String::new();
    };
    order
        .iter()
        .filter_map(|k| m.get(*k).map(|v| format!("{k} {}", v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report document (`access_review_report('json')`'s content) as markdown.
pub fn render_markdown(doc: &Value) -> String {
    let mut o = String::new();
    let scope = &doc["scope"];
    let period = &doc["period"];
    let summary = &doc["summary"];
    let _ = writeln!(
        o,
        "# agent_guard access review: database {}\n",
        text(scope, "database")
    );
    let _ = writeln!(o, "| scope | |\n|---|---|");
    let cluster = match (
        scope.get("cluster_name").and_then(Value::as_str),
        scope.get("system_identifier").and_then(Value::as_str),
    ) {
        (Some(name), Some(id)) => {
            format!("{} (system identifier {id})", core_review::md_cell(name))
        }
        (None, Some(id)) => format!("system identifier {id}"),
        _ => String::new(),
    };
    let _ = writeln!(o, "| cluster | {cluster} |");
    let _ = writeln!(
        o,
        "| server | {}:{}, PostgreSQL {} |",
        text(scope, "server_address"),
        text(scope, "server_port"),
        text(scope, "server_version")
    );
    let _ = writeln!(o, "| database | {} |", text(scope, "database"));
    let _ = writeln!(o, "| generated at | {} |", when(scope, "generated_at"));
    let _ = writeln!(o, "| generated by | {} |", text(scope, "generated_by"));
    let _ = writeln!(
        o,
        "| period | {} to {} |",
        when(period, "from"),
        when(period, "to")
    );
    let _ = writeln!(
        o,
        "| agent_guard | {} |",
        text(scope, "agent_guard_version")
    );
    let chain = &doc["audit_chain"];
    let chain_text = if chain.is_null() {
        "not verified".to_string()
    } else if b(chain, "intact") {
        format!(
            "hash chain intact ({} rows checked)",
            count(chain, "rows_checked")
        )
    } else {
        format!(
            "**hash chain BROKEN** at row {}: {}",
            text(chain, "first_broken_id"),
            text(chain, "problem")
        )
    };
    let _ = writeln!(o, "| audit trail | {chain_text} |\n");

    // summary
    let kinds = &summary["by_kind"];
    let sev = &summary["findings_by_severity"];
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(
        o,
        "- Login roles and agent groups reviewed: {} (agents: {}, humans: {}, services, i.e. unregistered but machine-driven: {}, unknown: {}).",
        count(summary, "actors"),
        count(kinds, "agent"),
        count(kinds, "human"),
        count(kinds, "service"),
        count(kinds, "unknown")
    );
    let _ = writeln!(
        o,
        "- Findings: {} critical, {} high, {} medium, {} low, {} info.",
        count(sev, "critical"),
        count(sev, "high"),
        count(sev, "medium"),
        count(sev, "low"),
        count(sev, "info")
    );
    let _ = writeln!(
        o,
        "- High-risk actions in the period (writes, schema changes, privilege and administration statements): {}, of which {} refused.\n",
        count(summary, "high_risk_actions"),
        count(summary, "high_risk_denied")
    );

    // findings
    let _ = writeln!(o, "## Findings\n");
    let findings = doc["findings"].as_array().cloned().unwrap_or_default();
    if findings.is_empty() {
        let _ = writeln!(o, "No findings.\n");
    } else {
        let _ = writeln!(o, "Most serious first.\n");
        let _ = writeln!(
            o,
            "| # | severity | role | kind | finding | suggested fix |\n|---|---|---|---|---|---|"
        );
        for (i, f) in findings.iter().enumerate() {
            let sev = text(f, "severity");
            let sev = if sev == "critical" || sev == "high" {
                format!("**{sev}**")
            } else {
                sev
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                i + 1,
                sev,
                text(f, "role"),
                text(f, "kind"),
                text(f, "finding"),
                text(f, "fix")
            );
        }
        let _ = writeln!(o);
    }

    // actors
    let _ = writeln!(o, "## Actors\n");
    let _ = writeln!(
        o,
        "| role | kind | sponsor (status) | can log in | rights held | used in the period | held, never used | statements by risk | refusals | grants requested / approved (by) | sessions (applications) | last activity |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for a in doc["actors"].as_array().cloned().unwrap_or_default() {
        let sponsor = match a.get("sponsor").and_then(Value::as_str) {
            Some(sp) => {
                let via = match (
                    a.get("agent").and_then(Value::as_str),
                    a.get("role").and_then(Value::as_str),
                ) {
                    (Some(ag), Some(r)) if ag != r => format!(" via {ag}"),
                    _ => String::new(),
                };
                core_review::md_cell(&format!("{sp} ({}){via}", s(&a, "sponsor_status")))
            }
            None => String::new(),
        };
        let login = if b(&a, "can_login") {
            match a.get("valid_until").and_then(Value::as_str) {
                Some(_) => format!("yes, until {}", when(&a, "valid_until")),
                None => "yes".to_string(),
            }
        } else {
            "no".to_string()
        };
        let used = {
            let risks = strings(&a, "risks_used");
            let commands = strings(&a, "commands_used");
            let objects = strings(&a, "objects_used");
            if risks.is_empty() {
                String::new()
            } else {
                core_review::md_cell(&format!(
                    "{}; {}{}",
                    risks.join(", "),
                    core_review::truncate(&commands.join(", "), 120),
                    if objects.is_empty() {
                        String::new()
                    } else {
                        format!(" on {}", core_review::truncate(&objects.join(", "), 160))
                    }
                ))
            }
        };
        let unused = match a.get("unused_rights") {
            Some(Value::Array(x)) if x.is_empty() => "—".to_string(),
            Some(Value::Array(_)) => core_review::md_cell(&core_review::truncate(
                &strings(&a, "unused_rights").join(", "),
                240,
            )),
            _ => "not audited".to_string(),
        };
        let grants = {
            let req = count(&a, "grants_requested");
            let appr = count(&a, "grants_approved");
            let by = strings(&a, "approved_by");
            if req == 0 {
                String::new()
            } else if by.is_empty() {
                format!("{req} / {appr}")
            } else {
                core_review::md_cell(&format!("{req} / {appr} ({})", by.join(", ")))
            }
        };
        let sessions = {
            let n = count(&a, "sessions");
            let apps: Vec<String> = strings(&a, "application_names")
                .into_iter()
                .map(|x| {
                    if x.is_empty() {
                        "(none)".to_string()
                    } else {
                        x
                    }
                })
                .collect();
            if n == 0 {
                String::new()
            } else {
                core_review::md_cell(&format!(
                    "{n} ({})",
                    core_review::truncate(&apps.join(", "), 80)
                ))
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            text(&a, "role"),
            text(&a, "kind"),
            sponsor,
            login,
            rights_summary(&a),
            used,
            unused,
            by_risk(&a),
            count(&a, "refusals"),
            grants,
            sessions,
            when(&a, "last_activity")
        );
    }
    let _ = writeln!(o);

    // high-risk actions
    let _ = writeln!(o, "## High-risk actions\n");
    let actions = doc["high_risk_actions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if actions.is_empty() {
        let _ = writeln!(o, "None in the period.\n");
    } else {
        let _ = writeln!(
            o,
            "Writes, schema changes, privilege and administration statements, allowed or refused, with the grant that allowed them and who approved it.\n"
        );
        let _ = writeln!(
            o,
            "| time | who | agent (sponsor) | risk | command | objects | decision | outcome | request id | grant | requested / approved by | statement |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for x in &actions {
            let agent = match x.get("agent").and_then(Value::as_str) {
                Some(ag) => core_review::md_cell(&format!("{ag} ({})", s(x, "sponsor"))),
                None => String::new(),
            };
            let grant = match x.get("grant").and_then(Value::as_i64) {
                Some(g) => format!("#{g}"),
                None => String::new(),
            };
            let approval = match x.get("approved_by").and_then(Value::as_str) {
                Some(by) => core_review::md_cell(&format!(
                    "{} at {} / {by} at {}{}",
                    s(x, "requested_by"),
                    when(x, "requested_at"),
                    when(x, "approved_at"),
                    match x.get("approval_note").and_then(Value::as_str) {
                        Some(note) => format!(" ({note})"),
                        None => String::new(),
                    }
                )),
                None => String::new(),
            };
            let outcome = [s(x, "outcome"), s(x, "transaction")]
                .into_iter()
                .filter(|z| !z.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                when(x, "at"),
                text(x, "who"),
                agent,
                text(x, "risk"),
                text(x, "command"),
                text(x, "objects"),
                text(x, "decision"),
                core_review::md_cell(&outcome),
                text(x, "request_id"),
                grant,
                approval,
                core_review::md_cell(&core_review::truncate(&s(x, "statement"), 200))
            );
        }
        let _ = writeln!(o);
    }

    // unlabelled columns
    let cols = doc["unlabelled_sensitive_columns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(o, "## Sensitive columns not labelled\n");
    if cols.is_empty() {
        let _ = writeln!(o, "None found.\n");
    } else {
        let _ = writeln!(o, "| column | looks like |\n|---|---|");
        for c in &cols {
            let q = SensitiveColumn {
                schema: s(c, "schema"),
                table: s(c, "table"),
                column: s(c, "column"),
                reason: s(c, "reason"),
            };
            let _ = writeln!(
                o,
                "| {} | {} |",
                core_review::md_cell(&q.qualified()),
                core_review::md_cell(&q.reason)
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## How this review was made\n");
    for m in doc["method"].as_array().cloned().unwrap_or_default() {
        if let Some(m) = m.as_str() {
            let _ = writeln!(o, "- {m}");
        }
    }
    o
}

#[pg_extern(immutable, parallel_safe, name = "_review_markdown")]
fn review_markdown(doc: JsonB) -> String {
    render_markdown(&doc.0)
}
