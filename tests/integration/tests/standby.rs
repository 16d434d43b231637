//! A hot standby (`pg_basebackup -R` of the test cluster): agents' statements
//! are classified there from the replicated catalog — registrations, the
//! sponsor rule, masking labels — and refused with SQLSTATE 42501 and a HINT
//! to connect to the primary, because the standby cannot write the audit
//! trail (nothing is queued there, so nothing is lost or written twice when it
//! is promoted). Humans are unaffected. After promotion the same sessions are
//! enforced and audited as on any primary.

use agent_guard_integration::cluster::Cluster;
use agent_guard_integration::*;
use std::time::{Duration, Instant};

#[test]
fn agents_on_a_hot_standby_are_judged_from_the_replica_and_refused_and_promotion_loses_nothing() {
    let db = database();
    let mut p = admin();
    let sponsor = create_login_role("sb_sponsor", "");
    let agent = create_login_role("sb_agent", "");
    let late = create_login_role("sb_late", "");
    let table = unique_name("sb_t");
    p.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, ssn text);
         INSERT INTO {table} VALUES (1, '214-13-5506');
         SECURITY LABEL FOR agent_guard ON COLUMN {table}.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         GRANT SELECT, DELETE ON {table} TO {agent}, {late};
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap();

    let mut standby = Cluster::standby_of_test_cluster("standby", &["hot_standby = on"]);
    standby.start();
    let mut s_admin = standby.connect(&superuser(), &db);
    wait_replay(&mut p, &mut s_admin);
    let in_recovery: bool = s_admin
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);

    // humans read as on the primary
    let mut human = standby.connect(&late, &db);
    let ssn: String = human
        .query_one(&format!("SELECT ssn FROM {table} WHERE id = 1"), &[])
        .unwrap()
        .get(0);
    assert_eq!(ssn, "214-13-5506");

    // the agent: classified from the replicated catalog, refused with a hint, no XX000 / 25006
    let mut a = standby.connect(&agent, &db);
    let e = refused_42501(
        &mut a,
        &format!("SELECT ssn FROM {table} /* request_id='on-standby' */"),
    );
    assert!(
        e.message().contains("may not run SELECT on a hot standby"),
        "{}",
        e.message()
    );
    assert!(
        e.detail()
            .unwrap_or("")
            .starts_with("Statement classified as sensitive_read"),
        "{:?}",
        e.detail()
    );
    assert!(
        e.hint().unwrap_or("").starts_with("Connect to the primary"),
        "{:?}",
        e.hint()
    );
    let e = refused_42501(
        &mut a,
        &format!("DELETE FROM {table} /* request_id='on-standby' */"),
    );
    assert!(
        e.detail().unwrap_or("").starts_with(&format!(
            "Statement classified as write (DELETE on public.{table})"
        )),
        "{:?}",
        e.detail()
    );
    refused_42501(&mut a, "SELECT 1 /* request_id='on-standby' */");
    // session housekeeping still works, so drivers connect and get a clear refusal
    a.batch_execute(
        "SET agent_guard.request_id = 'on-standby'; SHOW agent_guard.request_id; BEGIN; COMMIT",
    )
    .unwrap();
    refused_42501(&mut a, "SET agent_guard.enabled = off");

    // nothing waits in the standby's memory for a writer that cannot write
    let stats: String = s_admin
        .query_one("SELECT agent_guard.audit_stats()::text", &[])
        .unwrap()
        .get(0);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let enqueued: u64 = stats["databases"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["enqueued"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(enqueued, 0, "{stats}");

    // a registration made on the primary reaches a session open on the standby
    p.batch_execute(&format!(
        "SELECT agent_guard.register_agent('{late}', '{sponsor}')"
    ))
    .unwrap();
    wait_replay(&mut p, &mut s_admin);
    let e = refused_42501(&mut human, &format!("SELECT ssn FROM {table}"));
    assert!(e.message().contains("on a hot standby"), "{}", e.message());
    // and so does the sponsor rule
    p.batch_execute(&format!("ALTER ROLE {sponsor} NOLOGIN"))
        .unwrap();
    wait_replay(&mut p, &mut s_admin);
    let e = refused_42501(&mut a, "SELECT 1");
    assert!(e.message().contains("is orphaned"), "{}", e.message());
    p.batch_execute(&format!("ALTER ROLE {sponsor} LOGIN"))
        .unwrap();
    wait_replay(&mut p, &mut s_admin);
    p.batch_execute(&format!("SELECT agent_guard.unregister_agent('{late}')"))
        .unwrap();
    drop(human);

    // promotion: the open agent session is enforced and audited, exactly once
    let rows_before: i64 = s_admin
        .query_one("SELECT count(*) FROM agent_guard.audit_log", &[])
        .unwrap()
        .get(0);
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
    let ssn: String = a
        .query_one(
            &format!("SELECT ssn FROM {table} WHERE id = 1 /* request_id='after-promotion' */"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-5506");
    refused_42501(
        &mut a,
        &format!("DELETE FROM {table} /* request_id='after-promotion' */"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (after, on_standby): (i64, i64) = loop {
        let r = s_admin
            .query_one(
                "SELECT count(*) FILTER (WHERE request_id = 'after-promotion'),
                        count(*) FILTER (WHERE request_id = 'on-standby')
                 FROM agent_guard.audit_log",
                &[],
            )
            .unwrap();
        let v = (r.get(0), r.get(1));
        if v.0 >= 2 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        after, 2,
        "each statement after the promotion is recorded once"
    );
    assert_eq!(on_standby, 0, "nothing was queued on the standby");
    let (total, distinct): (i64, i64) = {
        let r = s_admin
            .query_one(
                "SELECT count(*), count(DISTINCT (session_key, statement_no)) FROM agent_guard.audit_log",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(total, distinct, "no record is written twice");
    assert_eq!(total, rows_before + 2);
    let v = s_admin
        .query_one(
            "SELECT intact, problem FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    assert!(v.get::<_, bool>(0), "{:?}", v.get::<_, Option<String>>(1));
    drop(a);
    drop(s_admin);
    drop(standby);
}
