//! Other sessions' query texts reach agents redacted or not at all — a
//! SUPERUSER agent too, whatever route it takes: `pg_stat_activity`, the
//! functions under it (`pg_stat_get_activity`, `pg_stat_get_backend_activity`),
//! views and functions humans wrote over them, `pg_stat_statements`.

use agent_guard_integration::*;
use postgres::Client;
use std::io::Read;

fn refused(c: &mut Client, sql: &str) {
    match rows_text(c, sql) {
        Ok(out) => panic!("{sql}: not refused:\n{out}"),
        Err(e) => {
            assert_eq!(
                e.code().map(|c| c.code()),
                Some("42501"),
                "{sql}: {}",
                describe(&e)
            );
            let db = e.as_db_error().unwrap();
            assert!(
                db.hint().is_some() && db.detail().is_some(),
                "{sql}: {}",
                describe(&e)
            );
        }
    }
}

struct Setup {
    agent: String,
    /// the human's raw literals
    secrets: Vec<String>,
    human_pid: i32,
    _human: Client,
}

/// A SUPERUSER agent, and a human session whose last statement carries
/// regulated literals (an idle session's last statement stays in
/// pg_stat_activity).
fn setup(prefix: &str) -> Setup {
    let sponsor = create_login_role(&format!("{prefix}_sp"), "");
    let agent = create_login_role(&format!("{prefix}_ag"), "SUPERUSER");
    let mut a = admin();
    a.batch_execute(&format!(
        "SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap();
    let n = std::process::id() % 10000;
    let ssn = format!("219-{:02}-{:04}", n % 89 + 10, n % 8999 + 1000);
    let email = format!("person{n}@secret-mail.example.com");
    let mut human = connect(&sponsor);
    let human_pid: i32 = human
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    human
        .batch_execute(&format!(
            "SELECT '{ssn}' AS ssn, /* {email} */ 4111111111111111 AS card, '{email}' AS email"
        ))
        .unwrap();
    Setup {
        agent,
        secrets: vec![ssn, email, "4111111111111111".into()],
        human_pid,
        _human: human,
    }
}

impl Setup {
    fn assert_clean(&self, what: &str, text: &str) {
        for s in &self.secrets {
            assert!(
                !text.contains(s.as_str()),
                "{what}: {s:?} reached the agent:\n{text}"
            );
        }
    }
}

#[test]
fn other_sessions_query_texts_reach_agents_redacted_or_not_at_all() {
    let s = setup("qt");
    let pid = s.human_pid;
    let mut a = admin();
    // humans still see the real text
    let real = rows_text_ok(
        &mut a,
        &format!("SELECT query FROM pg_stat_activity WHERE pid = {pid}"),
    );
    assert!(real.contains(&s.secrets[0]), "{real}");
    let v = unique_name("qt_view");
    a.batch_execute(&format!(
        "CREATE VIEW {v} AS SELECT pid, query FROM pg_stat_activity;
         CREATE FUNCTION {v}_plpgsql() RETURNS text LANGUAGE plpgsql AS $$
             DECLARE r text; BEGIN SELECT string_agg(query, ' ') INTO r FROM pg_stat_activity; RETURN r; END $$;
         CREATE FUNCTION {v}_sql() RETURNS SETOF text LANGUAGE sql STABLE AS $$ SELECT query FROM pg_stat_activity $$;
         CREATE FUNCTION {v}_scalar(p int) RETURNS text LANGUAGE sql STABLE AS $$ SELECT pg_stat_get_backend_activity(p) $$;"
    ))
    .unwrap();

    let mut c = connect(&s.agent);
    // redacted: the view, the function in FROM (also LATERAL, ROWS FROM, WITH ORDINALITY),
    // views and functions over them, COPY
    for sql in [
        format!("SELECT query FROM pg_stat_activity WHERE pid = {pid}"),
        format!("SELECT * FROM pg_stat_activity WHERE pid = {pid}"),
        format!("SELECT s::text FROM pg_stat_activity s WHERE pid = {pid}"),
        format!("SELECT row_to_json(s) FROM pg_stat_activity s WHERE pid = {pid}"),
        format!("SELECT query FROM pg_stat_get_activity({pid})"),
        format!("SELECT x.query FROM pg_catalog.pg_stat_get_activity(NULL) AS x(a, b, c) WHERE x.b = {pid}"),
        format!("SELECT a.query FROM pg_stat_get_backend_idset() b, LATERAL pg_stat_get_activity(pg_stat_get_backend_pid(b)) a WHERE a.pid = {pid}"),
        format!("SELECT * FROM ROWS FROM (pg_stat_get_activity({pid}), generate_series(1, 2)) WITH ORDINALITY"),
        format!("SELECT query FROM {v} WHERE pid = {pid}"),
        format!("SELECT {v}_plpgsql()"),
        format!("SELECT * FROM {v}_sql()"),
        format!("WITH w AS (SELECT query FROM pg_stat_activity) SELECT * FROM w"),
        format!("SELECT (SELECT query FROM pg_stat_activity WHERE pid = {pid})"),
    ] {
        let out = rows_text_ok(&mut c, &sql);
        s.assert_clean(&sql, &out);
    }
    let out = rows_text_ok(
        &mut c,
        &format!("SELECT query FROM pg_stat_activity WHERE pid = {pid}"),
    );
    assert!(
        out.contains("<redacted>") && out.contains("AS ssn"),
        "the statement's shape stays: {out}"
    );
    let mut copy = vec![];
    c.copy_out(
        format!("COPY (SELECT query FROM pg_stat_activity WHERE pid = {pid}) TO STDOUT").as_str(),
    )
    .unwrap()
    .read_to_end(&mut copy)
    .unwrap();
    s.assert_clean("COPY", &String::from_utf8_lossy(&copy));
    assert!(!copy.is_empty());
    // not at all: the functions outside FROM, the one-session function anywhere
    for sql in [
        "SELECT (pg_stat_get_activity(NULL)).query".to_string(),
        "SELECT pg_stat_get_activity(NULL)".to_string(),
        format!("SELECT count(*) FROM pg_stat_activity WHERE EXISTS (SELECT (pg_stat_get_activity({pid})).query)"),
        format!("SELECT pg_stat_get_backend_activity(b) FROM pg_stat_get_backend_idset() b"),
        format!("SELECT * FROM pg_stat_get_backend_activity(1)"),
        format!("SELECT {v}_scalar(b) FROM pg_stat_get_backend_idset() b"),
        format!("DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(pg_stat_get_backend_activity(b), ' ') FROM pg_stat_get_backend_idset() b); END $$"),
    ] {
        refused(&mut c, &sql);
    }
    // the rest of pg_stat_activity is there
    let state = rows_text_ok(
        &mut c,
        &format!("SELECT state, usename IS NOT NULL FROM pg_stat_activity WHERE pid = {pid}"),
    );
    assert_eq!(state.trim(), "idle|t");
}

#[test]
fn pg_stat_statements_texts_reach_agents_redacted() {
    let s = setup("qs");
    let mut a = admin();
    a.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .unwrap();
    let preloaded =
        rows_text_ok(&mut a, "SHOW shared_preload_libraries").contains("pg_stat_statements");
    let mut c = connect(&s.agent);
    // the plan redacts the query column, whether or not the module is loaded
    for sql in [
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT query FROM pg_stat_statements",
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM pg_stat_statements(true)",
    ] {
        let plan = rows_text_ok(&mut c, sql);
        assert!(plan.contains("agent_guard.redact_query"), "{sql}:\n{plan}");
    }
    refused(&mut c, "SELECT (pg_stat_statements(true)).query");
    if preloaded {
        let mut human = connect(&superuser());
        let secret = &s.secrets[0];
        // utility statements keep their literals in pg_stat_statements
        human
            .batch_execute(&format!("DO $$ BEGIN PERFORM '{secret}'; END $$"))
            .unwrap();
        let real = rows_text_ok(
            &mut a,
            "SELECT string_agg(query, ' ') FROM pg_stat_statements",
        );
        assert!(real.contains(secret.as_str()), "{real}");
        let out = rows_text_ok(
            &mut c,
            "SELECT string_agg(query, ' ') FROM pg_stat_statements",
        );
        s.assert_clean("pg_stat_statements", &out);
    } else {
        eprintln!("pg_stat_statements is not preloaded: its rows were not read");
    }
}
