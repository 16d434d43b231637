//! The departed-sponsor rule with real, concurrent sessions: an agent whose
//! human sponsor can no longer log in is cut off at its next statement,
//! without reconnecting; session housekeeping keeps working.

use agent_guard_integration::*;

struct Cast {
    sponsor: String,
    agent: String,
    table: String,
}

fn cast(prefix: &str) -> Cast {
    let sponsor = create_login_role(&format!("{prefix}_sponsor"), "");
    let agent = create_login_role(&format!("{prefix}_agent"), "");
    let table = unique_name(&format!("{prefix}_t"));
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1), (2); GRANT SELECT, DELETE ON {table} TO {agent};
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    Cast {
        sponsor,
        agent,
        table,
    }
}

fn cleanup(c: &Cast) {
    let mut a = admin();
    let _ = a.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t}; DROP OWNED BY {ag}; DROP ROLE IF EXISTS {ag}; DROP OWNED BY {sp}; DROP ROLE IF EXISTS {sp};",
        t = c.table,
        ag = c.agent,
        sp = c.sponsor
    ));
}

fn assert_refused_naming_sponsor(err: postgres::Error, sponsor: &str, why: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code().code(), "42501", "{}", describe(&err));
    assert!(db.message().contains("orphaned"), "{}", describe(&err));
    assert!(
        db.message().contains(&format!("\"{sponsor}\"")),
        "{}",
        describe(&err)
    );
    assert!(db.message().contains(why), "{}", describe(&err));
}

fn departs(prefix: &str, how: &str, why: &str) {
    let c = cast(prefix);
    let mut agent = connect(&c.agent);
    let n: i64 = agent
        .query_one(&format!("SELECT count(*) FROM {}", c.table), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "an agent with an active sponsor reads freely");

    admin()
        .batch_execute(&format!("ALTER ROLE {} {how}", c.sponsor))
        .unwrap();

    let err = agent
        .query_one(&format!("SELECT count(*) FROM {}", c.table), &[])
        .expect_err("the open session must be cut off at its next statement");
    assert_refused_naming_sponsor(err, &c.sponsor, why);
    // housekeeping still works
    agent
        .batch_execute("BEGIN; SET LOCAL work_mem = '8MB'; SHOW work_mem; ROLLBACK")
        .unwrap();
    agent.batch_execute("DISCARD ALL").unwrap();
    // and the view tells the story
    let status: String = admin()
        .query_one(
            "SELECT sponsor_status FROM agent_guard.agents WHERE agent::text = $1",
            &[&c.agent],
        )
        .unwrap()
        .get(0);
    assert_ne!(status, "active");
    drop(agent);
    cleanup(&c);
}

#[test]
fn sponsor_set_nologin_cuts_off_open_agent_session() {
    departs("nologin", "NOLOGIN", "NOLOGIN");
}

#[test]
fn sponsor_valid_until_in_the_past_cuts_off_open_agent_session() {
    departs("expired", "VALID UNTIL '2000-01-01'", "VALID UNTIL");
}

#[test]
fn dropped_sponsor_is_never_lost_track_of() {
    let c = cast("dropped");
    let mut agent = connect(&c.agent);
    admin()
        .batch_execute(&format!("DROP OWNED BY {0}; DROP ROLE {0}", c.sponsor))
        .unwrap();
    let err = agent
        .query_one("SELECT 1", &[])
        .expect_err("agent of a dropped sponsor is refused");
    assert_refused_naming_sponsor(err, &c.sponsor, "dropped");
    let status: String = admin()
        .query_one(
            "SELECT sponsor_status FROM agent_guard.agents WHERE agent::text = $1",
            &[&c.agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "dropped");
    drop(agent);
    cleanup(&c);
}

#[test]
fn sponsor_restored_restores_the_agent() {
    let c = cast("restored");
    let mut agent = connect(&c.agent);
    admin()
        .batch_execute(&format!("ALTER ROLE {} NOLOGIN", c.sponsor))
        .unwrap();
    assert!(agent.query_one("SELECT 1", &[]).is_err());
    admin()
        .batch_execute(&format!("ALTER ROLE {} LOGIN", c.sponsor))
        .unwrap();
    let one: i32 = agent.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    drop(agent);
    cleanup(&c);
}

#[test]
fn registration_takes_effect_in_an_open_session() {
    let sponsor = create_login_role("late_sponsor", "");
    let agent_role = create_login_role("late_agent", "");
    let table = unique_name("late_t");
    admin()
        .batch_execute(&format!("CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1); GRANT SELECT, DELETE ON {table} TO {agent_role};"))
        .unwrap();
    let mut session = connect(&agent_role);
    session
        .batch_execute(&format!("DELETE FROM {table} WHERE false"))
        .expect("not yet an agent");
    admin()
        .batch_execute(&format!(
            "SELECT agent_guard.register_agent('{agent_role}', '{sponsor}')"
        ))
        .unwrap();
    let err = session
        .batch_execute(&format!("DELETE FROM {table}"))
        .expect_err("now an agent: writes need a grant");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42501"),
        "{}",
        describe(&err)
    );
    let n: i64 = admin()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "data untouched");
    drop(session);
    cleanup(&Cast {
        sponsor,
        agent: agent_role,
        table,
    });
}

#[test]
fn members_of_a_registered_group_are_agents() {
    let sponsor = create_login_role("grp_sponsor", "");
    let group = unique_name("ai_agents");
    let member = create_login_role("grp_member", "");
    admin()
        .batch_execute(&format!(
            "CREATE ROLE {group} NOLOGIN; GRANT {group} TO {member}; SELECT agent_guard.register_agent('{group}', '{sponsor}', 'agent group');"
        ))
        .unwrap();
    let mut s = connect(&member);
    let ctx: serde_json::Value = serde_json::from_str(
        &s.query_one("SELECT agent_guard.current_context()::text", &[])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(ctx["agent"], group.as_str());
    assert_eq!(ctx["sponsor"], sponsor.as_str());
    assert_eq!(ctx["session_user"], member.as_str());
    let err = s
        .batch_execute("CREATE TABLE should_not_exist (a int)")
        .expect_err("members are agents");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    drop(s);
    let _ = admin().batch_execute(&format!(
        "DROP ROLE {member}; DROP ROLE {group}; DROP ROLE {sponsor};"
    ));
}
