//! Just-in-time grants with real, concurrent sessions: an agent is refused
//! with a ready-to-run request in the hint, files it, a human approves from
//! another session, the agent's open session may then write — within the
//! grant's risk, objects, statement, uses and time — until the grant expires
//! or is revoked. Four eyes, and exactly one of two racing decisions wins.

use agent_guard_integration::*;
use postgres::error::DbError;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

struct Cast {
    sponsor: String,
    agent: String,
    approver: String,
    table: String,
}

/// A sponsor (itself a member of agent_guard_approver), an agent with
/// SELECT/INSERT/UPDATE/DELETE on a table of ten rows, and an approver.
fn cast(prefix: &str) -> Cast {
    let sponsor = create_login_role(&format!("{prefix}_sp"), "IN ROLE agent_guard_approver");
    let agent = create_login_role(&format!("{prefix}_ag"), "");
    let approver = create_login_role(&format!("{prefix}_ap"), "IN ROLE agent_guard_approver");
    let table = unique_name(&format!("{prefix}_t"));
    admin()
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v text);
             INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 10) g;
             GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {agent};
             SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
        ))
        .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    Cast {
        sponsor,
        agent,
        approver,
        table,
    }
}

fn cleanup(c: &Cast, extra_tables: &[&str]) {
    let mut a = admin();
    for t in extra_tables.iter().copied().chain([c.table.as_str()]) {
        let _ = a.batch_execute(&format!("DROP TABLE IF EXISTS {t}"));
    }
    for r in [&c.agent, &c.approver, &c.sponsor] {
        let _ = a.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE IF EXISTS {r};"));
    }
}

fn rows(table: &str) -> i64 {
    admin()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

/// The server error of a refused statement, which must be SQLSTATE `code`.
fn error_of(res: Result<impl std::fmt::Debug, postgres::Error>, code: &str) -> DbError {
    let err = match res {
        Ok(v) => panic!("expected SQLSTATE {code}, got success: {v:?}"),
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"))
        .clone();
    assert_eq!(db.code().code(), code, "{}", describe(&err));
    db
}

fn refused(res: Result<impl std::fmt::Debug, postgres::Error>) -> DbError {
    error_of(res, "42501")
}

fn request(agent: &mut Client, sql: &str) -> i64 {
    agent
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

fn approve(approver: &mut Client, sql: &str) {
    approver
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

/// Wait for the `NOTIFY agent_guard` about request `id` and `event` (other tests notify too).
fn notification(listener: &mut Client, id: i64, event: &str) -> serde_json::Value {
    let mut notifications = listener.notifications();
    let mut it = notifications.timeout_iter(Duration::from_secs(5));
    while let Some(n) = it.next().unwrap() {
        assert_eq!(n.channel(), "agent_guard");
        let payload: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        if payload["request"] == id && payload["event"] == event {
            return payload;
        }
    }
    panic!("no {event} notification for request {id}");
}

fn state(id: i64) -> String {
    admin()
        .query_one(
            "SELECT state FROM agent_guard.requests WHERE request = $1",
            &[&id],
        )
        .unwrap()
        .get(0)
}

#[test]
fn full_flow_refusal_request_approval_retry_expiry() {
    let c = cast("flow");
    let mut listener = admin();
    listener.batch_execute("LISTEN agent_guard").unwrap();
    // the agent's session is open before anything is approved
    let mut agent = connect(&c.agent);
    let mut approver = connect(&c.approver);
    let delete = format!("DELETE FROM {} WHERE id <= 3", c.table);

    let db = refused(agent.execute(delete.as_str(), &[]));
    assert!(
        db.message().contains("without an approved grant"),
        "{}",
        db.message()
    );
    let hint = db.hint().expect("a refusal carries a hint");
    let call = hint
        .split("run: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no request in the hint: {hint}"));
    assert!(
        call.starts_with("SELECT agent_guard.request_access('write', ARRAY['public."),
        "{call}"
    );
    assert!(
        call.contains(&format!("statement => $q${delete}$q$")),
        "{call}"
    );
    assert_eq!(rows(&c.table), 10, "refused: nothing deleted");

    // the agent files exactly what the hint says
    let id = request(&mut agent, call.trim_end_matches(';'));
    let pending: i64 = admin()
        .query_one("SELECT count(*) FROM agent_guard.pending_requests WHERE request = $1 AND requester = $2", &[&id, &c.agent])
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
    let payload = notification(&mut listener, id, "request");
    assert_eq!(payload["agent"], c.agent.as_str());
    assert_eq!(payload["requester"], c.agent.as_str());
    assert_eq!(payload["sponsor"], c.sponsor.as_str());
    assert_eq!(payload["statement"], delete.as_str());
    assert_eq!(payload["risk"], "write");

    // another session approves, for a short time; the same statement may run a few times
    approve(
        &mut approver,
        &format!("SELECT agent_guard.approve({id}, ttl => '2 seconds', max_statements => 5)"),
    );
    assert_eq!(state(id), "active");
    let payload = notification(&mut listener, id, "approved");
    assert_eq!(payload["decided_by"], c.approver.as_str());

    // the agent's open session retries: allowed now
    let deleted = agent
        .execute(delete.as_str(), &[])
        .unwrap_or_else(|e| panic!("retry: {}", describe(&e)));
    assert_eq!(deleted, 3);
    assert_eq!(rows(&c.table), 7);
    assert_eq!(
        agent.execute(delete.as_str(), &[]).unwrap(),
        0,
        "still within ttl and uses"
    );

    // the grant expires: the same statement is refused again
    thread::sleep(Duration::from_millis(2500));
    refused(agent.execute(delete.as_str(), &[]));
    assert_eq!(state(id), "expired");
    let approve_expired = approver.batch_execute(&format!("SELECT agent_guard.approve({id})"));
    let db = error_of(approve_expired, "55000");
    assert!(
        db.message().contains("already approved"),
        "{}",
        db.message()
    );
    // the trail has the request, the decision and each use of the grant
    let mut a = admin();
    let events: Vec<String> = a
        .query(
            "SELECT command FROM agent_guard.audit_log WHERE $1 = ANY(objects) ORDER BY id",
            &[&format!("agent_guard.access_requests {id}")],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        events,
        vec!["ACCESS REQUEST REQUEST", "ACCESS REQUEST APPROVED"]
    );
    let uses: i64 = a
        .query_one(
            "SELECT count(*) FROM agent_guard.audit_log WHERE grant_id = $1 AND decision = 'allowed'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        uses, 2,
        "both allowed DELETEs name the grant that allowed them"
    );
    drop((agent, approver, listener));
    cleanup(&c, &[]);
}

#[test]
fn the_agent_cannot_approve_its_own_request() {
    let c = cast("self");
    admin()
        .batch_execute(&format!("GRANT agent_guard_approver TO {}", c.agent))
        .unwrap();
    let mut agent = connect(&c.agent);
    let id = request(&mut agent, "SELECT agent_guard.request_access('write')");
    let db = refused(agent.batch_execute(&format!("SELECT agent_guard.approve({id})")));
    // refused before approve() runs: its functions reserved to approvers are administration for agents
    assert!(
        db.message()
            .contains("may not change agent_guard itself (SELECT approve())"),
        "{}",
        db.message()
    );
    // nor may a human session acting as the agent's role
    let mut su = admin();
    su.batch_execute(&format!("SET ROLE {}", c.agent)).unwrap();
    let db = refused(su.batch_execute(&format!("SELECT agent_guard.approve({id})")));
    assert!(
        db.message().contains("it is that agent"),
        "{}",
        db.message()
    );
    assert_eq!(state(id), "pending");
    drop((agent, su));
    cleanup(&c, &[]);
}

#[test]
fn a_non_approver_cannot_approve() {
    let c = cast("nonapp");
    let outsider = create_login_role("nonapp_out", "");
    let mut agent = connect(&c.agent);
    let id = request(&mut agent, "SELECT agent_guard.request_access('write')");
    let mut o = connect(&outsider);
    refused(o.batch_execute(&format!("SELECT agent_guard.approve({id})")));
    refused(o.batch_execute(&format!("SELECT agent_guard.deny({id})")));
    let db = refused(o.batch_execute(&format!("SELECT agent_guard.revoke({id})")));
    assert!(
        db.message().contains("agent_guard_approver"),
        "{}",
        db.message()
    );
    assert_eq!(state(id), "pending");
    drop((agent, o));
    let _ = admin().batch_execute(&format!("DROP ROLE {outsider}"));
    cleanup(&c, &[]);
}

#[test]
fn the_sponsor_cannot_approve_when_distinct_sponsor_applies() {
    let c = cast("sponsor");
    let mut agent = connect(&c.agent);
    let ddl = request(&mut agent, "SELECT agent_guard.request_access('ddl')");
    let write = request(&mut agent, "SELECT agent_guard.request_access('write')");
    // default agent_guard.require_distinct_sponsor = ddl
    let mut sponsor = connect(&c.sponsor);
    let db = refused(sponsor.batch_execute(&format!("SELECT agent_guard.approve({ddl})")));
    assert!(
        db.message().contains("sponsors the requesting agent"),
        "{}",
        db.message()
    );
    assert!(
        db.detail()
            .unwrap_or("")
            .contains("require_distinct_sponsor = ddl"),
        "{:?}",
        db.detail()
    );
    approve(
        &mut sponsor,
        &format!("SELECT agent_guard.approve({write})"),
    );
    assert_eq!(state(ddl), "pending");
    assert_eq!(state(write), "active");
    // a sponsor may not loosen the rule
    refused(sponsor.batch_execute("SET agent_guard.require_distinct_sponsor = off"));
    drop(sponsor);
    // always: not even writes
    admin()
        .batch_execute(&format!(
            "ALTER ROLE {} SET agent_guard.require_distinct_sponsor = always",
            c.sponsor
        ))
        .unwrap();
    let write2 = request(&mut agent, "SELECT agent_guard.request_access('write')");
    let mut sponsor = connect(&c.sponsor);
    refused(sponsor.batch_execute(&format!("SELECT agent_guard.approve({write2})")));
    // another approver may
    let mut approver = connect(&c.approver);
    approve(&mut approver, &format!("SELECT agent_guard.approve({ddl})"));
    approve(
        &mut approver,
        &format!("SELECT agent_guard.approve({write2})"),
    );
    drop((agent, sponsor, approver));
    cleanup(&c, &[]);
}

#[test]
fn writes_outside_the_grant_objects_are_refused() {
    let c = cast("objects");
    let other = unique_name("objects_other");
    admin()
        .batch_execute(&format!(
            "CREATE TABLE {other} (id int); GRANT ALL ON {other} TO {};",
            c.agent
        ))
        .unwrap();
    let mut agent = connect(&c.agent);
    let id = request(
        &mut agent,
        &format!(
            "SELECT agent_guard.request_access('write', ARRAY['{}']::regclass[])",
            c.table
        ),
    );
    approve(
        &mut connect(&c.approver),
        &format!("SELECT agent_guard.approve({id})"),
    );
    agent
        .batch_execute(&format!(
            "UPDATE {} SET v = 'changed' WHERE id = 1",
            c.table
        ))
        .unwrap();
    let db = refused(agent.batch_execute(&format!("INSERT INTO {other} VALUES (1)")));
    assert!(
        db.message().contains(&other),
        "the refusal names the table: {}",
        db.message()
    );
    assert!(
        db.detail()
            .unwrap_or("")
            .contains(&format!("Grant {id} does not cover public.{other}")),
        "{:?}",
        db.detail()
    );
    // a statement writing both is refused as a whole
    refused(agent.batch_execute(&format!(
        "WITH a AS (UPDATE {} SET v = 'x' WHERE id = 2 RETURNING id) INSERT INTO {other} SELECT id FROM a",
        c.table
    )));
    assert_eq!(rows(&other), 0);
    drop(agent);
    cleanup(&c, &[&other]);
}

#[test]
fn ddl_under_a_write_grant_is_refused() {
    let c = cast("ddlw");
    let mut agent = connect(&c.agent);
    let id = request(
        &mut agent,
        "SELECT agent_guard.request_access('write', reason => 'data fix')",
    );
    approve(
        &mut connect(&c.approver),
        &format!("SELECT agent_guard.approve({id})"),
    );
    agent
        .batch_execute(&format!("DELETE FROM {} WHERE id = 10", c.table))
        .unwrap();
    for ddl in [
        format!("ALTER TABLE {} ADD COLUMN note text", c.table),
        format!("CREATE INDEX ON {} (v)", c.table),
        "CREATE TABLE ddlw_should_not_exist (a int)".to_string(),
    ] {
        let db = refused(agent.batch_execute(&ddl));
        assert!(
            db.detail()
                .unwrap_or("")
                .contains(&format!("Grant {id} allows writes only")),
            "{ddl}: {:?}",
            db.detail()
        );
        assert!(
            db.hint().unwrap_or("").contains("request_access('ddl'"),
            "{ddl}: {:?}",
            db.hint()
        );
    }
    drop(agent);
    cleanup(&c, &[]);
}

#[test]
fn a_single_statement_grant_allows_exactly_that_statement_once() {
    let c = cast("single");
    let mut agent = connect(&c.agent);
    let stmt = format!("UPDATE {} SET v = 'approved' WHERE id = 1", c.table);
    let id = request(
        &mut agent,
        &format!("SELECT agent_guard.request_access('write', statement => $q${stmt}$q$, reason => 'one fix')"),
    );
    approve(
        &mut connect(&c.approver),
        &format!("SELECT agent_guard.approve({id})"),
    );
    // a different literal is a different statement
    let db = refused(agent.execute(
        format!("UPDATE {} SET v = 'approved' WHERE id = 2", c.table).as_str(),
        &[],
    ));
    assert!(
        db.detail()
            .unwrap_or("")
            .contains("for one specific statement"),
        "{:?}",
        db.detail()
    );
    refused(agent.execute(
        format!("UPDATE {} SET v = 'other' WHERE id = 1", c.table).as_str(),
        &[],
    ));
    // whitespace, comments, case and literal formatting do not matter
    let variant = format!(
        "update  {}\n   SET v=E'approved' /* reviewed */ where ID = 0001 -- once\n",
        c.table.to_uppercase()
    );
    assert_eq!(
        agent
            .execute(variant.as_str(), &[])
            .unwrap_or_else(|e| panic!("{}", describe(&e))),
        1
    );
    // once
    let db = refused(agent.execute(stmt.as_str(), &[]));
    assert!(
        db.detail().unwrap_or("").contains("used up"),
        "{:?}",
        db.detail()
    );
    assert_eq!(state(id), "used");
    drop(agent);
    cleanup(&c, &[]);
}

#[test]
fn two_sessions_cannot_both_use_a_single_use_grant() {
    let c = cast("twice");
    let stmt = format!("UPDATE {} SET v = 'once' WHERE id = 1", c.table);
    let mut first = connect(&c.agent);
    let id = request(
        &mut first,
        &format!("SELECT agent_guard.request_access('write', statement => $q${stmt}$q$)"),
    );
    approve(
        &mut connect(&c.approver),
        &format!("SELECT agent_guard.approve({id})"),
    );
    first.batch_execute("BEGIN").unwrap();
    first.execute(stmt.as_str(), &[]).unwrap();
    // the second session waits for the first one's use, then finds the grant used up
    let (agent, stmt2) = (c.agent.clone(), stmt.clone());
    let (tx, rx) = mpsc::channel();
    let second = thread::spawn(move || {
        let mut s = connect(&agent);
        tx.send(()).unwrap();
        s.execute(stmt2.as_str(), &[]).map_err(|e| {
            let db = e.as_db_error().cloned();
            (
                e.code().map(|c| c.code().to_string()),
                db.map(|d| d.detail().unwrap_or("").to_string()),
            )
        })
    });
    rx.recv().unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        !second.is_finished(),
        "the second use must wait for the first session's transaction"
    );
    first.batch_execute("COMMIT").unwrap();
    match second.join().unwrap() {
        Ok(n) => panic!("the second session used the grant too ({n} rows)"),
        Err((code, detail)) => {
            assert_eq!(code.as_deref(), Some("42501"));
            assert!(detail.unwrap_or_default().contains(&format!("Grant {id}")));
        }
    }
    drop(first);
    cleanup(&c, &[]);
}

#[test]
fn revocation_takes_effect_at_the_next_statement_of_an_open_session() {
    let c = cast("revoke");
    let mut agent = connect(&c.agent);
    let mut approver = connect(&c.approver);
    let id = request(
        &mut agent,
        "SELECT agent_guard.request_access('write', ttl => '1 hour')",
    );
    approve(&mut approver, &format!("SELECT agent_guard.approve({id})"));
    let update = format!("UPDATE {} SET v = 'x' WHERE id = 1", c.table);
    agent.batch_execute(&update).unwrap();
    approve(
        &mut approver,
        &format!("SELECT agent_guard.revoke({id}, 'enough')"),
    );
    refused(agent.batch_execute(&update));
    assert_eq!(state(id), "revoked");

    // also inside an open REPEATABLE READ transaction that already used the
    // grant: revoking does not wait for it, and its next statement is refused
    let id = request(
        &mut agent,
        "SELECT agent_guard.request_access('write', ttl => '1 hour')",
    );
    approve(&mut approver, &format!("SELECT agent_guard.approve({id})"));
    agent
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    agent.batch_execute(&update).unwrap();
    let (tx, rx) = mpsc::channel();
    let who = c.approver.clone();
    thread::spawn(move || {
        let mut a = connect(&who);
        tx.send(
            a.batch_execute(&format!("SELECT agent_guard.revoke({id})"))
                .map_err(|e| describe(&e)),
        )
        .unwrap();
    });
    let revoked = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("revoke must not wait for the agent's transaction");
    revoked.unwrap();
    refused(agent.batch_execute(&update));
    let _ = agent.batch_execute("ROLLBACK");
    drop((agent, approver));
    cleanup(&c, &[]);
}

#[test]
fn two_approvers_racing_on_one_request_one_wins() {
    let c = cast("race");
    let second_approver = create_login_role("race_ap2", "IN ROLE agent_guard_approver");
    let mut agent = connect(&c.agent);
    let id = request(&mut agent, "SELECT agent_guard.request_access('write')");
    let mut first = connect(&c.approver);
    first.batch_execute("BEGIN").unwrap();
    approve(
        &mut first,
        &format!("SELECT agent_guard.approve({id}, note => 'first')"),
    );
    let who = second_approver.clone();
    let racer = thread::spawn(move || {
        let mut s = connect(&who);
        s.batch_execute(&format!("SELECT agent_guard.deny({id}, 'second')"))
            .map_err(|e| {
                let db = e.as_db_error().cloned();
                (
                    e.code().map(|c| c.code().to_string()),
                    db.map(|d| d.message().to_string()),
                )
            })
    });
    thread::sleep(Duration::from_millis(500));
    assert!(
        !racer.is_finished(),
        "the second decision waits for the first"
    );
    first.batch_execute("COMMIT").unwrap();
    match racer.join().unwrap() {
        Ok(()) => panic!("both decisions succeeded"),
        Err((code, message)) => {
            assert_eq!(code.as_deref(), Some("55000"));
            let message = message.unwrap_or_default();
            assert!(
                message.contains(&format!(
                    "request {id} was already approved by {}",
                    c.approver
                )),
                "{message}"
            );
        }
    }
    assert_eq!(state(id), "active");

    // and without explicit transactions: of two approvals at once, exactly one succeeds
    let id = request(&mut agent, "SELECT agent_guard.request_access('write')");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = [c.approver.clone(), second_approver.clone()]
        .into_iter()
        .map(|who| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut s = connect(&who);
                barrier.wait();
                s.batch_execute(&format!("SELECT agent_guard.approve({id})"))
                    .is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1);
    drop((agent, first));
    let _ = admin().batch_execute(&format!("DROP ROLE {second_approver}"));
    cleanup(&c, &[]);
}

#[test]
fn privilege_and_admin_are_refused_at_request_time() {
    let c = cast("never");
    let mut agent = connect(&c.agent);
    for risk in ["privilege", "admin"] {
        let db =
            refused(agent.query_one(&format!("SELECT agent_guard.request_access('{risk}')"), &[]));
        assert!(db.message().contains("never granted"), "{}", db.message());
    }
    let n: i64 = admin()
        .query_one(
            "SELECT count(*) FROM agent_guard.requests WHERE agent = $1",
            &[&c.agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was recorded");
    // and a human session has nothing to request
    let mut human = connect(&c.approver);
    error_of(
        human.query_one("SELECT agent_guard.request_access('write')", &[]),
        "55000",
    );
    drop((agent, human));
    cleanup(&c, &[]);
}

/// A nested statement belongs to the top-level statement whose execution is
/// on the stack, not to the one that started last: a portal bound before an
/// approved single-statement UPDATE and run after it gets nothing from the
/// UPDATE's grant (the extended protocol lets both be open at once).
#[test]
fn a_second_portal_does_not_borrow_a_single_statement_grant() {
    let c = cast("portal");
    let del = unique_name("portal_del");
    admin()
        .batch_execute(&format!(
            "CREATE FUNCTION {del}(i int) RETURNS int LANGUAGE plpgsql AS $$
             BEGIN DELETE FROM {t} WHERE id = i; RETURN i; END $$;",
            t = c.table
        ))
        .unwrap();
    let mut agent = connect(&c.agent);
    let stmt = format!("UPDATE {} SET v = 'approved' WHERE id = 1", c.table);
    let id = request(
        &mut agent,
        &format!("SELECT agent_guard.request_access('write', statement => $q${stmt}$q$, reason => 'one fix')"),
    );
    approve(
        &mut connect(&c.approver),
        &format!("SELECT agent_guard.approve({id})"),
    );
    let before = rows(&c.table);
    {
        let mut tx = agent.transaction().unwrap();
        // P1 is bound (its executor started) but has not run yet.
        let p1 = tx
            .bind(
                format!("SELECT {del}(id) FROM {} WHERE id > 5", c.table).as_str(),
                &[],
            )
            .unwrap_or_else(|e| panic!("bind: {}", describe(&e)));
        // P2, the approved statement, runs under its grant.
        assert_eq!(
            tx.execute(stmt.as_str(), &[])
                .unwrap_or_else(|e| panic!("{}", describe(&e))),
            1
        );
        // P1 resumes: its nested DELETEs are P1's, which no grant covers.
        refused(tx.query_portal(&p1, 5));
        let _ = tx.rollback();
    }
    assert_eq!(rows(&c.table), before, "no row may be deleted");
    // The trail gives the refused DELETE P1 as its parent, not the UPDATE.
    let mut a = admin();
    // (P1's own record is asynchronous: wait for the writer.)
    let mut parent: Option<String> = None;
    for _ in 0..100 {
        parent = a
            .query_opt(
                "SELECT p.statement_text FROM agent_guard.audit_log d
                   JOIN agent_guard.audit_log p
                     ON p.session_key = d.session_key AND p.statement_no = d.parent_statement
                  WHERE d.agent = $1 AND d.command = 'DELETE' AND d.decision = 'denied'
                  ORDER BY d.id DESC LIMIT 1",
                &[&c.agent],
            )
            .unwrap_or_else(|e| panic!("{}", describe(&e)))
            .map(|r| r.get(0));
        if parent.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let parent = parent.unwrap_or_default();
    assert!(parent.contains(&del), "parent statement: {parent}");
    drop(agent);
    let _ = a.batch_execute(&format!("DROP FUNCTION IF EXISTS {del}(int)"));
    cleanup(&c, &[]);
}
