//! The audit trail with real sessions: refused, failed, rolled-back and
//! nested statements all land in agent_guard.audit_log, written outside the
//! user's transaction; the chain verifies and exposes tampering; regulated
//! literals stay out of the trail and the server log.

use agent_guard_integration::*;
use postgres::Client;
use std::time::{Duration, Instant};

struct Agent {
    _sponsor: String,
    agent: String,
    table: String,
}

fn setup(db_client: &mut Client, prefix: &str) -> Agent {
    let sponsor = create_login_role(&format!("{prefix}_sponsor"), "");
    let agent = create_login_role(&format!("{prefix}_agent"), "");
    let table = unique_name(&format!("{prefix}_t"));
    db_client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, ssn text); INSERT INTO {table} VALUES (1, '123-45-6789'), (2, '987-65-4329');
             SECURITY LABEL FOR agent_guard ON COLUMN {table}.ssn IS 'SENSITIVE';
             GRANT SELECT, DELETE ON {table} TO {agent};
             SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
        ))
        .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    Agent {
        _sponsor: sponsor,
        agent,
        table,
    }
}

/// Audit rows of one backend, once `expected` of them are written with a transaction outcome.
fn rows_of(admin: &mut Client, pid: i32, expected: usize) -> Vec<postgres::Row> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = admin
            .query(
                "SELECT nesting_level, command, risk, decision, statement_text, parameters, rows_affected,
                        outcome, sqlstate, transaction_outcome, request_id, parent_statement, statement_no
                 FROM agent_guard.audit_log WHERE backend_pid = $1 ORDER BY id",
                &[&pid],
            )
            .unwrap();
        let done = rows
            .iter()
            .filter(|r| r.get::<_, Option<String>>(9).is_some())
            .count();
        if rows.len() >= expected && done == rows.len() {
            return rows;
        }
        if Instant::now() > deadline {
            panic!(
                "expected {expected} finished audit rows for pid {pid}, have {} ({done} finished)",
                rows.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(rows: &'a [postgres::Row], text: &str) -> &'a postgres::Row {
    rows.iter()
        .find(|r| r.get::<_, Option<String>>(4).as_deref() == Some(text))
        .unwrap_or_else(|| {
            let texts: Vec<Option<String>> = rows.iter().map(|r| r.get(4)).collect();
            panic!("no audit row with text {text:?}; have {texts:?}")
        })
}

fn s(r: &postgres::Row, i: usize) -> Option<String> {
    r.get(i)
}

#[test]
fn every_kind_of_statement_is_recorded_with_its_outcome() {
    let mut admin = admin();
    let a = setup(&mut admin, "trail");
    let mut c = connect(&a.agent);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let t = &a.table;

    c.batch_execute(&format!("SELECT count(*) FROM {t}"))
        .unwrap();
    assert!(
        c.batch_execute(&format!("DELETE FROM {t}")).is_err(),
        "refused"
    );
    assert!(c.batch_execute("SELECT 1/0").is_err(), "division by zero");
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("SELECT 2").unwrap();
    c.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("SAVEPOINT a").unwrap();
    c.batch_execute("SELECT 3").unwrap();
    c.batch_execute("ROLLBACK TO a").unwrap();
    c.batch_execute("SELECT 4").unwrap();
    c.batch_execute("COMMIT").unwrap();
    c.batch_execute(&format!("DO $$ BEGIN PERFORM count(*) FROM {t}; END $$"))
        .unwrap();
    // extended protocol: prepared text plus parameters (the SSN is redacted)
    let n: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {t} WHERE ssn = $1"),
            &[&"123-45-6789"],
        )
        .unwrap()
        .get(0);
    // the column is masked for agents: a predicate on the real SSN matches nothing
    assert_eq!(n, 0);
    c.batch_execute("SELECT 5 /* request_id='ci-4711' */")
        .unwrap();
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("SET LOCAL agent_guard.request_id = 'job-42'")
        .unwrap();
    c.batch_execute("SELECT 6").unwrap();
    c.batch_execute("COMMIT").unwrap();
    c.batch_execute(&format!("SELECT id FROM {t} WHERE ssn = '987-65-4329'"))
        .unwrap();

    // every statement above, the nested one of the DO block and pg_backend_pid() included
    let rows = rows_of(&mut admin, pid, 22);

    let read = find(&rows, &format!("SELECT count(*) FROM {t}"));
    assert_eq!(
        (
            s(read, 3).as_deref(),
            s(read, 7).as_deref(),
            s(read, 9).as_deref()
        ),
        (Some("allowed"), Some("ok"), Some("committed"))
    );
    assert_eq!(read.get::<_, Option<i64>>(6), Some(1));

    let refused = find(&rows, &format!("DELETE FROM {t}"));
    assert_eq!(s(refused, 2).as_deref(), Some("write"));
    assert_eq!(s(refused, 3).as_deref(), Some("denied"));
    assert_eq!(s(refused, 8).as_deref(), Some("42501"));

    let failed = rows
        .iter()
        .find(|r| s(r, 4).is_some_and(|x| x.contains("1/0")))
        .expect("division by zero recorded");
    assert_eq!(s(failed, 7).as_deref(), Some("error"));
    assert_eq!(s(failed, 8).as_deref(), Some("22012"));
    assert_eq!(s(failed, 9).as_deref(), Some("rolled back"));

    assert_eq!(
        s(find(&rows, "SELECT 2"), 9).as_deref(),
        Some("rolled back")
    );
    assert_eq!(
        s(find(&rows, "SELECT 3"), 9).as_deref(),
        Some("rolled back to savepoint")
    );
    assert_eq!(s(find(&rows, "SELECT 4"), 9).as_deref(), Some("committed"));

    let do_row = rows
        .iter()
        .find(|r| s(r, 1).as_deref() == Some("DO"))
        .expect("DO recorded");
    let nested = rows
        .iter()
        .find(|r| {
            r.get::<_, i32>(0) == 1
                && s(r, 4).is_some_and(|x| x.contains("PERFORM") || x.contains("count(*)"))
        })
        .expect("the DO block's statement is recorded one level down");
    assert_eq!(
        nested.get::<_, Option<i64>>(11),
        Some(do_row.get::<_, i64>(12)),
        "parent statement"
    );

    let prepared = find(&rows, &format!("SELECT count(*) FROM {t} WHERE ssn = $1"));
    assert_eq!(
        prepared.get::<_, Option<Vec<Option<String>>>>(5),
        Some(vec![Some("<redacted>".to_string())])
    );
    assert_eq!(s(prepared, 2).as_deref(), Some("sensitive_read"));

    assert_eq!(
        s(find(&rows, "SELECT 5 /* request_id='ci-4711' */"), 10).as_deref(),
        Some("ci-4711")
    );
    assert_eq!(s(find(&rows, "SELECT 6"), 10).as_deref(), Some("job-42"));

    // the SSN literal of the WHERE clause never reaches the trail
    find(
        &rows,
        &format!("SELECT id FROM {t} WHERE ssn = '<redacted>'"),
    );
    let leaked: i64 = admin
        .query_one("SELECT count(*) FROM agent_guard.audit_log WHERE statement_text LIKE '%987-65-4329%' OR statement_text LIKE '%123-45-6789%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);

    let stats: String = admin
        .query_one("SELECT agent_guard.audit_stats()::text", &[])
        .unwrap()
        .get(0);
    assert!(stats.contains("\"dropped\": 0"), "{stats}");
    drop(c);
}

#[test]
fn regulated_literals_stay_out_of_the_server_log() {
    let mut admin = admin();
    let a = setup(&mut admin, "logredact");
    admin
        .batch_execute(&format!("ALTER ROLE {} SET log_statement = 'all'", a.agent))
        .unwrap();
    let from = server_log_len();
    let mut c = connect(&a.agent);
    c.batch_execute(&format!(
        "SELECT id FROM {} WHERE ssn = '555-12-3456'",
        a.table
    ))
    .unwrap();
    assert!(c.batch_execute("SELECT '555-12-3456'::int").is_err());
    assert!(c.batch_execute("SELECT 1/0, '4111111111111111'").is_err());
    drop(c);
    assert!(
        wait_for_log(from, "division by zero", Duration::from_secs(10)),
        "the error is logged"
    );
    let log = server_log_since(from);
    assert!(
        !log.contains("555-12-3456"),
        "SSN leaked into the server log:\n{log}"
    );
    assert!(
        !log.contains("4111111111111111"),
        "card number leaked into the server log:\n{log}"
    );
    assert!(
        log.contains("<redacted>"),
        "redacted statements are still logged:\n{log}"
    );
}

#[test]
fn nested_trigger_statements_of_audited_humans() {
    let mut admin = admin();
    let t = unique_name("trg_t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int); CREATE TABLE {t}_log (id int);
             CREATE FUNCTION {t}_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO {t}_log VALUES (NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER {t}_trg AFTER INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_f();"
        ))
        .unwrap();
    let mut h = connect(&superuser());
    let pid: i32 = h.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    h.batch_execute("SET agent_guard.audit_non_agents = 'all'")
        .unwrap();
    h.batch_execute(&format!("INSERT INTO {t} VALUES (7)"))
        .unwrap();
    let rows = rows_of(&mut admin, pid, 2);
    let top = find(&rows, &format!("INSERT INTO {t} VALUES (7)"));
    assert_eq!(top.get::<_, i32>(0), 0);
    let nested = rows
        .iter()
        .find(|r| s(r, 4).is_some_and(|x| x.contains(&format!("INSERT INTO {t}_log"))))
        .expect("the trigger's INSERT is recorded");
    assert_eq!(nested.get::<_, i32>(0), 1, "one level down");
    assert_eq!(s(nested, 2).as_deref(), Some("write"));
}

#[test]
fn chain_verifies_and_exposes_tampering() {
    let db = unique_name("tamper_db");
    let mut pg = connect_db(&superuser(), "postgres");
    pg.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut su = connect_db(&superuser(), &db);
    su.batch_execute("CREATE EXTENSION agent_guard").unwrap();
    let a = setup(&mut su, "tamper");
    let mut c = connect_db(&a.agent, &db);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    for i in 0..5 {
        c.batch_execute(&format!("SELECT {i}")).unwrap();
    }
    drop(c);
    let rows = rows_of(&mut su, pid, 6);
    assert!(rows.len() >= 6);
    let intact: bool = su
        .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
        .unwrap()
        .get(0);
    assert!(intact, "a fresh trail verifies");

    // the trail is append-only, superusers included
    for sql in [
        "UPDATE agent_guard.audit_log SET statement_text = 'x'",
        "DELETE FROM agent_guard.audit_log",
        "TRUNCATE agent_guard.audit_log",
    ] {
        let e = su.batch_execute(sql).expect_err(sql);
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("42501"),
            "{sql}: {}",
            describe(&e)
        );
    }

    // a superuser who bypasses the trigger is caught by the chain
    let victim: i64 = su
        .query_one(
            "SELECT id FROM agent_guard.audit_log WHERE statement_text = 'SELECT 2'",
            &[],
        )
        .unwrap()
        .get(0);
    su.batch_execute(&format!(
        "ALTER TABLE agent_guard.audit_log DISABLE TRIGGER audit_log_append_only;
         UPDATE agent_guard.audit_log SET statement_text = 'SELECT 42' WHERE id = {victim};
         ALTER TABLE agent_guard.audit_log ENABLE TRIGGER audit_log_append_only;"
    ))
    .unwrap();
    let r = su
        .query_one(
            "SELECT intact, first_broken_id FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    assert!(!r.get::<_, bool>(0), "tampering detected");
    assert_eq!(
        r.get::<_, Option<i64>>(1),
        Some(victim),
        "at the tampered row"
    );

    drop(su);
    pg.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}

#[test]
fn purge_keeps_the_rest_verifiable() {
    let db = unique_name("purge_db");
    let mut pg = connect_db(&superuser(), "postgres");
    pg.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut su = connect_db(&superuser(), &db);
    su.batch_execute("CREATE EXTENSION agent_guard").unwrap();
    let a = setup(&mut su, "purge");
    let mut c = connect_db(&a.agent, &db);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    c.batch_execute("SELECT 1").unwrap();
    let rows = rows_of(&mut su, pid, 1);
    assert!(!rows.is_empty());
    std::thread::sleep(Duration::from_millis(50));
    let cut: String = su.query_one("SELECT now()::text", &[]).unwrap().get(0);
    c.batch_execute("SELECT 2").unwrap();
    c.batch_execute("SELECT 3").unwrap();
    drop(c);
    rows_of(&mut su, pid, 3);
    let purged: i64 = su
        .query_one(
            &format!("SELECT agent_guard.purge_audit('{cut}'::timestamptz)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(purged >= 1);
    let intact: bool = su
        .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
        .unwrap()
        .get(0);
    assert!(intact, "the remaining chain verifies after a purge");
    // the purge is in the trail
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM agent_guard.audit_log WHERE command = 'PURGE AUDIT'",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "purge not recorded");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(su);
    pg.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}

/// The writer inserts rows into the heap and maintains the indexes itself:
/// each index must find exactly the rows a sequential scan finds, including
/// the partial indexes over rows still waiting for their outcome (a
/// statement still running, a transaction still open).
#[test]
fn every_index_finds_the_rows_the_writer_inserted() {
    let mut admin = admin();
    let a = setup(&mut admin, "idx");
    let agent = &a.agent;
    let t = &a.table;
    // every statement of this agent is recorded when it starts, its end later
    admin
        .batch_execute(&format!(
            "ALTER ROLE {agent} SET agent_guard.audit_durability = 'sync'"
        ))
        .unwrap();
    let mut c = connect(agent);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    for i in 0..20 {
        c.batch_execute(&format!("SELECT {i} /* request_id='idx-{pid}' */"))
            .unwrap();
    }
    assert!(c.batch_execute(&format!("DELETE FROM {t}")).is_err());
    // a transaction left open: its statements' transaction outcome is pending
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("SELECT 'open'").unwrap();
    // a statement still running: its outcome is pending
    let sleeper_agent = agent.clone();
    let sleeper = std::thread::spawn(move || {
        let mut s = connect(&sleeper_agent);
        s.batch_execute("SELECT pg_sleep(4)").unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleeper_session: String = loop {
        let found = admin
            .query_opt(
                "SELECT session_key FROM agent_guard.audit_log WHERE agent = $1 AND outcome IS NULL \
                 AND statement_text = 'SELECT pg_sleep(4)'",
                &[agent],
            )
            .unwrap();
        if let Some(r) = found {
            break r.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the running statement was not recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let session: String = admin
        .query_one(
            "SELECT session_key FROM agent_guard.audit_log WHERE backend_pid = $1 LIMIT 1",
            &[&pid],
        )
        .unwrap()
        .get(0);

    let count = |admin: &mut Client, index_scan: bool, predicate: &str| -> (i64, String) {
        let settings = if index_scan {
            "SET enable_seqscan = off; SET enable_bitmapscan = off"
        } else {
            "SET enable_bitmapscan = off; SET enable_indexscan = off; SET enable_indexonlyscan = off"
        };
        admin.batch_execute(settings).unwrap();
        let sql = format!("SELECT count(*) FROM agent_guard.audit_log WHERE {predicate}");
        let plan: Vec<String> = admin
            .query(&format!("EXPLAIN {sql}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let n: i64 = admin.query_one(&sql, &[]).unwrap().get(0);
        admin.batch_execute("RESET ALL").unwrap();
        (n, plan.join("\n"))
    };
    let cases = [
        // pg_backend_pid(), 20 reads, the refusal, BEGIN, SELECT 'open', the sleeper
        ("audit_log_agent_time", format!("agent = '{agent}'"), 25),
        ("audit_log_request_id", format!("request_id = 'idx-{pid}'"), 20),
        (
            "audit_log_pkey",
            format!(
                "id >= (SELECT min(id) FROM agent_guard.audit_log WHERE backend_pid = {pid}) AND backend_pid = {pid}"
            ),
            24,
        ),
        (
            "audit_log_running",
            format!("outcome IS NULL AND session_key = '{sleeper_session}'"),
            1,
        ),
        (
            "audit_log_open_xact",
            format!("transaction_outcome IS NULL AND session_key = '{session}'"),
            2, // BEGIN and SELECT 'open'
        ),
    ];
    for (index, predicate, expected) in cases {
        let (by_index, plan) = count(&mut admin, true, &predicate);
        // each partition of audit_log has the index as <partition>_<suffix>
        // (issue 14.6b: the parent has none of its own)
        let suffix = index.trim_start_matches("audit_log");
        assert!(
            plan.lines().any(|l| l.contains(" using audit_log_")
                && l.contains(&format!("{suffix} on audit_log_"))),
            "{index} not used for {predicate}:\n{plan}"
        );
        let (by_scan, plan) = count(&mut admin, false, &predicate);
        assert!(plan.contains("Seq Scan"), "{plan}");
        assert_eq!(
            (by_index, by_scan),
            (expected, expected),
            "{index} and a sequential scan for {predicate}"
        );
    }
    c.batch_execute("ROLLBACK").unwrap();
    sleeper.join().unwrap();
    admin
        .batch_execute(&format!(
            "ALTER ROLE {agent} RESET agent_guard.audit_durability"
        ))
        .unwrap();
}

/// A role renamed while an agent session is open is recorded by its new name
/// (the backend's cache of role names follows pg_authid).
#[test]
fn renamed_roles_are_recorded_by_their_new_name() {
    let mut admin = admin();
    let a = setup(&mut admin, "rename");
    let mut c = connect(&a.agent);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    c.batch_execute("SELECT 'before the rename'").unwrap();
    let renamed = format!("{}_renamed", a.agent);
    admin
        .batch_execute(&format!("ALTER ROLE {} RENAME TO {renamed}", a.agent))
        .unwrap();
    c.batch_execute("SELECT 'after the rename'").unwrap();
    // the session's own request text is not the key here: look at the names
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let rows = admin
            .query(
                "SELECT a.statement_text, s.session_user_name, a.current_user_name
                 FROM agent_guard.audit_log a JOIN agent_guard.audit_sessions s ON s.id = a.session_id
                 WHERE a.backend_pid = $1 AND a.statement_text LIKE 'SELECT ''%rename''' ORDER BY a.id",
                &[&pid],
            )
            .unwrap();
        if rows.len() >= 2 || Instant::now() > deadline {
            break rows
                .iter()
                .map(|r| (s(r, 0), s(r, 1), s(r, 2)))
                .collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    admin
        .batch_execute(&format!("ALTER ROLE {renamed} RENAME TO {}", a.agent))
        .unwrap();
    let before = Some("SELECT 'before the rename'".to_string());
    let after = Some("SELECT 'after the rename'".to_string());
    assert_eq!(
        names,
        vec![
            (before, Some(a.agent.clone()), Some(a.agent.clone())),
            (after, Some(renamed.clone()), Some(renamed)),
        ]
    );
}
