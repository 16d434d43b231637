//! Foreign scans are no way out: a postgres_fdw foreign table whose user
//! mapping logs the agent in as a human (over loopback, into this very
//! cluster) would return raw values from a session agent_guard does not
//! know is an agent's. Every read and write of a foreign table by an agent —
//! directly, through views, functions, partitions, COPY, TRUNCATE — is
//! `admin`: refused, with or without grants, superuser or not; humans are
//! untouched.

use agent_guard_integration::*;
use postgres::Client;

fn refused(c: &mut Client, sql: &str, secret: &str) {
    match rows_text(c, sql) {
        Ok(out) => panic!("{sql}: not refused:\n{out}"),
        Err(e) => {
            let text = describe(&e);
            assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {text}");
            let db = e.as_db_error().unwrap();
            assert!(
                db.hint().is_some() && db.detail().is_some(),
                "{sql}: {text}"
            );
            assert!(!text.contains(secret), "{sql}: {text}");
        }
    }
}

#[test]
fn foreign_tables_are_refused_to_agents_whoever_the_mapping_logs_in_as() {
    let sponsor = create_login_role("ft_sp", "IN ROLE agent_guard_approver");
    let approver = create_login_role("ft_ap", "IN ROLE agent_guard_approver");
    let agent = create_login_role("ft_ag", "");
    let root_agent = create_login_role("ft_root", "SUPERUSER");
    let human = create_login_role("ft_human", "");
    let t = unique_name("ft_customers");
    let secret = format!(
        "219-{:02}-{:04}",
        std::process::id() % 89 + 10,
        std::process::id() % 8999 + 1000
    );
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS postgres_fdw;
         CREATE TABLE {t} (id int PRIMARY KEY, ssn text);
         INSERT INTO {t} VALUES (1, '{secret}');
         SECURITY LABEL FOR agent_guard ON COLUMN {t}.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         GRANT ALL ON {t} TO {human};
         CREATE SERVER {t}_loop FOREIGN DATA WRAPPER postgres_fdw
             OPTIONS (host '{host}', port '{port}', dbname '{db}');
         CREATE USER MAPPING FOR {agent} SERVER {t}_loop OPTIONS (user '{human}', password_required 'false');
         CREATE USER MAPPING FOR {root_agent} SERVER {t}_loop OPTIONS (user '{human}', password_required 'false');
         CREATE USER MAPPING FOR PUBLIC SERVER {t}_loop OPTIONS (user '{human}', password_required 'false');
         CREATE FOREIGN TABLE {t}_remote (id int, ssn text) SERVER {t}_loop OPTIONS (table_name '{t}');
         CREATE VIEW {t}_remote_v AS SELECT * FROM {t}_remote;
         CREATE FUNCTION {t}_remote_f() RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER AS $$
             BEGIN RETURN QUERY SELECT ssn FROM {t}_remote; END $$;
         CREATE TABLE {t}_parts (id int, ssn text) PARTITION BY RANGE (id);
         CREATE TABLE {t}_parts_local PARTITION OF {t}_parts FOR VALUES FROM (100) TO (200);
         CREATE FOREIGN TABLE {t}_parts_remote PARTITION OF {t}_parts FOR VALUES FROM (0) TO (100)
             SERVER {t}_loop OPTIONS (table_name '{t}');
         GRANT ALL ON {t}_remote, {t}_remote_v, {t}_parts, {t}_parts_local TO {agent}, {root_agent};
         GRANT EXECUTE ON FUNCTION {t}_remote_f() TO {agent};
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');
         SELECT agent_guard.register_agent('{root_agent}', '{sponsor}');",
        host = host(),
        port = port(),
        db = database(),
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    // the human reads through the foreign table
    let mut h = connect(&sponsor);
    a.batch_execute(&format!("GRANT SELECT ON {t}_remote TO {sponsor}"))
        .unwrap();
    assert!(rows_text_ok(&mut h, &format!("SELECT ssn FROM {t}_remote")).contains(&secret));

    let reads = [
        format!("SELECT * FROM {t}_remote"),
        format!("SELECT count(*) FROM {t}_remote"),
        format!("SELECT ssn FROM {t}_remote_v"),
        format!("SELECT * FROM {t}_remote_f()"),
        format!("SELECT * FROM {t}_parts"),
        format!("SELECT * FROM {t}_parts WHERE id < 50"),
        format!("SELECT (SELECT ssn FROM {t}_remote LIMIT 1)"),
        format!("WITH w AS (SELECT * FROM {t}_remote) SELECT * FROM w"),
        format!("SELECT query_to_xml('SELECT ssn FROM {t}_remote', true, false, '')"),
        format!("EXPLAIN ANALYZE SELECT * FROM {t}_remote"),
        format!("BEGIN; DECLARE c CURSOR FOR SELECT * FROM {t}_remote; FETCH ALL FROM c; COMMIT"),
        format!("COPY (SELECT * FROM {t}_remote) TO STDOUT"),
    ];
    let writes = [
        format!("INSERT INTO {t}_remote VALUES (2, '000-00-0000')"),
        format!("UPDATE {t}_remote SET ssn = 'x' WHERE id = 1"),
        format!("DELETE FROM {t}_remote"),
        format!("TRUNCATE {t}_remote"),
        format!("COPY {t}_remote FROM STDIN"),
        format!("INSERT INTO {t}_parts VALUES (3, 'x')"),
        format!("UPDATE {t}_parts SET id = 5 WHERE id = 150"),
        format!("COPY {t}_parts FROM STDIN"),
        format!("TRUNCATE {t}_parts"),
    ];
    for who in [&agent, &root_agent] {
        let mut c = connect(who);
        for sql in &reads {
            let _ = c.batch_execute("ROLLBACK");
            refused(&mut c, sql, &secret);
        }
        // an approved write grant does not cover a foreign table either
        let id: i64 = c
            .query_one(
                &format!("SELECT agent_guard.request_access('ddl', reason => 'fdw test', ttl => '10 minutes')"),
                &[],
            )
            .unwrap()
            .get(0);
        connect(&approver)
            .query_one("SELECT agent_guard.approve($1)", &[&id])
            .unwrap_or_else(|e| panic!("approve: {}", describe(&e)));
        for sql in &writes {
            let _ = c.batch_execute("ROLLBACK");
            refused(&mut c, sql, &secret);
        }
        refused(
            &mut c,
            &format!(
                "IMPORT FOREIGN SCHEMA public LIMIT TO ({t}) FROM SERVER {t}_loop INTO public"
            ),
            &secret,
        );
        // the classification says so beforehand
        let risk = rows_text_ok(
            &mut c,
            &format!("SELECT risk FROM agent_guard.classify('SELECT * FROM {t}_remote')"),
        );
        assert_eq!(risk.trim(), "admin");
        // local partitions and tables stay readable
        rows_text_ok(&mut c, &format!("SELECT * FROM {t}_parts_local"));
    }
    // nothing was written remotely
    let rows = rows_text_ok(&mut a, &format!("SELECT id, ssn FROM {t} ORDER BY id"));
    assert_eq!(rows, format!("1|{secret}\n"));
    let _ = a.batch_execute(&format!(
        "DROP TABLE {t}_parts; DROP FOREIGN TABLE {t}_remote CASCADE; DROP FUNCTION IF EXISTS {t}_remote_f(); DROP SERVER {t}_loop CASCADE;"
    ));
}
