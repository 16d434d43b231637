//! Helpers for agent_guard's real-client integration tests.
//!
//! The tests run against a cluster that `scripts/test.sh` starts (layer
//! "integration") with `shared_preload_libraries = 'agent_guard'`. It passes:
//!
//! | env           | meaning                                   | default                          |
//! |---------------|-------------------------------------------|----------------------------------|
//! | `AG_PGHOST`   | host                                      | `127.0.0.1`                      |
//! | `AG_PGPORT`   | port                                      | `28815`                          |
//! | `AG_PGUSER`   | superuser                                 | `postgres`                       |
//! | `AG_PGDATABASE` | database the tests use                  | `agent_guard_it`                 |
//! | `AG_PGDATA`   | data dir (for `server_log`, `restart`)    | `/var/tmp/agent_guard/test-cluster` |
//! | `AG_PGBINDIR` | PostgreSQL bin dir (pg_ctl)               | `/usr/lib/postgresql/15/bin`     |
//!
//! Cargo runs the `#[test]` fns of one file concurrently in threads (files run
//! one after another), so:
//! - create roles/tables with [`unique_name`] so tests never clash;
//! - a test that restarts or crashes the cluster ([`restart`]) must take
//!   [`exclusive`] and so must every other test in the same file
//!   (best: keep such tests in a file of their own).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use postgres::{Client, NoTls};

pub mod cluster;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn host() -> String {
    env_or("AG_PGHOST", "127.0.0.1")
}

pub fn port() -> u16 {
    env_or("AG_PGPORT", "28815")
        .parse()
        .expect("AG_PGPORT must be a port number")
}

/// The superuser the tests administer the cluster with (`AG_PGUSER`, default postgres).
pub fn superuser() -> String {
    env_or("AG_PGUSER", "postgres")
}

/// The database the integration tests use (`AG_PGDATABASE`, default agent_guard_it).
pub fn database() -> String {
    env_or("AG_PGDATABASE", "agent_guard_it")
}

/// The cluster's data directory (`AG_PGDATA`).
pub fn pgdata() -> String {
    env_or("AG_PGDATA", "/var/tmp/agent_guard/test-cluster")
}

/// The server's bin directory (`AG_PGBINDIR`; scripts/test.sh passes the one
/// of the PostgreSQL major under test).
pub fn bindir() -> String {
    env_or("AG_PGBINDIR", "/usr/lib/postgresql/15/bin")
}

/// The server's major version (`server_version_num` / 10000).
pub fn server_major(c: &mut Client) -> u32 {
    let v: String = c
        .query_one("SELECT current_setting('server_version_num')", &[])
        .expect("server_version_num")
        .get(0);
    v.parse::<u32>().expect("server_version_num is a number") / 10000
}

/// The developer setting that forces parallel plans: `force_parallel_mode`
/// before 16, `debug_parallel_query` from 16 on.
pub fn debug_parallel_setting(c: &mut Client) -> &'static str {
    if server_major(c) >= 16 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    }
}

/// A readable form of a client error: the server's message, detail and hint
/// when there is one (postgres::Error's Display only says "db error").
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; DETAIL: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; HINT: {h}"));
            }
            s
        }
        None => format!("{e}"),
    }
}

/// All rows of all statements of `sql` (simple query protocol) as text: one
/// line per row, cells separated by `|`, NULL as `NULL`.
pub fn rows_text(c: &mut Client, sql: &str) -> Result<String, postgres::Error> {
    let mut out = String::new();
    for m in c.simple_query(sql)? {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            let cells: Vec<&str> = (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
            out.push_str(&cells.join("|"));
            out.push('\n');
        }
    }
    Ok(out)
}

/// [`rows_text`] that must succeed (panics with the server's message).
pub fn rows_text_ok(c: &mut Client, sql: &str) -> String {
    rows_text(c, sql).unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
}

/// The SQLSTATE of a client error ("" when the error did not come from the server).
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// Wait until `standby` has replayed everything `primary` wrote so far (30 s at most).
pub fn wait_replay(primary: &mut Client, standby: &mut Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: bool = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay up to {lsn}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `sql` (simple protocol), which must be refused with SQLSTATE 42501; its error.
pub fn refused_42501(c: &mut Client, sql: &str) -> postgres::error::DbError {
    let e = c.batch_execute(sql).expect_err(sql);
    assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e));
    e.as_db_error().unwrap().clone()
}

fn try_connect_db(user: &str, dbname: &str) -> Result<Client, postgres::Error> {
    postgres::Config::new()
        .host(&host())
        .port(port())
        .user(user)
        .dbname(dbname)
        // no word of it may look machine-driven to the access review (which samples these sessions)
        .application_name("integration tests")
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
}

/// Connect to `dbname` as `user` (no password: the test cluster trusts 127.0.0.1).
/// Does not create anything; panics with a clear message on failure.
pub fn connect_db(user: &str, dbname: &str) -> Client {
    try_connect_db(user, dbname).unwrap_or_else(|e| {
        panic!(
            "cannot connect to {}:{} db={} user={}: {}",
            host(),
            port(),
            dbname,
            user,
            describe(&e)
        )
    })
}

/// Like [`connect`] but returns the error (for tests that expect a refusal).
pub fn try_connect(user: &str) -> Result<Client, postgres::Error> {
    ensure_database();
    try_connect_db(user, &database())
}

/// Connect to the test database (created on first use, with the extension) as `user`.
pub fn connect(user: &str) -> Client {
    ensure_database();
    connect_db(user, &database())
}

/// Connect to the test database as the superuser.
pub fn admin() -> Client {
    connect(&superuser())
}

static DB_READY: OnceLock<()> = OnceLock::new();

/// Make sure database `AG_PGDATABASE` exists and has `agent_guard` installed
/// (`CREATE EXTENSION IF NOT EXISTS agent_guard`). Runs once per test binary;
/// [`connect`] and [`admin`] call it.
pub fn ensure_database() {
    DB_READY.get_or_init(|| {
        let db = database();
        let mut pg = connect_db(&superuser(), "postgres");
        let exists = pg
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .unwrap_or_else(|e| panic!("query pg_database: {}", describe(&e)))
            .is_some();
        if !exists {
            if let Err(e) = pg.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&db))) {
                // another test binary may have created it meanwhile
                if e.code() != Some(&postgres::error::SqlState::DUPLICATE_DATABASE) {
                    panic!("CREATE DATABASE {db}: {}", describe(&e));
                }
            }
        }
        let mut c = connect_db(&superuser(), &db);
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS agent_guard")
            .unwrap_or_else(|e| panic!("CREATE EXTENSION agent_guard in {db}: {}", describe(&e)));
    });
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A lowercase identifier unique within this run and across runs, e.g.
/// `unique_name("agent")` -> `agent_4711_3_k2j9x`. Safe as a role, table or
/// database name without quoting (as long as `prefix` is). At most 63 bytes.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut name = format!(
        "{}_{}_{}_{}",
        prefix.to_lowercase(),
        std::process::id(),
        n,
        base36((nanos % 36u128.pow(5)) as u64)
    );
    name.truncate(63);
    name
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Create a LOGIN role with a [`unique_name`] built from `prefix`, plus any
/// extra `CREATE ROLE` options (e.g. `"NOINHERIT"`); returns its name.
pub fn create_login_role(prefix: &str, options: &str) -> String {
    let name = unique_name(prefix);
    let mut a = admin();
    // PUBLIC already has CONNECT and USAGE on schema public; granting them
    // per role would make concurrent tests collide on the same catalog rows.
    a.batch_execute(&format!("CREATE ROLE {name} LOGIN {options};"))
        .unwrap_or_else(|e| panic!("CREATE ROLE {name}: {}", describe(&e)));
    name
}

/// The whole server log (`$AG_PGDATA/server.log`), as far as it is readable.
pub fn server_log() -> String {
    let path = format!("{}/server.log", pgdata());
    match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => panic!("cannot read {path}: {e} (set AG_PGDATA; run as root or postgres)"),
    }
}

/// Current length of the server log; pass it to [`server_log_since`] to see
/// only what a test caused (other tests may log concurrently).
pub fn server_log_len() -> usize {
    std::fs::metadata(format!("{}/server.log", pgdata()))
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

/// The server log from byte offset `from` on.
pub fn server_log_since(from: usize) -> String {
    let log = server_log();
    log.get(from.min(log.len())..).unwrap_or("").to_string()
}

/// Wait up to `timeout` for `needle` to show up in the log after byte `from`.
pub fn wait_for_log(from: usize, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if server_log_since(from).contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn as_postgres(args: &[&str]) -> Command {
    let me = Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let mut cmd = match me.as_deref() {
        Some("postgres") => Command::new(args[0]),
        Some("root") => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", args[0]]);
            c
        }
        _ => {
            let mut c = Command::new("sudo");
            c.args(["-n", "-u", "postgres", "--", args[0]]);
            c
        }
    };
    cmd.args(&args[1..]).current_dir("/");
    cmd
}

pub(crate) fn run(mut cmd: Command, what: &str) -> (bool, String) {
    match cmd.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {what}: {e}")),
    }
}

/// Stop the cluster with `pg_ctl stop -m MODE` (smart|fast|immediate;
/// "immediate" is a crash: recovery runs at the next start), then start it
/// again with the same settings, waiting until it accepts connections.
/// Existing clients are disconnected. Take [`exclusive`] first.
pub fn restart(mode: &str) {
    let pg_ctl = format!("{}/pg_ctl", bindir());
    let data = pgdata();
    let log = format!("{data}/server.log");
    let (ok, out) = run(
        as_postgres(&[&pg_ctl, "-D", &data, "-m", mode, "-w", "-t", "120", "stop"]),
        "pg_ctl stop",
    );
    assert!(ok, "pg_ctl stop -m {mode} failed: {out}");
    let (ok, out) = run(
        as_postgres(&[&pg_ctl, "-D", &data, "-l", &log, "-w", "-t", "120", "start"]),
        "pg_ctl start",
    );
    assert!(
        ok,
        "pg_ctl start failed: {out}\n--- server.log tail ---\n{}",
        tail(&server_log(), 30)
    );
    wait_ready(Duration::from_secs(60));
}

/// Wait until the cluster accepts connections (panics after `timeout`).
pub fn wait_ready(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match try_connect_db(&superuser(), "postgres") {
            Ok(mut c) => match c.simple_query("SELECT 1") {
                Ok(_) => return,
                Err(e) => describe(&e),
            },
            Err(e) => describe(&e),
        };
        if Instant::now() > deadline {
            panic!("cluster not ready after {timeout:?}: {err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Serialize tests within one test binary (for tests that restart the cluster
/// or change server-wide settings). Survives a panicking holder.
pub fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner())
}
