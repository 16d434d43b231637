//! A hot standby with `agent_guard.standby_audit = forward`: an agent's read
//! there is judged and masked as on the primary, and its record is committed
//! in the primary's `agent_guard.audit_forwarded` (a hash chain per source)
//! before it runs — and replayed by the standby. Writes stay refused. If the
//! primary cannot take the record (down, or the forwarding role lacks
//! agent_guard_forwarder) the statement is refused with 42501 and a HINT.
//! The chain continues across a standby restart; a promotion neither loses
//! nor duplicates a record; a resent record is taken once.

use agent_guard_integration::cluster::Cluster;
use agent_guard_integration::*;
use std::time::{Duration, Instant};

fn count(c: &mut Client, sql: &str, source: &str) -> i64 {
    c.query_one(sql, &[&source]).unwrap().get(0)
}

fn verify(c: &mut Client, source: &str) -> (bool, i64, Option<String>) {
    let r = c
        .query_one(
            "SELECT intact, rows_checked, problem FROM agent_guard.verify_forwarded($1)",
            &[&source],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Set the standby's forward_conninfo (None: back to the configuration
/// file's, `expect`) and wait until new sessions see it.
fn set_conninfo(standby: &Cluster, db: &str, value: Option<&str>, expect: &str) {
    let mut s = standby.connect(&superuser(), db);
    match value {
        Some(v) => s
            .batch_execute(&format!(
                "ALTER SYSTEM SET agent_guard.forward_conninfo = '{v}'"
            ))
            .unwrap(),
        None => s
            .batch_execute("ALTER SYSTEM RESET agent_guard.forward_conninfo")
            .unwrap(),
    }
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut n = standby.connect(&superuser(), db);
        let now: String = n
            .query_one("SHOW agent_guard.forward_conninfo", &[])
            .unwrap()
            .get(0);
        if now == expect {
            return;
        }
        assert!(Instant::now() < deadline, "forward_conninfo is still {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agents_read_on_a_forwarding_standby_with_their_records_in_the_primarys_trail() {
    let db = database();
    let mut p = admin();
    let sponsor = create_login_role("sf_sponsor", "");
    let agent = create_login_role("sf_agent", "");
    let human = create_login_role("sf_human", "");
    let fwd = create_login_role("sf_fwd", "");
    let nofwd = create_login_role("sf_nofwd", "");
    let table = unique_name("sf_t");
    let source = unique_name("replica");
    p.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, ssn text);
         INSERT INTO {table} VALUES (1, '214-13-5506');
         SECURITY LABEL FOR agent_guard ON COLUMN {table}.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         GRANT SELECT, DELETE ON {table} TO {agent}, {human};
         GRANT agent_guard_forwarder TO {fwd};
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap();
    let good = format!("host={} port={} user={fwd}", host(), port());

    let mut standby = Cluster::standby_of_test_cluster(
        "standby-fwd",
        &[
            "hot_standby = on",
            "agent_guard.standby_audit = forward",
            &format!("agent_guard.forward_source_name = '{source}'"),
            &format!("agent_guard.forward_conninfo = '{good}'"),
        ],
    );
    standby.start();
    let mut s_admin = standby.connect(&superuser(), &db);
    wait_replay(&mut p, &mut s_admin);
    assert!(s_admin
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0));

    // the agent's read: masked as on the primary, recorded there first
    let mut a = standby.connect(&agent, &db);
    let ssn: String = a
        .query_one(
            &format!("SELECT ssn FROM {table} WHERE id = 1 /* request_id='sf-read-1' */"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-5506");
    // (the statement's end and its transaction's travel at commit)
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = p
            .query(
                "SELECT agent, sponsor, login_role, decision, command, risk, outcome, transaction_outcome
                 FROM agent_guard.audit_forwarded WHERE source = $1 AND request_id = 'sf-read-1'",
                &[&source],
            )
            .unwrap();
        assert_eq!(rows.len(), 1, "one record of the read on the primary");
        let r = &rows[0];
        if r.get::<_, Option<String>>(7).is_some() || Instant::now() > deadline {
            break rows.into_iter().next().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some(agent.as_str())
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(sponsor.as_str())
    );
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some(agent.as_str())
    );
    assert_eq!(row.get::<_, String>(3), "allowed");
    assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some("SELECT"));
    assert_eq!(
        row.get::<_, Option<String>>(5).as_deref(),
        Some("sensitive_read")
    );
    assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some("ok"));
    assert_eq!(
        row.get::<_, Option<String>>(7).as_deref(),
        Some("committed")
    );
    // the standby replayed the record before the read ran
    assert_eq!(
        count(
            &mut s_admin,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1 AND request_id = 'sf-read-1'",
            &source
        ),
        1
    );
    // not in the primary's own chain, nor queued on the standby
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM agent_guard.audit_log WHERE request_id = 'sf-read-1' OR $1 = ''",
            &source
        ),
        0
    );
    let (intact, n, problem) = verify(&mut p, &source);
    assert!(intact, "{problem:?}");
    assert!(n >= 1);

    // the primary commits the record but the standby cannot confirm it in
    // time (its replay is paused): the read is refused, and the primary's
    // row gets that outcome with the next batch instead of staying open
    s_admin
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    refused_42501(
        &mut a,
        &format!("SELECT ssn FROM {table} WHERE id = 1 /* request_id='sf-unconfirmed' */"),
    );
    s_admin
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    a.batch_execute(&format!(
        "SELECT id FROM {table} /* request_id='sf-after' */"
    ))
    .unwrap_or_else(|e| panic!("the next read runs: {}", describe(&e)));
    let deadline = Instant::now() + Duration::from_secs(10);
    let unconfirmed = loop {
        let r = p
            .query(
                "SELECT outcome, sqlstate FROM agent_guard.audit_forwarded
                 WHERE source = $1 AND request_id = 'sf-unconfirmed'",
                &[&source],
            )
            .unwrap();
        let v: Vec<(Option<String>, Option<String>)> =
            r.iter().map(|r| (r.get(0), r.get(1))).collect();
        if v.iter().any(|x| x.0.is_some()) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        unconfirmed,
        vec![(Some("error".to_string()), Some("42501".to_string()))],
        "the refused read's record on the primary says it was refused"
    );

    // the primary does not take the statement's end and its transaction's
    // outcome at COMMIT (a WARNING says so); they go with the session's
    // last try when it ends, once the primary takes them again
    let mut a2 = standby.connect(&agent, &db);
    a2.batch_execute("BEGIN").unwrap();
    a2.batch_execute(&format!(
        "SELECT id FROM {table} /* request_id='sf-exit' */"
    ))
    .unwrap();
    p.batch_execute(&format!("REVOKE agent_guard_forwarder FROM {fwd}"))
        .unwrap();
    a2.batch_execute("COMMIT")
        .unwrap_or_else(|e| panic!("COMMIT is not refused: {}", describe(&e)));
    p.batch_execute(&format!("GRANT agent_guard_forwarder TO {fwd}"))
        .unwrap();
    drop(a2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let ended = loop {
        let r = p
            .query_one(
                "SELECT outcome, transaction_outcome FROM agent_guard.audit_forwarded
                 WHERE source = $1 AND request_id = 'sf-exit'",
                &[&source],
            )
            .unwrap();
        let v: (Option<String>, Option<String>) = (r.get(0), r.get(1));
        if v.1.is_some() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        ended,
        (Some("ok".to_string()), Some("committed".to_string())),
        "the end and outcome the primary did not take at COMMIT arrive when the session ends"
    );

    // writes stay refused, and the refusal is recorded on the primary
    let e = refused_42501(
        &mut a,
        &format!("DELETE FROM {table} /* request_id='sf-write' */"),
    );
    assert!(
        e.message().contains("a standby is read-only"),
        "{}",
        e.message()
    );
    assert!(
        e.hint()
            .unwrap_or("")
            .starts_with("Connect to the primary for writes"),
        "{:?}",
        e.hint()
    );
    let denied: (String, Option<String>) = {
        let r = p
            .query_one(
                "SELECT decision, outcome FROM agent_guard.audit_forwarded
                 WHERE source = $1 AND request_id = 'sf-write'",
                &[&source],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(denied, ("denied".to_string(), Some("denied".to_string())));
    // a human on the standby is not forwarded
    let mut h = standby.connect(&human, &db);
    let ssn: String = h
        .query_one(&format!("SELECT ssn FROM {table} WHERE id = 1"), &[])
        .unwrap()
        .get(0);
    assert_eq!(ssn, "214-13-5506");

    // the primary's side: only agent_guard_forwarder may call ingest; a resent
    // record is taken once; the trail is append-only
    let sysid: String = p
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .unwrap()
        .get(0);
    let (sk, n1): (String, i64) = {
        let r = p
            .query_one(
                "SELECT session_key, statement_no FROM agent_guard.audit_forwarded
                 WHERE source = $1 AND request_id = 'sf-read-1'",
                &[&source],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let resend = format!(
        r#"[{{"k":"stmt","sk":"{sk}","n":{n1},"x":0,"sx":1,"lvl":0,"ts":0,"pid":0,"obj":[],"dec":"allowed","rid":"sf-resent"}},
            {{"k":"end","sk":"{sk}","n":{n1},"ts":0,"rows":99,"out":"error"}}]"#
    );
    let before = count(
        &mut p,
        "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1",
        &source,
    );
    let mut f = connect(&fwd);
    let added: i64 = f
        .query_one(
            "SELECT agent_guard.ingest_forwarded($1, $2, $3::text::jsonb)",
            &[&source, &sysid, &resend],
        )
        .unwrap()
        .get(0);
    assert_eq!(added, 0, "a resent record is not taken again");
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1",
            &source
        ),
        before
    );
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1 AND rows_affected = 99",
            &source
        ),
        0,
        "an outcome is written once"
    );
    let e = f
        .query_one(
            "SELECT agent_guard.ingest_forwarded($1, '1', '[]'::jsonb)",
            &[&source],
        )
        .expect_err("another cluster's records");
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    // a standby cannot send what only purge_forwarded() writes
    let forged = r#"[{"k":"stmt","sk":"agent_guard-purge","n":1,"x":1,"lvl":0,"ts":0,"cmd":"SELECT","dec":"allowed","text":"x"}]"#;
    let e = f
        .query_one(
            "SELECT agent_guard.ingest_forwarded($1, $2, $3::text::jsonb)",
            &[&source, &sysid, &forged],
        )
        .expect_err("a forged purge row");
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    let mut nf = connect(&nofwd);
    let e = nf
        .query_one(
            "SELECT agent_guard.ingest_forwarded($1, $2, '[]'::jsonb)",
            &[&source, &sysid],
        )
        .expect_err("not a forwarder");
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    for sql in [
        "UPDATE agent_guard.audit_forwarded SET agent = 'someone else'".to_string(),
        "DELETE FROM agent_guard.audit_forwarded".to_string(),
        "TRUNCATE agent_guard.audit_forwarded".to_string(),
        "UPDATE agent_guard.forward_sources SET rows_received = 0".to_string(),
        "DELETE FROM agent_guard.forward_sources".to_string(),
    ] {
        refused_42501(&mut p, &sql);
    }
    let (intact, _, problem) = verify(&mut p, &source);
    assert!(intact, "{problem:?}");

    // the forwarding role lacks agent_guard_forwarder: refused, with a hint
    let bad = format!("host={} port={} user={nofwd}", host(), port());
    set_conninfo(&standby, &db, Some(&bad), &bad);
    let mut a2 = standby.connect(&agent, &db);
    let e = refused_42501(&mut a2, "SELECT 1 /* request_id='sf-no-rights' */");
    assert!(
        e.message()
            .contains("could not record it in the primary's audit trail"),
        "{}",
        e.message()
    );
    assert!(
        e.detail().unwrap_or("").contains("42501"),
        "{:?}",
        e.detail()
    );
    assert!(
        e.hint().unwrap_or("").contains("agent_guard_forwarder"),
        "{:?}",
        e.hint()
    );
    drop(a2);
    // the primary cannot be reached: refused
    let down = format!("host={} port=1 user={fwd} connect_timeout=2", host());
    set_conninfo(&standby, &db, Some(&down), &down);
    let mut a3 = standby.connect(&agent, &db);
    let e = refused_42501(
        &mut a3,
        &format!("SELECT id FROM {table} /* request_id='sf-down' */"),
    );
    assert!(
        e.message()
            .contains("could not record it in the primary's audit trail"),
        "{}",
        e.message()
    );
    assert!(
        e.hint()
            .unwrap_or("")
            .starts_with("Check that the primary is up"),
        "{:?}",
        e.hint()
    );
    // session housekeeping still works
    a3.batch_execute("SET agent_guard.request_id = 'x'; BEGIN; COMMIT")
        .unwrap();
    drop(a3);
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM agent_guard.audit_forwarded
             WHERE source = $1 AND request_id IN ('sf-no-rights', 'sf-down')",
            &source
        ),
        0
    );

    // a restarted standby continues its chain
    set_conninfo(&standby, &db, None, &good);
    drop(a);
    drop(h);
    drop(s_admin);
    standby.stop("fast");
    standby.start();
    let mut s_admin = standby.connect(&superuser(), &db);
    let mut a = standby.connect(&agent, &db);
    let ssn: String = a
        .query_one(
            &format!("SELECT ssn FROM {table} WHERE id = 1 /* request_id='sf-read-2' */"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-5506");
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1 AND request_id = 'sf-read-2'",
            &source
        ),
        1
    );
    let rows = count(
        &mut p,
        "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1",
        &source,
    );
    let (intact, n, problem) = verify(&mut p, &source);
    assert!(intact, "{problem:?}");
    assert_eq!(n, rows);

    // retention: purge_forwarded() removes a prefix of each source's chain
    // and records itself in it; the chain verifies from the anchor and the
    // standby's next records continue it; an anchor written by hand is exposed
    let removed: i64 = p
        .query_one("SELECT agent_guard.purge_forwarded(pg_catalog.now())", &[])
        .unwrap()
        .get(0);
    assert!(removed >= rows, "{removed} of {rows} rows removed");
    let purge_rows = count(
        &mut p,
        "SELECT count(*) FROM agent_guard.audit_forwarded
         WHERE source = $1 AND command = 'PURGE AUDIT'",
        &source,
    );
    assert_eq!(purge_rows, 1, "the purge is a row of the source's chain");
    let (intact, n, problem) = verify(&mut p, &source);
    assert!(intact && n == 1, "after the purge: {problem:?} ({n} rows)");
    a.batch_execute(&format!(
        "SELECT id FROM {table} /* request_id='sf-after-purge' */"
    ))
    .unwrap();
    let (intact, n, problem) = verify(&mut p, &source);
    assert!(
        intact && n == 2,
        "the chain continues after the purge: {problem:?} ({n} rows)"
    );
    let kept: String = p
        .query_one(
            "SELECT purge_anchor FROM agent_guard.forward_sources WHERE source = $1",
            &[&source],
        )
        .unwrap()
        .get(0);
    let forge = |p: &mut Client, anchor: &str| {
        p.batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE agent_guard.forward_sources SET purge_anchor = '{anchor}' WHERE source = '{source}';
             COMMIT"
        ))
        .unwrap();
    };
    forge(&mut p, &"ab".repeat(32));
    let (intact, _, problem) = verify(&mut p, &source);
    assert!(
        !intact
            && problem
                .as_deref()
                .unwrap_or("")
                .contains("named by no PURGE AUDIT row"),
        "a forged purge anchor is exposed: {problem:?}"
    );
    forge(&mut p, &kept);
    let (intact, _, problem) = verify(&mut p, &source);
    assert!(intact, "{problem:?}");
    // agents may not purge
    let e = refused_42501(
        &mut connect(&agent),
        "SELECT agent_guard.purge_forwarded(pg_catalog.now())",
    );
    drop(e);

    // promotion: every forwarded record is on the promoted server once; the
    // open session's next statements go to its own trail
    a.batch_execute(&format!(
        "SELECT id FROM {table} /* request_id='sf-read-3' */"
    ))
    .unwrap();
    wait_replay(&mut p, &mut s_admin);
    let on_primary = count(
        &mut p,
        "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1",
        &source,
    );
    standby.promote();
    let deadline = Instant::now() + Duration::from_secs(30);
    while s_admin
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "promotion did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (total, distinct): (i64, i64) = {
        let r = s_admin
            .query_one(
                "SELECT count(*), count(DISTINCT event_key) FROM agent_guard.audit_forwarded WHERE source = $1",
                &[&source],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(total, on_primary, "no forwarded record is lost");
    assert_eq!(total, distinct, "no forwarded record is written twice");
    assert_eq!(
        count(
            &mut s_admin,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1 AND request_id = 'sf-read-3'",
            &source
        ),
        1
    );
    let (intact, _, problem) = verify(&mut s_admin, &source);
    assert!(intact, "{problem:?}");
    let ssn: String = a
        .query_one(
            &format!("SELECT ssn FROM {table} WHERE id = 1 /* request_id='sf-after-promotion' */"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-5506");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = count(
            &mut s_admin,
            "SELECT count(*) FROM agent_guard.audit_log WHERE request_id = 'sf-after-promotion' OR $1 = ''",
            &source,
        );
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline && n == 0,
            "after the promotion the read is recorded once in the server's own trail ({n})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        count(
            &mut s_admin,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1",
            &source
        ),
        on_primary,
        "nothing is forwarded after the promotion"
    );
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM agent_guard.audit_forwarded WHERE source = $1",
            &source
        ),
        on_primary
    );
    drop(a);
    drop(s_admin);
    drop(standby);
}
