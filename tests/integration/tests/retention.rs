//! Retention (issue 14.6b): `agent_guard.audit_log` is partitioned by ranges
//! of ids, one partition per period (`agent_guard.audit_partition_span`,
//! here 2 s instead of a day), which the audit writer creates ahead of
//! time; `agent_guard.apply_retention()` drops the partitions whose rows are
//! all older than `agent_guard.audit_retention`, leaving a purge anchor
//! that verify_audit() accepts and a `PURGE AUDIT` row in the chain naming
//! it. A superuser's DROP or TRUNCATE of a partition that holds rows is
//! refused (as a DROP of audit_log), a DETACH is exposed by verify_audit().
//!
//! With `agent_guard.audit_retention_auto` (the default) the writer applies
//! the retention itself: a short-lived worker drops what expired.
//!
//! A cluster of its own: the settings are server-wide (PGC_SIGHUP).

use agent_guard_integration::cluster::Cluster;
use agent_guard_integration::*;
use std::time::{Duration, Instant};

const SPAN_S: u64 = 2;
const RETENTION_S: u64 = 3;

/// Run `n` audited statements and wait until the writer has written them.
fn statements(c: &mut Client, n: i64) {
    let before: i64 = c
        .query_one("SELECT count(*) FROM agent_guard.audit_log", &[])
        .unwrap()
        .get(0);
    for i in 0..n {
        c.batch_execute(&format!("SELECT {i}")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: i64 = c
            .query_one("SELECT count(*) FROM agent_guard.audit_log", &[])
            .unwrap()
            .get(0);
        if rows >= before + n {
            return;
        }
        assert!(Instant::now() < deadline, "audit rows not written in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Partitions of audit_log holding rows: (name, rows, max id), in id order.
fn partitions_with_rows(c: &mut Client) -> Vec<(String, i64, i64)> {
    c.query(
        "SELECT c.relname::text, count(*), max(a.id)
         FROM agent_guard.audit_log a JOIN pg_class c ON c.oid = a.tableoid
         GROUP BY c.relname ORDER BY max(a.id)",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The trail's own PURGE AUDIT rows of retention runs.
fn retention_purge_rows(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM agent_guard.audit_log
         WHERE command = 'PURGE AUDIT' AND statement_text LIKE 'agent_guard.apply_retention() dropped %'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn intact(c: &mut Client) -> (bool, Option<String>) {
    let r = c
        .query_one(
            "SELECT intact, problem FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn refused(c: &mut Client, sql: &str) -> String {
    let e = c
        .batch_execute(sql)
        .err()
        .unwrap_or_else(|| panic!("{sql} was not refused"));
    assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e));
    describe(&e)
}

#[test]
fn expired_partitions_are_dropped_with_an_anchor_and_other_drops_are_refused() {
    let span = format!("agent_guard.audit_partition_span = '{SPAN_S}s'");
    // apply_retention() itself here; the writer's own retention below
    let mut cluster = Cluster::init(
        "retention",
        &[&span, "agent_guard.audit_retention_auto = off"],
    );
    cluster.start();
    let mut c = cluster.connect("postgres", "postgres");
    c.batch_execute("CREATE EXTENSION agent_guard; SET agent_guard.audit_non_agents = 'all'")
        .unwrap();

    // the settings are the server's: no session changes them
    let e = c
        .batch_execute("SET agent_guard.audit_retention = '1s'")
        .expect_err("SET of a PGC_SIGHUP setting");
    assert_eq!(sqlstate(&e), "55P02", "{}", describe(&e));

    // rows over several periods: each period's rows in a partition of its own
    statements(&mut c, 5);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(SPAN_S * 1000 + 200));
        statements(&mut c, 5);
    }
    let parts = partitions_with_rows(&mut c);
    if parts.len() < 3 {
        let all = rows_text_ok(
            &mut c,
            "SELECT relname, lo, hi, starts FROM agent_guard._audit_partitions()",
        );
        let span = rows_text_ok(&mut c, "SHOW agent_guard.audit_partition_span");
        let log = cluster.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "rows of several periods, in partitions of their own: {parts:?}\npartitions: {all}\nspan: {span}\nlog: {tail:#?}"
        );
    }
    assert!(
        parts.iter().all(|p| p.0.starts_with("audit_log_2")),
        "partitions named by their start: {parts:?}"
    );
    assert_eq!(intact(&mut c), (true, None));
    // the next period's partition exists before its first row
    let ahead: i64 = c
        .query_one(
            "SELECT count(*) FROM agent_guard._audit_partitions() p
             WHERE p.lo > (SELECT max(id) FROM agent_guard.audit_log)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ahead >= 1, "a partition ahead of the newest row");
    // an anchor kept by an external system before the retention
    let (anchor_id, anchor_hash): (i64, String) = {
        let r = c
            .query_one("SELECT id, hash FROM agent_guard.audit_anchor()", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };

    // without a retention nothing goes
    let n: i64 = c
        .query_one("SELECT agent_guard.apply_retention()", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // a superuser's own drop, truncate or delete of a partition with rows is
    // refused (a session whose statements are not audited: what it tries
    // adds no rows)
    let mut su = cluster.connect("postgres", "postgres");
    su.batch_execute("SET agent_guard.audit_non_agents = 'none'")
        .unwrap();
    let c = &mut su;
    let oldest = parts[0].0.clone();
    let why = refused(c, &format!("DROP TABLE agent_guard.{oldest}"));
    assert!(why.contains("confirm_drop_trail"), "{why}");
    refused(c, &format!("TRUNCATE agent_guard.{oldest}"));
    refused(c, &format!("DELETE FROM agent_guard.{oldest}"));
    refused(c, "TRUNCATE agent_guard.audit_log");
    // a detached partition is missing from the chain: verify_audit() says so
    c.batch_execute(&format!(
        "BEGIN; ALTER TABLE agent_guard.audit_log DETACH PARTITION agent_guard.{oldest}"
    ))
    .unwrap();
    let (ok, problem) = intact(c);
    assert!(!ok, "verify_audit() exposes the detached partition");
    c.batch_execute("ROLLBACK").unwrap();
    eprintln!("detach exposed: {problem:?}");
    assert_eq!(intact(c), (true, None));
    let mut c = cluster.connect("postgres", "postgres");
    c.batch_execute("SET agent_guard.audit_non_agents = 'all'")
        .unwrap();

    // the retention, from postgresql.conf (ALTER SYSTEM and a reload)
    c.batch_execute(&format!(
        "ALTER SYSTEM SET agent_guard.audit_retention = '{RETENTION_S}s'"
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis((RETENTION_S + SPAN_S) * 1000 + 500));
    statements(&mut c, 3);
    let (total_before, old_rows): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE id <= $1) FROM agent_guard.audit_log",
                &[&parts[0].2],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(old_rows > 0);
    // a long read of the trail (pg_dump, a large verify_audit()) holds it:
    // retention is postponed rather than queue an exclusive lock behind it,
    // which the writer would queue behind in turn
    let mut reader = cluster.connect("postgres", "postgres");
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM agent_guard.audit_log")
        .unwrap();
    let t = Instant::now();
    let postponed: i64 = c
        .query_one("SELECT agent_guard.apply_retention()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        postponed, 0,
        "nothing dropped while a reader holds the trail"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "postponed at once: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    statements(&mut c, 3);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the writer goes on meanwhile: {:?}",
        t.elapsed()
    );
    reader.batch_execute("COMMIT").unwrap();
    let t = Instant::now();
    let applied_at: std::time::SystemTime =
        c.query_one("SELECT clock_timestamp()", &[]).unwrap().get(0);
    let dropped: i64 = c
        .query_one("SELECT agent_guard.apply_retention()", &[])
        .unwrap()
        .get(0);
    // the writer does not wait for the retention's locks, nor it for the writer
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "apply_retention() took {:?}",
        t.elapsed()
    );
    assert!(dropped >= old_rows, "dropped {dropped} rows");
    let r = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE id <= $1),
                    count(*) FILTER (WHERE started_at < $4::timestamptz - make_interval(secs => $2::float8 + $3::float8 + 1))
             FROM agent_guard.audit_log",
            &[&parts[0].2, &(RETENTION_S as f64), &(SPAN_S as f64), &applied_at],
        )
        .unwrap();
    let (total_after, old_after, too_old): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(old_after, 0, "the oldest period's rows are gone");
    if too_old != 0 {
        let detail = rows_text_ok(
            &mut c,
            "SELECT p.relname, p.lo, p.starts, count(a.id), min(a.started_at), max(a.started_at), now()
             FROM agent_guard._audit_partitions() p LEFT JOIN agent_guard.audit_log a ON a.tableoid = p.relid
             GROUP BY 1, 2, 3 ORDER BY 2",
        );
        let purges = rows_text_ok(&mut c, "SELECT * FROM agent_guard.audit_purges");
        panic!("{too_old} rows older than the retention plus one period are left:\n{detail}\npurges: {purges}\nbefore: {parts:?}");
    }
    assert!(total_after >= total_before - dropped);
    let gone: bool = c
        .query_one(
            "SELECT to_regclass($1) IS NULL",
            &[&format!("agent_guard.{oldest}")],
        )
        .unwrap()
        .get(0);
    assert!(gone, "the partition itself was dropped");
    // the anchor, and the trail's own row naming it
    let (rows_purged, anchor): (i64, String) = {
        let r = c
            .query_one(
                "SELECT rows_purged, anchor_hash FROM agent_guard.audit_purges ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(rows_purged, dropped);
    // (the stored text may be redacted where the hex anchor reads as a card
    // number; verify_audit() below checks that the row names this anchor)
    let named = retention_purge_rows(&mut c);
    assert_eq!(named, 1, "the retention is a PURGE AUDIT row of the chain");
    assert_eq!(anchor.len(), 64, "the anchor is a hash: {anchor}");
    assert_eq!(intact(&mut c), (true, None), "what remains verifies");
    let (holds, note): (bool, Option<String>) = {
        let r = c
            .query_one(
                "SELECT holds, problem FROM agent_guard.verify_audit_anchor($1, $2)",
                &[&anchor_id, &anchor_hash],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        holds,
        "an anchor kept before the retention still holds: {note:?}"
    );
    // the trail goes on
    statements(&mut c, 3);
    assert_eq!(intact(&mut c), (true, None));
}

#[test]
fn the_writer_applies_the_retention_itself() {
    let mut cluster = Cluster::init(
        "retention-auto",
        &[
            &format!("agent_guard.audit_partition_span = '{SPAN_S}s'"),
            &format!("agent_guard.audit_retention = '{RETENTION_S}s'"),
        ],
    );
    cluster.start();
    let mut c = cluster.connect("postgres", "postgres");
    c.batch_execute("CREATE EXTENSION agent_guard; SET agent_guard.audit_non_agents = 'all'")
        .unwrap();
    statements(&mut c, 5);
    let first: i64 = c
        .query_one("SELECT min(id) FROM agent_guard.audit_log", &[])
        .unwrap()
        .get(0);
    // keep the trail growing (the writer runs) until the first rows are gone
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        statements(&mut c, 2);
        let gone: bool = c
            .query_one(
                "SELECT NOT EXISTS (SELECT FROM agent_guard.audit_log WHERE id = $1)",
                &[&first],
            )
            .unwrap()
            .get(0);
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer's retention dropped nothing in 40 s: {}",
            rows_text_ok(
                &mut c,
                "SELECT relname, lo, hi, starts FROM agent_guard._audit_partitions()"
            )
        );
    }
    let named = retention_purge_rows(&mut c);
    assert!(named >= 1, "each drop is a PURGE AUDIT row of the chain");
    let anchors: i64 = c
        .query_one("SELECT count(*) FROM agent_guard.audit_purges", &[])
        .unwrap()
        .get(0);
    assert!(anchors >= 1, "each drop leaves an anchor");
    assert_eq!(intact(&mut c), (true, None), "what remains verifies");
    let too_old: i64 = c
        .query_one(
            "SELECT count(*) FROM agent_guard.audit_log
             WHERE started_at < now() - make_interval(secs => $1::float8)",
            &[&((RETENTION_S + 2 * SPAN_S + 60) as f64)],
        )
        .unwrap()
        .get(0);
    assert_eq!(too_old, 0);
    assert!(
        cluster
            .log()
            .contains("agent_guard: retention worker dropped"),
        "the retention worker logs what it dropped"
    );
}
