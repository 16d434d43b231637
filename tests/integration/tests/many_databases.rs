//! More databases than audit queues and writers: 20 databases with
//! agent_guard, one agent session in each, on a cluster with 8 audit queues
//! and `max_worker_processes = 8`. Every agent read that succeeds has its
//! audit row; a read whose record cannot be admitted is refused (42501,
//! with a hint naming the setting to raise) — never a silent loss, and
//! `audit_stats()` counts no drop. Meanwhile a human's parallel query still
//! gets its workers (audit writers never take the last worker slots), and
//! the counters survive the writers' exit.

use agent_guard_integration::cluster::Cluster;
use agent_guard_integration::*;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATABASES: usize = 20;

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

/// How many workers a human's parallel count(*) launches now.
fn parallel_workers_launched(c: &mut postgres::Client) -> i64 {
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
    assert_eq!(
        find_key(&plan, "Workers Planned").and_then(Value::as_i64),
        Some(2),
        "{plan}"
    );
    find_key(&plan, "Workers Launched")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

#[test]
fn every_agent_read_is_audited_or_refused_in_twenty_databases() {
    let mut cluster = Cluster::init(
        "manydb",
        &[
            "max_worker_processes = 8",
            "max_connections = 100",
            "agent_guard.audit_queues = 8",
        ],
    );
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
            // a registration is a role label: it holds in every database
            c.batch_execute("SELECT agent_guard.register_agent('many_agent', 'many_sponsor')")
                .unwrap();
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
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
                        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
                        assert_eq!(db.code().code(), "42501", "{}", describe(&e));
                        assert!(
                            db.message().contains("the audit trail is unavailable"),
                            "{}",
                            describe(&e)
                        );
                        let hint = db.hint().unwrap_or_default();
                        assert!(
                            hint.contains("agent_guard.audit_writers")
                                || hint.contains("agent_guard.audit_queues"),
                            "{}",
                            describe(&e)
                        );
                        refused += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, refused)
        }));
    }

    // while every database wants a writer, a human's parallel query still gets its workers
    std::thread::sleep(Duration::from_secs(4));
    let launched = parallel_workers_launched(&mut pg);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(HashSet<String>, usize)> =
        sessions.into_iter().map(|t| t.join().unwrap()).collect();

    let mut lost = vec![];
    let mut audited_dbs = 0;
    let mut total_ok = 0;
    let mut total_refused = 0;
    for (d, (ok, refused)) in results.iter().enumerate() {
        total_ok += ok.len();
        total_refused += refused;
        if ok.is_empty() {
            continue;
        }
        audited_dbs += 1;
        let mut c = cluster.connect("postgres", &dbs[d]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let rows: HashSet<String> = loop {
            let rows: HashSet<String> = c
                .query(
                    "SELECT request_id FROM agent_guard.audit_log WHERE request_id LIKE $1",
                    &[&format!("db{d}-%")],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            if ok.is_subset(&rows) || Instant::now() > deadline {
                break rows;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        lost.extend(ok.difference(&rows).cloned());
        let intact: bool = c
            .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
            .unwrap()
            .get(0);
        assert!(intact, "the chain of {} verifies", dbs[d]);
    }
    eprintln!(
        "{total_ok} agent reads audited in {audited_dbs} databases, {total_refused} refused; \
         a human's parallel query launched {launched} of 2 workers"
    );
    assert!(
        lost.is_empty(),
        "{} agent reads succeeded without an audit row (of {total_ok}; {total_refused} refused), e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        audited_dbs >= 1 && total_ok > 0,
        "some databases were audited ({audited_dbs} of {DATABASES}; {total_ok} reads, {total_refused} refused)"
    );
    assert!(
        launched >= 1,
        "a human's parallel query launched {launched} of 2 workers while audit writers ran"
    );

    // Used one after another, every database gets a queue and a writer in
    // turn: idle databases give theirs to the busy one.
    for (d, db) in dbs.iter().enumerate() {
        let mut c = cluster.connect("many_agent", db);
        for k in 0..3 {
            let rid = format!("seq{d}-{k}");
            c.batch_execute(&format!("SELECT {k} /* request_id='{rid}' */"))
                .unwrap_or_else(|e| panic!("{db}, used alone: {}", describe(&e)));
        }
    }
    for (d, db) in dbs.iter().enumerate() {
        let mut c = cluster.connect("postgres", db);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM agent_guard.audit_log WHERE request_id LIKE $1",
                    &[&format!("seq{d}-%")],
                )
                .unwrap()
                .get(0);
            if n == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{db}: {n} of 3 reads in the trail"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let mut c = cluster.connect("postgres", &dbs[0]);
    let st = stats(&mut c);
    assert_eq!(st["totals"]["dropped"].as_u64(), Some(0), "{st}");
    assert_eq!(
        st["totals"]["refused"].as_u64(),
        Some(total_refused as u64),
        "every refusal is counted: {st}"
    );
    assert!(
        st["writers_running"].as_u64().unwrap_or(99) <= 4,
        "at most half of max_worker_processes are writers: {st}"
    );

    // the counters outlive the writers
    let written_before = st["totals"]["written"].as_u64().unwrap();
    assert!(written_before >= total_ok as u64, "{st}");
    let mine_before = st["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["this_database"] == Value::Bool(true))
        .map(|d| d["written"].as_u64().unwrap_or(0));
    pg.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'agent_guard audit writer'",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'agent_guard audit writer'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "writers did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = stats(&mut c);
    assert_eq!(
        st["totals"]["written"].as_u64(),
        Some(written_before),
        "{st}"
    );
    let mine_after = st["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["this_database"] == Value::Bool(true))
        .map(|d| d["written"].as_u64().unwrap_or(0));
    if mine_before.is_some() {
        assert_eq!(mine_after, mine_before, "{st}");
    }
}
