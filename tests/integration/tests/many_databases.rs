//! More databases than the audit trail's capacity (issue 14.1): 20 databases
//! with agent_guard, one agent session in each, on clusters of their own.
//!
//! - With the default capacity for `max_worker_processes = 8` (64 queues,
//!   writers capped at half the worker pool), every agent read that succeeds
//!   has its audit row in its own database, a read whose record cannot be
//!   admitted is refused (42501, HINT naming the setting to raise) — never
//!   run unaudited —, `audit_stats()` counts every refusal and no drop, a
//!   human's parallel query gets the workers it planned while the writers
//!   run, every database gets a writer in turn, and the counters survive a
//!   writer's exit (`pg_terminate_backend`).
//! - With capacity deliberately too small (`audit_queues = 2`,
//!   `audit_writers = 1`), statements beyond it are refused, and each
//!   database, used on its own, gets its turn and its rows; a human whose
//!   statements are audited too (`audit_non_agents = 'all'`) is never
//!   refused nor kept waiting: what cannot be recorded at once runs
//!   unrecorded and is counted as dropped.

use agent_guard_integration::cluster::Cluster;
use agent_guard_integration::*;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATABASES: usize = 20;

/// The two tests run one after the other: each starts a cluster with 20
/// databases and 20 busy sessions, and the first measures what a human's
/// parallel query gets.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn stats(c: &mut postgres::Client) -> Value {
    let s: String = c
        .query_one("SELECT agent_guard.audit_stats()::text", &[])
        .unwrap()
        .get(0);
    serde_json::from_str(&s).unwrap()
}

fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// (planned, launched) workers of a human's parallel count(*) now.
fn parallel_workers(c: &mut postgres::Client) -> (i64, i64) {
    c.batch_execute(
        "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0;
         SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;",
    )
    .unwrap();
    let plan = c
        .simple_query("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM big")
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    let plan: Value = serde_json::from_str(&plan).unwrap();
    let n = |k| find_key(&plan, k).and_then(Value::as_i64).unwrap_or(0);
    (n("Workers Planned"), n("Workers Launched"))
}

/// A cluster with `DATABASES` databases where agent_guard is created, an
/// agent registered (its label holds in every database) and a table `big`
/// in `postgres` for a human's parallel query.
fn cluster_with_databases(name: &str, conf: &[&str]) -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::init(name, conf);
    cluster.start();
    let mut pg = cluster.connect("postgres", "postgres");
    pg.batch_execute(
        "CREATE ROLE many_sponsor LOGIN; CREATE ROLE many_agent LOGIN;
         CREATE TABLE big AS SELECT g FROM generate_series(1, 200000) g; ANALYZE big;",
    )
    .unwrap();
    let dbs: Vec<String> = (0..DATABASES).map(|d| format!("many_{d}")).collect();
    for (d, db) in dbs.iter().enumerate() {
        pg.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        let mut c = cluster.connect("postgres", db);
        c.batch_execute("CREATE EXTENSION agent_guard").unwrap();
        if d == 0 {
            c.batch_execute("SELECT agent_guard.register_agent('many_agent', 'many_sponsor')")
                .unwrap();
        }
    }
    (cluster, dbs)
}

/// A refusal because the trail could not take the record: 42501, the
/// message says why, the HINT names the setting to raise.
fn assert_audit_refusal(e: &postgres::Error) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert_eq!(db.code().code(), "42501", "{}", describe(e));
    assert!(
        db.message().contains("the audit trail is unavailable"),
        "{}",
        describe(e)
    );
    let hint = db.hint().unwrap_or_default();
    assert!(
        hint.contains("agent_guard.audit_writers") || hint.contains("agent_guard.audit_queues"),
        "{}",
        describe(e)
    );
}

/// One agent session per database, each running `SELECT k` with a request
/// id every 50 ms until `stop`; per database: the request ids that
/// succeeded and how many were refused.
fn agent_load(
    cluster: &Cluster,
    dbs: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(HashSet<String>, usize)>> {
    let mut sessions = vec![];
    for (d, db) in dbs.iter().enumerate() {
        let mut c = cluster.connect("many_agent", db);
        let stop = stop.clone();
        sessions.push(std::thread::spawn(move || {
            let mut ok: HashSet<String> = HashSet::new();
            let mut refused = 0usize;
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let rid = format!("db{d}-{k}");
                match c.batch_execute(&format!("SELECT {k} /* request_id='{rid}' */")) {
                    Ok(()) => {
                        ok.insert(rid);
                    }
                    Err(e) => {
                        assert_audit_refusal(&e);
                        refused += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, refused)
        }));
    }
    sessions
}

/// The request ids with prefix `prefix` in `db`'s trail, once `expected` are
/// all there (or after 30 s).
fn trail_ids(
    cluster: &Cluster,
    db: &str,
    prefix: &str,
    expected: &HashSet<String>,
) -> HashSet<String> {
    let mut c = cluster.connect("postgres", db);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: HashSet<String> = c
            .query(
                "SELECT request_id FROM agent_guard.audit_log WHERE request_id LIKE $1",
                &[&format!("{prefix}%")],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if expected.is_subset(&rows) || Instant::now() > deadline {
            let intact: bool = c
                .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
                .unwrap()
                .get(0);
            assert!(intact, "the chain of {db} verifies");
            return rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every read that succeeded has its row in its database, and no refused
/// read has one (it did not run). Returns (reads that succeeded, refused).
fn check_trails(
    cluster: &Cluster,
    dbs: &[String],
    results: &[(HashSet<String>, usize)],
) -> (usize, usize) {
    let mut problems = vec![];
    let (mut total_ok, mut total_refused) = (0, 0);
    for (d, (ok, refused)) in results.iter().enumerate() {
        total_ok += ok.len();
        total_refused += refused;
        let rows = trail_ids(cluster, &dbs[d], &format!("db{d}-"), ok);
        let lost = ok.difference(&rows).count();
        let extra = rows.difference(ok).count();
        if lost > 0 || extra > 0 {
            problems.push(format!(
                "{}: {} reads ran, {refused} refused, {} rows; {lost} reads without a row, {extra} rows of refused reads",
                dbs[d],
                ok.len(),
                rows.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "every agent read that ran has its audit row, in its own database:\n{}",
        problems.join("\n")
    );
    (total_ok, total_refused)
}

/// A cluster of its own with agent_guard created in `postgres` and an
/// agent `{prefix}_agent` registered (sponsor `{prefix}_sponsor`).
fn cluster_with_agent(prefix: &str, conf: &[&str]) -> (Cluster, postgres::Client) {
    let mut cluster = Cluster::init(prefix, conf);
    cluster.start();
    let mut pg = cluster.connect("postgres", "postgres");
    pg.batch_execute(&format!(
        "CREATE ROLE {prefix}_sponsor LOGIN; CREATE ROLE {prefix}_agent LOGIN;
         CREATE EXTENSION agent_guard;
         SELECT agent_guard.register_agent('{prefix}_agent', '{prefix}_sponsor');"
    ))
    .unwrap();
    (cluster, pg)
}

fn assert_intact(c: &mut postgres::Client) {
    let intact: bool = c
        .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
        .unwrap()
        .get(0);
    assert!(intact, "the chain verifies");
}

fn database_entry<'a>(st: &'a Value, db: &str) -> Option<&'a Value> {
    st["databases"]
        .as_array()?
        .iter()
        .find(|d| d["database"].as_str() == Some(db))
}

#[test]
fn every_agent_read_in_twenty_databases_is_audited_or_refused() {
    let _serial = one_at_a_time();
    let (cluster, dbs) = cluster_with_databases(
        "manydb",
        &["max_worker_processes = 8", "max_connections = 100"],
    );
    let mut pg = cluster.connect("postgres", "postgres");

    let stop = Arc::new(AtomicBool::new(false));
    let sessions = agent_load(&cluster, &dbs, &stop);
    // while every database wants a writer, a human's parallel query gets the
    // workers it planned: audit writers never take the whole worker pool
    std::thread::sleep(Duration::from_secs(3));
    let mut parallel = vec![];
    for _ in 0..3 {
        parallel.push(parallel_workers(&mut pg));
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut c0 = cluster.connect("postgres", &dbs[0]);
    let during = stats(&mut c0);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(HashSet<String>, usize)> =
        sessions.into_iter().map(|t| t.join().unwrap()).collect();
    let (total_ok, total_refused) = check_trails(&cluster, &dbs, &results);
    eprintln!(
        "{total_ok} agent reads audited, {total_refused} refused; a human's parallel query (planned, launched): {parallel:?}"
    );
    assert!(total_ok > 0, "agents' reads ran ({total_refused} refused)");
    for (planned, launched) in &parallel {
        assert_eq!(*planned, 2);
        assert_eq!(
            launched, planned,
            "a human's parallel query gets its workers while audit writers run: {parallel:?}; {during}"
        );
    }
    assert!(
        during["writers_running"].as_u64().is_some_and(|n| n <= 4),
        "at most half of max_worker_processes are audit writers: {during}"
    );

    // Used one after another, every database gets a writer in turn: idle
    // databases give theirs to the one that waits.
    for (d, db) in dbs.iter().enumerate() {
        let mut c = cluster.connect("many_agent", db);
        let mut ids = HashSet::new();
        for k in 0..3 {
            let rid = format!("seq{d}-{k}");
            c.batch_execute(&format!("SELECT {k} /* request_id='{rid}' */"))
                .unwrap_or_else(|e| panic!("{db}, used alone: {}", describe(&e)));
            ids.insert(rid);
        }
        let rows = trail_ids(&cluster, db, &format!("seq{d}-"), &ids);
        assert_eq!(rows, ids, "{db}: the reads of its turn are in its trail");
    }

    let st = stats(&mut c0);
    assert_eq!(st["totals"]["dropped"].as_u64(), Some(0), "{st}");
    assert_eq!(
        st["totals"]["refused"].as_u64(),
        Some(total_refused as u64),
        "every refusal is counted: {st}"
    );
    assert!(
        st["totals"]["written"].as_u64().unwrap_or(0) >= (total_ok + 3 * DATABASES) as u64,
        "{st}"
    );

    // the counters outlive a writer: terminate the writer of the database
    // used last, its database keeps its queue and its counts
    let last = dbs.last().unwrap();
    let before = stats(&mut c0);
    let mine_before = database_entry(&before, last)
        .unwrap_or_else(|| panic!("{last} has a queue: {before}"))
        .clone();
    let pid: i32 = pg
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'agent_guard audit writer' AND datname = $1",
            &[last],
        )
        .unwrap()
        .get(0);
    pg.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "the writer did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = stats(&mut c0);
    for k in ["written", "enqueued", "refused", "dropped"] {
        assert_eq!(
            after["totals"][k], before["totals"][k],
            "totals.{k} survive the writer's exit: before {before}, after {after}"
        );
    }
    let mine_after = database_entry(&after, last)
        .unwrap_or_else(|| panic!("{last} keeps its queue after its writer exits: {after}"));
    assert_eq!(mine_after["worker_pid"], Value::from(0), "{after}");
    for k in ["written", "enqueued", "refused", "dropped"] {
        assert_eq!(
            mine_after[k], mine_before[k],
            "{last}'s {k} survives its writer's exit: before {before}, after {after}"
        );
    }
    assert!(mine_after["written"].as_u64().unwrap_or(0) >= 3, "{after}");
}

#[test]
fn beyond_a_too_small_capacity_agent_statements_are_refused_not_run_unaudited() {
    let _serial = one_at_a_time();
    let (cluster, dbs) = cluster_with_databases(
        "smallcap",
        &[
            "max_worker_processes = 8",
            "max_connections = 100",
            "agent_guard.audit_queues = 2",
            "agent_guard.audit_writers = 1",
            "agent_guard.audit_wait_timeout = '1s'",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = agent_load(&cluster, &dbs, &stop);
    // meanwhile a human whose statements are audited too (audit_non_agents)
    // is never refused and never waits for capacity that is not there: a
    // statement that cannot be recorded at once runs unrecorded (dropped)
    let human_db = dbs[5].clone();
    let mut human = cluster.connect("postgres", &human_db);
    human
        .batch_execute("SET agent_guard.audit_non_agents = 'all'")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    const HUMAN: usize = 40;
    let mut slowest = Duration::ZERO;
    for k in 0..HUMAN {
        let t = Instant::now();
        human
            .batch_execute(&format!("SELECT {k} /* request_id='human-{k}' */"))
            .unwrap_or_else(|e| panic!("a human's statement is never refused: {}", describe(&e)));
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(HashSet<String>, usize)> =
        sessions.into_iter().map(|t| t.join().unwrap()).collect();
    let (total_ok, total_refused) = check_trails(&cluster, &dbs, &results);
    eprintln!(
        "capacity 2 queues, 1 writer: {total_ok} agent reads audited, {total_refused} refused; a human's slowest statement: {slowest:?}"
    );
    assert!(
        slowest < Duration::from_millis(600),
        "a human's statement does not wait for audit capacity (agent_guard.audit_wait_timeout is 1 s): slowest {slowest:?}"
    );
    assert!(
        total_refused > 0,
        "20 busy databases on 2 queues and 1 writer: statements beyond capacity are refused ({total_ok} ran)"
    );

    // each database, used on its own, gets its turn: its statements wait (or
    // are refused and retried) and then run with their rows
    let mut retried_refusals = 0;
    for (d, db) in dbs.iter().enumerate() {
        let mut c = cluster.connect("many_agent", db);
        let rid = format!("turn{d}-1");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c.batch_execute(&format!("SELECT 1 /* request_id='{rid}' */")) {
                Ok(()) => break,
                Err(e) => {
                    assert_audit_refusal(&e);
                    retried_refusals += 1;
                    assert!(Instant::now() < deadline, "{db} never got its turn");
                }
            }
        }
        let ids = HashSet::from([rid.clone()]);
        assert_eq!(trail_ids(&cluster, db, &rid, &ids), ids, "{db}");
    }

    let mut c = cluster.connect("postgres", &dbs[0]);
    let human_rows: i64 = cluster
        .connect("postgres", &human_db)
        .query_one(
            "SELECT count(*) FROM agent_guard.audit_log WHERE request_id LIKE 'human-%'",
            &[],
        )
        .unwrap()
        .get(0);
    let st = stats(&mut c);
    eprintln!("a human's statements: {HUMAN}, recorded {human_rows}");
    assert_eq!(st["queues"].as_u64(), Some(2), "{st}");
    assert!(
        st["writers_running"].as_u64().is_some_and(|n| n <= 1),
        "{st}"
    );
    // no agent record is dropped; the human's unrecorded statements are counted
    assert_eq!(
        st["totals"]["dropped"].as_u64(),
        Some(HUMAN as u64 - human_rows as u64),
        "the human's statements that ran unrecorded are counted as dropped, nothing else: {st}"
    );
    assert_eq!(
        st["totals"]["refused"].as_u64(),
        Some((total_refused + retried_refusals) as u64),
        "every refusal is counted: {st}"
    );
}

/// Many sessions in long transactions on a small queue (64 kB): agents'
/// reservations never hold the queue against each other (a backend that
/// must wait for space first queues its own finished records, giving their
/// reservations back), and humans audited with `audit_non_agents = 'all'`
/// reserve nothing. Before, 24 such sessions held the whole queue reserved
/// with nothing queued and every statement waited `audit_wait_timeout`.
#[test]
fn sessions_in_long_transactions_never_hold_a_small_queue_reserved() {
    let _serial = one_at_a_time();
    let (cluster, mut pg) = cluster_with_agent(
        "res",
        &[
            "max_connections = 100",
            "agent_guard.audit_queue_size = '64kB'",
            "agent_guard.audit_wait_timeout = '20s'",
        ],
    );
    const SESSIONS: usize = 24;
    const STATEMENTS: usize = 40;
    let mut threads = vec![];
    for s in 0..2 * SESSIONS {
        let agent = s < SESSIONS;
        let mut c = cluster.connect(if agent { "res_agent" } else { "postgres" }, "postgres");
        if !agent {
            c.batch_execute("SET agent_guard.audit_non_agents = 'all'")
                .unwrap();
        }
        threads.push(std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            for round in 0..3 {
                c.batch_execute("BEGIN").unwrap();
                for k in 0..STATEMENTS {
                    let t = Instant::now();
                    c.batch_execute(&format!(
                        "SELECT {k}, repeat('x', 300) /* request_id='res{s}-{round}-{k}' */"
                    ))
                    .unwrap_or_else(|e| panic!("session {s} (agent: {agent}): {}", describe(&e)));
                    slowest = slowest.max(t.elapsed());
                }
                c.batch_execute("COMMIT").unwrap();
            }
            slowest
        }));
    }
    let slowest = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap();
    eprintln!(
        "{} sessions on a 64 kB queue: slowest statement {slowest:?}",
        2 * SESSIONS
    );
    assert!(
        slowest < Duration::from_secs(5),
        "no statement waits for reservations nobody gives back (audit_wait_timeout 20 s): slowest {slowest:?}"
    );
    let expected = (SESSIONS * 3 * STATEMENTS) as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (agents, humans) = loop {
        let r = pg
            .query_one(
                "SELECT count(*) FILTER (WHERE agent IS NOT NULL), count(*) FILTER (WHERE agent IS NULL)
                   FROM agent_guard.audit_log WHERE request_id LIKE 'res%'",
                &[],
            )
            .unwrap();
        let (a, h): (i64, i64) = (r.get(0), r.get(1));
        if (a == expected && h == expected) || Instant::now() > deadline {
            break (a, h);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let st = stats(&mut pg);
    assert_eq!(agents, expected, "every agent statement has its row: {st}");
    assert_eq!(
        humans, expected,
        "every human statement has its row (none dropped): {st}"
    );
    assert_eq!(st["totals"]["dropped"].as_u64(), Some(0), "{st}");
    assert_eq!(st["totals"]["refused"].as_u64(), Some(0), "{st}");
    let reserved = database_entry(&st, "postgres").and_then(|d| d["reserved_bytes"].as_u64());
    assert_eq!(
        reserved,
        Some(0),
        "nothing stays reserved once every session is idle: {st}"
    );
    assert_intact(&mut pg);
}

/// Long statements held open (cursors in idle transactions) do not keep
/// their complete records' space reserved: with a 64 kB queue, three agents
/// each holding a 20 kB statement open (together more than the queue)
/// leave room for another agent's statements, which run at once.
#[test]
fn a_long_statement_held_open_does_not_hold_the_queue() {
    let _serial = one_at_a_time();
    let (cluster, mut pg) = cluster_with_agent(
        "long",
        &[
            "agent_guard.audit_queue_size = '64kB'",
            "agent_guard.audit_wait_timeout = '3s'",
        ],
    );
    let padding = "x".repeat(20 * 1024);
    let mut holders = vec![];
    for h in 0..3 {
        let mut holder = cluster.connect("long_agent", "postgres");
        holder
            .batch_execute(&format!(
                "BEGIN; DECLARE c CURSOR FOR SELECT {h} /* request_id='long-held' {padding} */"
            ))
            .unwrap_or_else(|e| panic!("long statement {h}: {}", describe(&e)));
        holders.push(holder);
    }
    let mut other = cluster.connect("long_agent", "postgres");
    for k in 0..20 {
        let t = Instant::now();
        other
            .batch_execute(&format!("SELECT {k} /* request_id='long-other-{k}' */"))
            .unwrap_or_else(|e| panic!("another agent's statement {k}: {}", describe(&e)));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "statement {k} waited {:?} for queue space the held statement reserved",
            t.elapsed()
        );
    }
    for mut holder in holders {
        holder.batch_execute("COMMIT").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM agent_guard.audit_log
                 WHERE request_id = 'long-held' AND statement_text LIKE 'DECLARE c CURSOR%'
                   AND outcome = 'ok' AND transaction_outcome = 'committed'",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long statements' records are complete ({n} of 3)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_intact(&mut pg);
}
