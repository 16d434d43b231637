//! Execution context: request ids from sqlcommenter comments and SET LOCAL,
//! and agent identity that SET ROLE cannot shed.

use agent_guard_integration::*;

fn agent_session(prefix: &str) -> (String, String, postgres::Client) {
    let sponsor = create_login_role(&format!("{prefix}_sponsor"), "");
    let agent = create_login_role(&format!("{prefix}_agent"), "");
    admin()
        .batch_execute(&format!(
            "SELECT agent_guard.register_agent('{agent}', '{sponsor}', 'ci-job')"
        ))
        .unwrap();
    let c = connect(&agent);
    (sponsor, agent, c)
}

fn context(c: &mut postgres::Client, sql: &str) -> serde_json::Value {
    let text: String = c
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn request_id_from_comment_and_from_set_local() {
    let (sponsor, agent, mut c) = agent_session("ctx");
    let ctx = context(&mut c, "SELECT agent_guard.current_context()::text /* request_id='ci-4711',traceparent='00-abc-01' */");
    assert_eq!(ctx["request_id"], "ci-4711");
    assert_eq!(ctx["traceparent"], "00-abc-01");
    assert_eq!(ctx["agent"], agent.as_str());
    assert_eq!(ctx["sponsor"], sponsor.as_str());
    assert_eq!(ctx["agent_kind"], "ci-job");
    assert_eq!(ctx["application_name"], "integration tests");
    assert_eq!(ctx["client_addr"], "127.0.0.1");
    assert_eq!(ctx["nesting_level"], 0);

    c.batch_execute("BEGIN; SET LOCAL agent_guard.request_id = 'job-42'")
        .unwrap();
    let ctx = context(&mut c, "SELECT agent_guard.current_context()::text");
    assert_eq!(ctx["request_id"], "job-42");
    c.batch_execute("COMMIT").unwrap();
    let ctx = context(&mut c, "SELECT agent_guard.current_context()::text");
    assert!(
        ctx["request_id"].is_null(),
        "SET LOCAL ends with the transaction: {ctx}"
    );

    // a comment beats the setting
    c.batch_execute("SET agent_guard.request_id = 'session-wide'")
        .unwrap();
    let ctx = context(
        &mut c,
        "/* request_id='from-comment' */ SELECT agent_guard.current_context()::text",
    );
    assert_eq!(ctx["request_id"], "from-comment");
    drop(c);
    let _ = admin().batch_execute(&format!("DROP ROLE {agent}; DROP ROLE {sponsor};"));
}

#[test]
fn nested_statements_report_their_level() {
    let (sponsor, agent, mut c) = agent_session("nest");
    let f = unique_name("nest_ctx");
    admin()
        .batch_execute(&format!(
            "CREATE FUNCTION {f}() RETURNS text LANGUAGE plpgsql AS $$ DECLARE v text; \
             BEGIN EXECUTE 'SELECT agent_guard.current_context()::text' INTO v; RETURN v; END $$; \
             GRANT EXECUTE ON FUNCTION {f}() TO {agent};"
        ))
        .unwrap();
    let ctx = context(&mut c, "SELECT agent_guard.current_context()::text");
    assert_eq!(ctx["nesting_level"], 0);
    let ctx = context(&mut c, &format!("SELECT {f}()"));
    assert_eq!(
        ctx["nesting_level"], 1,
        "dynamic SQL inside a function is one level down: {ctx}"
    );
    drop(c);
    let _ = admin().batch_execute(&format!(
        "DROP FUNCTION {f}(); DROP ROLE {agent}; DROP ROLE {sponsor};"
    ));
}

#[test]
fn non_agent_sessions_are_untouched() {
    let human = create_login_role("human", "CREATEDB");
    let schema = unique_name("human_s");
    admin()
        .batch_execute(&format!("CREATE SCHEMA {schema} AUTHORIZATION {human}"))
        .unwrap();
    let table = format!("{schema}.{}", unique_name("human_t"));
    let mut h = connect(&human);
    h.batch_execute(&format!(
        "CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1); UPDATE {table} SET id = 2; \
         SELECT * FROM {table} FOR UPDATE; DELETE FROM {table}; \
         CREATE TEMP SEQUENCE sq; SELECT nextval('sq'); SELECT set_config('work_mem', '8MB', false); \
"
    ))
    .unwrap_or_else(|e| panic!("a human session must not be restricted: {}", describe(&e)));
    for sql in [
        format!("BEGIN; DROP TABLE {table}; ROLLBACK"),
        format!("DROP TABLE {table}"),
    ] {
        h.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    }
    let is_agent: bool = h
        .query_one("SELECT agent_guard.is_agent_session()", &[])
        .unwrap()
        .get(0);
    assert!(!is_agent);
    drop(h);
    let _ = admin().batch_execute(&format!("DROP SCHEMA {schema} CASCADE; DROP ROLE {human};"));
}

#[test]
fn agent_in_a_database_without_agent_guard_is_refused() {
    let (sponsor, agent, c) = agent_session("otherdb");
    drop(c);
    let db = unique_name("no_guard_db");
    let mut pg = connect_db(&superuser(), "postgres");
    pg.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut other = connect_db(&agent, &db);
    let err = other
        .query_one("SELECT 1", &[])
        .expect_err("no agent_guard there: refused");
    let msg = describe(&err);
    assert!(msg.contains("agent_guard is not installed"), "{msg}");
    // housekeeping is allowed so clients can still configure the session
    other.batch_execute("SET application_name = 'x'").unwrap();
    drop(other);
    pg.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
    let _ = admin().batch_execute(&format!("DROP ROLE {agent}; DROP ROLE {sponsor};"));
}
