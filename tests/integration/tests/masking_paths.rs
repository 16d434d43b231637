//! Inline masking with real clients: an agent reads regulated columns only
//! masked, whatever the read path — and the raw values reach neither its
//! results, nor agent_guard.audit_log, nor the server log — while its human
//! sponsor keeps reading real values and granted writes keep real data intact.
//!
//! The raw values are generated server-side from a seed, so they never appear
//! in any statement text either.

use agent_guard_integration::*;
use postgres::Client;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

struct Shop {
    sponsor: String,
    agent: String,
    approver: String,
    /// the customers table
    t: String,
    /// raw values of the two rows: (ssn, card, email)
    raw: Vec<(String, String, String)>,
}

static SEED: AtomicU32 = AtomicU32::new(0);

/// A customers table with two rows of regulated data, masked for agents; an
/// agent (SELECT on it, statements logged), its sponsor and an approver.
fn shop(prefix: &str) -> Shop {
    let sponsor = create_login_role(&format!("{prefix}_sp"), "IN ROLE agent_guard_approver");
    let approver = create_login_role(&format!("{prefix}_ap"), "IN ROLE agent_guard_approver");
    let agent = create_login_role(&format!("{prefix}_ag"), "");
    let t = unique_name(&format!("{prefix}_customers"));
    let seed = (std::process::id() % 1000) * 1000 + SEED.fetch_add(1, Ordering::SeqCst) * 37 + 11;
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, name text, email text, ssn text, card_number text,
                           note text, score int CHECK (score >= 0));
         INSERT INTO {t}
         SELECT g, 'Customer ' || g,
                'person' || ({seed} + g) || '@mail' || g || '.example.com',
                pg_catalog.lpad((({seed} + g) % 899 + 100)::text, 3, '0') || '-' ||
                pg_catalog.lpad((({seed} * 7 + g) % 89 + 10)::text, 2, '0') || '-' ||
                pg_catalog.lpad((({seed} * 13 + g * 101) % 8999 + 1000)::text, 4, '0'),
                '4' || pg_catalog.lpad((({seed}::bigint * 7919 + g * 104729) % 1000000000000000)::text, 15, '0'),
                'row ' || g, 1
         FROM pg_catalog.generate_series(1, 2) g;
         SECURITY LABEL FOR agent_guard ON COLUMN {t}.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         SECURITY LABEL FOR agent_guard ON COLUMN {t}.card_number IS 'MASKED WITH FUNCTION agent_guard.card_number(card_number)';
         SECURITY LABEL FOR agent_guard ON COLUMN {t}.email IS 'MASKED WITH FUNCTION agent_guard.email(email)';
         GRANT SELECT ON {t} TO {agent}, {sponsor};
         ALTER ROLE {agent} SET log_statement = 'all';
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    let raw = a
        .query(
            &format!("SELECT ssn, card_number, email FROM {t} ORDER BY id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Shop {
        sponsor,
        agent,
        approver,
        t,
        raw,
    }
}

impl Shop {
    /// Every raw regulated value (and the SSN's first five digits).
    fn secrets(&self) -> Vec<String> {
        let mut v = vec![];
        for (ssn, card, email) in &self.raw {
            v.push(ssn.clone());
            v.push(ssn[..6].to_string());
            v.push(card.clone());
            v.push(card[..12].to_string());
            v.push(email.clone());
        }
        v
    }

    /// The masked SSN of row `i` (0-based) as agents see it.
    fn masked_ssn(&self, i: usize) -> String {
        format!("***-**-{}", &self.raw[i].0[7..])
    }

    fn assert_clean(&self, what: &str, text: &str) {
        for s in self.secrets() {
            assert!(
                !text.contains(&s),
                "{what}: raw value {s:?} leaked:\n{text}"
            );
        }
    }
}

fn copy_out(c: &mut Client, sql: &str) -> String {
    let mut b = vec![];
    c.copy_out(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .read_to_end(&mut b)
        .unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

/// The agent's audit rows (statement text, parameters, error message), once
/// `expected` of them are written with a transaction outcome.
fn audit_texts(admin: &mut Client, pid: i32, expected: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = admin
            .query(
                "SELECT coalesce(statement_text, '') || ' ' || coalesce(array_to_string(parameters, ' '), '')
                        || ' ' || coalesce(error_message, '') || ' ' || coalesce(reason, ''),
                        transaction_outcome IS NOT NULL
                 FROM agent_guard.audit_log WHERE backend_pid = $1 ORDER BY id",
                &[&pid],
            )
            .unwrap();
        let done = rows.iter().filter(|r| r.get::<_, bool>(1)).count();
        if rows.len() >= expected && done == rows.len() {
            return rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n");
        }
        assert!(
            Instant::now() < deadline,
            "expected {expected} finished audit rows for pid {pid}, have {} ({done} finished)",
            rows.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// A just-in-time grant for the agent, approved by the approver.
fn grant(agent: &mut Client, approver: &str, risk: &str) -> i64 {
    let id: i64 = agent
        .query_one(
            &format!("SELECT agent_guard.request_access('{risk}', reason => 'masking test', ttl => '10 minutes')"),
            &[],
        )
        .unwrap()
        .get(0);
    connect(approver)
        .query_one("SELECT agent_guard.approve($1)", &[&id])
        .unwrap_or_else(|e| panic!("approve: {}", describe(&e)));
    id
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[test]
fn every_read_path_is_masked_for_agents_and_real_for_the_sponsor() {
    let s = shop("mp");
    let t = &s.t;
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE ROLE {t}_owner NOLOGIN;
         GRANT SELECT ON {t} TO {t}_owner;
         CREATE VIEW {t}_v AS SELECT id, ssn, card_number, email FROM {t};
         ALTER VIEW {t}_v OWNER TO {t}_owner;
         CREATE VIEW {t}_vv AS SELECT * FROM {t}_v WHERE id > 0;
         CREATE VIEW {t}_sb WITH (security_barrier) AS SELECT id, ssn FROM {t} WHERE id > 0;
         CREATE FUNCTION {t}_srf() RETURNS SETOF {t} LANGUAGE sql STABLE AS $$ SELECT * FROM {t} $$;
         CREATE FUNCTION {t}_scalar(i int) RETURNS text LANGUAGE sql STABLE AS $$ SELECT ssn FROM {t} WHERE id = i $$;
         CREATE FUNCTION {t}_std() RETURNS TABLE (ssn text, card text) LANGUAGE sql STABLE
             BEGIN ATOMIC SELECT ssn, card_number FROM {t}; END;
         CREATE FUNCTION {t}_plpgsql() RETURNS text LANGUAGE plpgsql AS $$
             DECLARE r text; BEGIN SELECT string_agg(ssn || ' ' || card_number, ',') INTO r FROM {t}; RETURN r; END $$;
         CREATE FUNCTION {t}_dyn() RETURNS text LANGUAGE plpgsql AS $$
             DECLARE r text; BEGIN EXECUTE format('SELECT string_agg(email, '','') FROM %I', '{t}') INTO r; RETURN r; END $$;
         CREATE FUNCTION {t}_definer() RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER AS $$
             BEGIN RETURN QUERY SELECT ssn || ' ' || card_number || ' ' || email FROM {t}; END $$;
         GRANT SELECT ON {t}_v, {t}_vv, {t}_sb TO {agent};",
        agent = s.agent
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));

    // the human sponsor reads real values
    let mut human = connect(&s.sponsor);
    let real = rows_text_ok(
        &mut human,
        &format!("SELECT ssn, card_number, email FROM {t} ORDER BY id"),
    );
    assert!(
        real.contains(&s.raw[0].0) && real.contains(&s.raw[1].1),
        "{real}"
    );

    let log_from = server_log_len();
    let mut c = connect(&s.agent);
    let agent_pid = pid(&mut c);
    let mut outputs = String::new();
    let mut statements = 0;
    let mut read = |c: &mut Client, sql: &str| -> String {
        let out = rows_text_ok(c, sql);
        s.assert_clean(sql, &out);
        statements += 1;
        outputs.push_str(&out);
        out
    };

    let plain = read(
        &mut c,
        &format!("SELECT id, ssn, card_number, email FROM {t} ORDER BY id"),
    );
    assert!(
        plain.contains(&s.masked_ssn(0)),
        "masked SSN shown: {plain}"
    );
    assert!(
        plain.contains(&format!("************{}", &s.raw[0].1[12..])),
        "{plain}"
    );
    assert!(plain.contains("***@mail1.example.com"), "{plain}");
    read(&mut c, &format!("SELECT * FROM public.{t}"));
    read(&mut c, &format!("SELECT x FROM {t} x"));
    read(&mut c, &format!("SELECT row_to_json(x) FROM {t} x"));
    read(&mut c, &format!("TABLE {t}"));
    // joins, self-joins, subqueries, CTEs, set operations, LATERAL
    read(
        &mut c,
        &format!("SELECT a.ssn, b.card_number FROM {t} a JOIN {t} b ON a.id = b.id"),
    );
    read(
        &mut c,
        &format!("SELECT (SELECT ssn FROM {t} WHERE id = 1), (SELECT max(card_number) FROM {t})"),
    );
    read(&mut c, &format!("SELECT * FROM (SELECT ssn FROM {t}) s"));
    read(
        &mut c,
        &format!("WITH w AS (SELECT * FROM {t}) SELECT ssn, email FROM w"),
    );
    read(&mut c, &format!("WITH RECURSIVE r(n, s) AS (SELECT 1, (SELECT ssn FROM {t} LIMIT 1) UNION ALL SELECT n + 1, s FROM r WHERE n < 2) SELECT s FROM r"));
    read(
        &mut c,
        &format!("SELECT ssn FROM {t} UNION SELECT card_number FROM {t}"),
    );
    read(&mut c, &format!("SELECT l.e FROM generate_series(1, 2) g, LATERAL (SELECT email AS e FROM {t} WHERE id = g) l"));
    read(
        &mut c,
        &format!("SELECT id FROM {t} WHERE EXISTS (SELECT 1 FROM {t} i WHERE i.ssn = {t}.ssn)"),
    );
    // views: owned by another role, a view on a view, a security-barrier view
    read(&mut c, &format!("SELECT * FROM {t}_v"));
    read(&mut c, &format!("SELECT * FROM {t}_vv"));
    read(&mut c, &format!("SELECT * FROM {t}_sb"));
    // functions: inlinable set-returning SQL, scalar SQL, SQL-standard body, PL/pgSQL, dynamic SQL, SECURITY DEFINER
    read(
        &mut c,
        &format!("SELECT ssn, card_number, email FROM {t}_srf()"),
    );
    read(&mut c, &format!("SELECT {t}_scalar(1), {t}_scalar(2)"));
    read(&mut c, &format!("SELECT * FROM {t}_std()"));
    read(&mut c, &format!("SELECT {t}_plpgsql()"));
    read(&mut c, &format!("SELECT {t}_dyn()"));
    read(&mut c, &format!("SELECT * FROM {t}_definer()"));
    read(&mut c, &format!("DO $$ DECLARE r record; BEGIN FOR r IN SELECT ssn FROM {t} LOOP PERFORM r.ssn; END LOOP; END $$"));
    // cursors, PREPARE/EXECUTE
    read(&mut c, &format!("BEGIN; DECLARE cur CURSOR FOR SELECT ssn, card_number, email FROM {t}; FETCH ALL FROM cur; CLOSE cur; COMMIT"));
    read(&mut c, &format!("BEGIN; DECLARE cur2 SCROLL CURSOR WITH HOLD FOR SELECT * FROM {t}; COMMIT; FETCH LAST FROM cur2; FETCH FIRST FROM cur2; CLOSE cur2"));
    read(&mut c, &format!("PREPARE p(int) AS SELECT ssn, card_number, email FROM {t} WHERE id = $1; EXECUTE p(1); EXECUTE p(2)"));
    // WHERE, ORDER BY, GROUP BY see masked values: no filtering on real values
    let by_real = read(
        &mut c,
        &format!(
            "SELECT count(*) FROM {t} WHERE ssn LIKE '{}%'",
            &s.raw[0].0[..3]
        ),
    );
    assert_eq!(
        by_real.trim(),
        "0",
        "a predicate on the real SSN prefix matches nothing"
    );
    let by_masked = read(
        &mut c,
        &format!("SELECT count(*) FROM {t} WHERE ssn = '{}'", s.masked_ssn(0)),
    );
    assert_eq!(by_masked.trim(), "1");
    read(
        &mut c,
        &format!("SELECT ssn, count(*) FROM {t} GROUP BY ssn ORDER BY ssn"),
    );
    read(
        &mut c,
        &format!("SELECT id FROM {t} ORDER BY card_number DESC, email"),
    );
    // EXPLAIN (VERBOSE, ANALYZE)
    let plan = read(
        &mut c,
        &format!("EXPLAIN (ANALYZE, VERBOSE) SELECT * FROM {t} WHERE ssn <> ''"),
    );
    assert!(
        plan.contains("agent_guard.partial"),
        "the plan shows the mask: {plan}"
    );
    read(
        &mut c,
        &format!("EXPLAIN (ANALYZE, VERBOSE, FORMAT json) SELECT * FROM {t}_v"),
    );

    // the extended protocol, with parameters
    for sql in [
        format!("SELECT ssn, card_number, email FROM {t} WHERE id = $1"),
        format!("SELECT ssn FROM {t}_v WHERE id = $1"),
    ] {
        let rows = c
            .query(sql.as_str(), &[&1i32])
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
        let v: String = rows[0].get(0);
        assert_eq!(v, s.masked_ssn(0));
        statements += 1;
    }
    // COPY TO STDOUT: the table, a column list, a query
    for sql in [
        format!("COPY {t} TO STDOUT"),
        format!("COPY {t} (id, ssn) TO STDOUT WITH (FORMAT csv, HEADER)"),
        format!("COPY public.{t} TO STDOUT WITH (FORMAT binary)"),
        format!("COPY (SELECT card_number, email FROM {t}_v) TO STDOUT"),
    ] {
        let out = copy_out(&mut c, &sql);
        s.assert_clean(&sql, &out);
        statements += 1;
    }
    assert!(copy_out(&mut c, &format!("COPY {t} TO STDOUT")).contains(&s.masked_ssn(1)));

    // error messages that would quote a value quote the masked one
    let e = c
        .batch_execute(&format!("SELECT ssn::int FROM {t}"))
        .expect_err("an SSN is not an integer");
    s.assert_clean("cast error", &describe(&e));
    assert!(describe(&e).contains("***-**-"), "{}", describe(&e));

    drop(c);
    // the trail and the server log hold no raw value either
    let trail = audit_texts(&mut a, agent_pid, statements);
    s.assert_clean("agent_guard.audit_log", &trail);
    std::thread::sleep(Duration::from_millis(300));
    let log = server_log_since(log_from);
    assert!(
        log.contains(&format!("{t}_definer")),
        "the agent's statements are logged"
    );
    s.assert_clean("server log", &log);
    assert!(outputs.contains("***-**-"));
}

#[test]
fn granted_writes_keep_real_data_and_return_masked_values() {
    let s = shop("mw");
    let t = &s.t;
    let mut a = admin();
    a.batch_execute(&format!(
        "GRANT INSERT, UPDATE, DELETE ON {t} TO {agent};
         CREATE TABLE {t}_copy (id int, ssn text, card text);
         GRANT ALL ON {t}_copy TO {agent};
         GRANT CREATE ON SCHEMA public TO {agent};",
        agent = s.agent
    ))
    .unwrap();
    let log_from = server_log_len();
    let mut c = connect(&s.agent);
    let agent_pid = pid(&mut c);
    // the sponsor may approve writes (but not schema changes): use the approver for both
    grant(&mut c, &s.approver, "ddl");

    // a granted UPDATE of another column leaves the SSN intact; RETURNING is masked
    let ret = rows_text_ok(
        &mut c,
        &format!("UPDATE {t} SET note = 'checked' WHERE id = 1 RETURNING *"),
    );
    s.assert_clean("RETURNING", &ret);
    assert!(
        ret.contains(&s.masked_ssn(0)) && ret.contains("checked"),
        "{ret}"
    );
    let stored: (String, String, String, String) = {
        let r = a
            .query_one(
                &format!("SELECT ssn, card_number, email, note FROM {t} WHERE id = 1"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        stored,
        (
            s.raw[0].0.clone(),
            s.raw[0].1.clone(),
            s.raw[0].2.clone(),
            "checked".into()
        ),
        "real data intact"
    );

    // writing a masked value back into a masked column is refused
    for sql in [
        format!("UPDATE {t} SET ssn = ssn WHERE id = 1"),
        format!("UPDATE {t} SET card_number = upper(card_number)"),
        format!("INSERT INTO {t} (id, ssn) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET ssn = {t}.ssn"),
    ] {
        let e = c.batch_execute(&sql).expect_err(&sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e));
    }
    // ON CONFLICT (with EXCLUDED), DELETE ... USING, UPDATE ... FROM the same
    // table and a writable CTE return masked values
    for sql in [
        format!("INSERT INTO {t} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.name WHERE {t}.ssn <> '' RETURNING *"),
        format!("BEGIN; DELETE FROM {t} c USING {t} d WHERE d.id = c.id AND c.id = 2 RETURNING c.*, d.ssn; ROLLBACK"),
        format!("UPDATE {t} SET note = 'n' FROM {t} o WHERE o.id = {t}.id AND o.ssn = {t}.ssn RETURNING {t}.ssn, o.card_number"),
        format!("WITH w AS (UPDATE {t} SET note = 'w' WHERE id = 2 RETURNING *) SELECT ssn, email, card_number FROM w"),
    ] {
        let out = rows_text_ok(&mut c, &sql);
        s.assert_clean(&sql, &out);
        assert!(out.contains("***-**-"), "{sql}: {out}");
    }
    // predicates of writes see masked values too
    let none = rows_text_ok(
        &mut c,
        &format!("DELETE FROM {t} WHERE ssn = '{}' RETURNING id", s.raw[0].0),
    );
    assert_eq!(none, "", "the real SSN matches no masked value");
    // copies receive masked values: INSERT ... SELECT, CREATE TABLE AS, SET other = masked
    rows_text_ok(
        &mut c,
        &format!("INSERT INTO {t}_copy SELECT id, ssn, card_number FROM {t}"),
    );
    rows_text_ok(
        &mut c,
        &format!("CREATE TABLE {t}_ctas AS SELECT id, ssn, email FROM {t}"),
    );
    rows_text_ok(&mut c, &format!("SELECT * INTO {t}_into FROM {t}"));
    rows_text_ok(&mut c, &format!("UPDATE {t} SET note = email WHERE id = 2"));
    for table in [
        format!("{t}_copy"),
        format!("{t}_ctas"),
        format!("{t}_into"),
        t.clone(),
    ] {
        let all = rows_text_ok(&mut a, &format!("SELECT x::text FROM {table} x"));
        if table == *t {
            assert!(all.contains(&s.raw[1].0), "the real SSN stays: {all}");
            assert!(
                all.contains("***@mail2.example.com"),
                "the note got the masked e-mail: {all}"
            );
        } else {
            s.assert_clean(&table, &all);
            assert!(all.contains(&s.masked_ssn(0)), "{table}: {all}");
        }
    }
    // a constraint violation does not show the row's real values
    let e = c
        .batch_execute(&format!("UPDATE {t} SET score = -1 WHERE id = 1"))
        .expect_err("check constraint");
    assert_eq!(sqlstate(&e), "23514");
    s.assert_clean("constraint violation", &describe(&e));
    let e = c
        .batch_execute(&format!("INSERT INTO {t} (id, name) VALUES (1, 'dup')"))
        .expect_err("unique");
    assert_eq!(sqlstate(&e), "23505");
    s.assert_clean("unique violation", &describe(&e));

    drop(c);
    let trail = audit_texts(&mut a, agent_pid, 10);
    s.assert_clean("agent_guard.audit_log", &trail);
    std::thread::sleep(Duration::from_millis(300));
    let log = server_log_since(log_from);
    s.assert_clean("server log", &log);
    assert!(
        log.contains("violates check constraint"),
        "the violation is logged"
    );
}

#[test]
fn materialized_views_of_masked_columns_are_refused_until_labelled() {
    let s = shop("mm");
    let t = &s.t;
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE MATERIALIZED VIEW {t}_mv AS SELECT id, ssn, card_number FROM {t};
         CREATE VIEW {t}_v AS SELECT id, email FROM {t};
         CREATE MATERIALIZED VIEW {t}_mv2 AS SELECT email FROM {t}_v;
         CREATE MATERIALIZED VIEW {t}_names AS SELECT id, name FROM {t};
         GRANT SELECT ON {t}_mv, {t}_mv2, {t}_names TO {agent};",
        agent = s.agent
    ))
    .unwrap();
    let log_from = server_log_len();
    let mut c = connect(&s.agent);
    let agent_pid = pid(&mut c);
    for mv in [format!("{t}_mv"), format!("{t}_mv2")] {
        let e = c
            .batch_execute(&format!("SELECT * FROM {mv}"))
            .expect_err("built from masked columns");
        assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
        let e = c
            .copy_out(format!("COPY (SELECT * FROM {mv}) TO STDOUT").as_str())
            .err()
            .expect("COPY refused too");
        assert_eq!(sqlstate(&e), "42501");
    }
    rows_text_ok(&mut c, &format!("SELECT * FROM {t}_names"));
    a.batch_execute(&format!(
        "SECURITY LABEL FOR agent_guard ON COLUMN {t}_mv.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         SECURITY LABEL FOR agent_guard ON COLUMN {t}_mv.card_number IS 'SENSITIVE';"
    ))
    .unwrap();
    let out = rows_text_ok(&mut c, &format!("SELECT * FROM {t}_mv ORDER BY id"));
    s.assert_clean("labelled materialized view", &out);
    assert!(out.contains(&s.masked_ssn(0)), "{out}");
    drop(c);
    s.assert_clean("agent_guard.audit_log", &audit_texts(&mut a, agent_pid, 6));
    std::thread::sleep(Duration::from_millis(300));
    let log = server_log_since(log_from);
    assert!(
        log.contains("built from masked columns"),
        "the refusals are logged"
    );
    s.assert_clean("server log", &log);
}

#[test]
fn plans_cached_before_masking_are_made_again() {
    let s = shop("mc");
    let t = &s.t;
    let mut a = admin();
    a.batch_execute(&format!("CREATE TABLE {t}_late (id int, secret text); INSERT INTO {t}_late SELECT 1, md5('seed{t}'); GRANT SELECT ON {t}_late TO {};", s.agent))
        .unwrap();
    let secret: String = a
        .query_one(&format!("SELECT secret FROM {t}_late"), &[])
        .unwrap()
        .get(0);
    let mut c = connect(&s.agent);
    // statements prepared (by SQL and by the extended protocol) while the column was not masked
    c.batch_execute(&format!("PREPARE late AS SELECT secret FROM {t}_late"))
        .unwrap();
    let before = rows_text_ok(&mut c, "EXECUTE late");
    assert!(before.contains(&secret), "not masked yet: {before}");
    let stmt = c.prepare(&format!("SELECT secret FROM {t}_late")).unwrap();
    a.batch_execute(&format!(
        "SECURITY LABEL FOR agent_guard ON COLUMN {t}_late.secret IS 'MASKED WITH VALUE ''(masked)''';"
    ))
    .unwrap();
    let after = rows_text_ok(&mut c, "EXECUTE late");
    assert_eq!(after.trim(), "(masked)", "replanned with the mask");
    let v: String = c.query_one(&stmt, &[]).unwrap().get(0);
    assert_eq!(v, "(masked)", "extended-protocol statement replanned");
}

#[test]
fn a_session_that_becomes_an_agent_reads_masked_values_from_then_on() {
    let s = shop("mb");
    let t = &s.t;
    let other = create_login_role("mb_late", "");
    let mut a = admin();
    a.batch_execute(&format!("GRANT SELECT ON {t} TO {other}"))
        .unwrap();
    let mut c = connect(&other);
    let other_pid = pid(&mut c);
    c.batch_execute(&format!("PREPARE p AS SELECT ssn FROM {t} ORDER BY id"))
        .unwrap();
    assert!(
        rows_text_ok(&mut c, "EXECUTE p").contains(&s.raw[0].0),
        "a human reads real values"
    );
    a.batch_execute(&format!(
        "SELECT agent_guard.register_agent('{other}', '{}')",
        s.sponsor
    ))
    .unwrap();
    let out = rows_text_ok(&mut c, "EXECUTE p");
    s.assert_clean("after registration", &out);
    assert!(out.contains(&s.masked_ssn(0)), "{out}");
    drop(c);
    s.assert_clean("agent_guard.audit_log", &audit_texts(&mut a, other_pid, 1));
}

/// Only PostgreSQL's own referential-integrity queries run unmasked: a CHECK
/// constraint evaluated by an `ON DELETE SET NULL` update and a BEFORE
/// DELETE trigger fired by an `ON DELETE CASCADE` (and whatever they call)
/// read masked values like every other statement of the agent.
#[test]
fn statements_nested_in_foreign_key_actions_are_masked() {
    let s = shop("fk");
    let t = &s.t;
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {t}_loot (what text);
         GRANT INSERT ON {t}_loot TO PUBLIC;
         CREATE FUNCTION {t}_peek() RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO {t}_loot SELECT pg_catalog.query_to_xml('SELECT ssn, card_number FROM {t}', true, false, '')::text;
             RETURN true;
           END $$;
         CREATE TABLE {t}_orders (id int PRIMARY KEY,
                                  customer int REFERENCES {t}(id) ON DELETE SET NULL,
                                  CHECK ({t}_peek()));
         CREATE TABLE {t}_notes (id int PRIMARY KEY,
                                 customer int REFERENCES {t}(id) ON DELETE CASCADE);
         CREATE FUNCTION {t}_grab() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO {t}_loot SELECT ssn || ' ' || card_number FROM {t};
             RETURN OLD;
           END $$;
         CREATE TRIGGER {t}_grab BEFORE DELETE ON {t}_notes FOR EACH ROW EXECUTE FUNCTION {t}_grab();
         INSERT INTO {t} SELECT 3, name, email, ssn, card_number, note, score FROM {t} WHERE id = 1;
         INSERT INTO {t}_orders VALUES (1, 1);
         INSERT INTO {t}_notes VALUES (1, 2);
         TRUNCATE {t}_loot;
         GRANT DELETE ON {t} TO {agent};",
        agent = s.agent
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    let mut c = connect(&s.agent);
    grant(&mut c, &s.approver, "write");
    // SET NULL on the orders row: its CHECK constraint reads customers.
    rows_text_ok(&mut c, &format!("DELETE FROM {t} WHERE id = 1"));
    // CASCADE to the notes row: its BEFORE DELETE trigger reads customers.
    rows_text_ok(&mut c, &format!("DELETE FROM {t} WHERE id = 2"));
    let loot: Vec<String> = a
        .query(&format!("SELECT what FROM {t}_loot"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        loot.len() >= 2,
        "the nested statements did not run: {loot:?}"
    );
    let all = loot.join("\n");
    s.assert_clean("statements nested in foreign-key actions", &all);
    // the referential actions themselves still worked
    let nulls: i64 = a
        .query_one(
            &format!("SELECT count(*) FROM {t}_orders WHERE customer IS NULL"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nulls, 1);
    let notes: i64 = a
        .query_one(&format!("SELECT count(*) FROM {t}_notes"), &[])
        .unwrap()
        .get(0);
    assert_eq!(notes, 0);
    drop(c);
    let _ = a.batch_execute(&format!(
        "DROP TABLE {t}_orders, {t}_notes, {t}_loot; DROP FUNCTION {t}_peek(); DROP FUNCTION {t}_grab();"
    ));
}

/// The refusal an agent gets for a materialized view computed from masked
/// columns: 42501, naming the view, with a HINT.
fn assert_tainted(c: &mut Client, s: &Shop, sql: &str) {
    match rows_text(c, sql) {
        Ok(out) => {
            panic!("{sql}: an agent read a materialized view computed from masked columns:\n{out}")
        }
        Err(e) => {
            assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e));
            let db = e.as_db_error().unwrap();
            assert!(
                db.message().contains("built from masked columns") && db.hint().is_some(),
                "{sql}: {}",
                describe(&e)
            );
            s.assert_clean(sql, &describe(&e));
        }
    }
}

/// Materialized views a human built are judged by what their population
/// actually read — whole rows (`c::text`, `row_to_json(c)`), other
/// materialized views, set-returning SQL and PL/pgSQL functions, dynamic SQL,
/// views, parallel plans — not by the columns their definition names.
#[test]
fn materialized_views_are_tainted_by_what_their_population_read() {
    let s = shop("mt");
    let t = &s.t;
    let mut a = admin();
    let force = debug_parallel_setting(&mut a);
    // From PostgreSQL 17 on, a materialized view's population runs with
    // search_path = pg_catalog, pg_temp: the functions and query strings it
    // calls name the table with its schema.
    a.batch_execute(&format!(
        "CREATE FUNCTION {t}_ssns() RETURNS TABLE (s text) LANGUAGE sql STABLE AS $$ SELECT ssn FROM public.{t} $$;
         CREATE FUNCTION {t}_names() RETURNS TABLE (s text) LANGUAGE sql STABLE AS $$ SELECT name FROM public.{t} $$;
         CREATE FUNCTION {t}_card(i int) RETURNS text LANGUAGE plpgsql STABLE AS $$
             DECLARE r text; BEGIN SELECT card_number INTO r FROM public.{t} WHERE id = i; RETURN r; END $$;
         CREATE FUNCTION {t}_dyn(i int) RETURNS text LANGUAGE plpgsql STABLE AS $$
             DECLARE r text; BEGIN EXECUTE format('SELECT email FROM public.%I WHERE id = $1', '{t}') INTO r USING i; RETURN r; END $$;
         CREATE FUNCTION {t}_par(i int) RETURNS text LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
             DECLARE r text; BEGIN SELECT ssn INTO r FROM public.{t} WHERE id = i; RETURN r; END $$;
         CREATE VIEW {t}_rows AS SELECT c FROM {t} c;
         CREATE MATERIALIZED VIEW {t}_text AS SELECT c::text AS t FROM {t} c;
         CREATE MATERIALIZED VIEW {t}_json AS SELECT row_to_json(c) AS j FROM {t} c;
         CREATE MATERIALIZED VIEW {t}_base AS SELECT id, ssn FROM {t};
         CREATE MATERIALIZED VIEW {t}_over AS SELECT ssn FROM {t}_base;
         CREATE MATERIALIZED VIEW {t}_over2 AS SELECT * FROM {t}_over;
         CREATE MATERIALIZED VIEW {t}_srf AS SELECT s FROM {t}_ssns();
         CREATE MATERIALIZED VIEW {t}_plpgsql AS SELECT {t}_card(id) AS c FROM generate_series(1, 2) id;
         CREATE MATERIALIZED VIEW {t}_dynamic AS SELECT {t}_dyn(id) AS e FROM generate_series(1, 2) id;
         CREATE MATERIALIZED VIEW {t}_xml AS SELECT query_to_xml('SELECT card_number FROM public.{t}', true, false, '')::text AS x;
         CREATE MATERIALIZED VIEW {t}_viewrow AS SELECT r::text AS t FROM {t}_rows r;
         CREATE MATERIALIZED VIEW {t}_late AS SELECT id, note FROM {t};
         CREATE MATERIALIZED VIEW {t}_clean AS SELECT id, name FROM {t};
         CREATE UNIQUE INDEX ON {t}_clean (id);
         CREATE MATERIALIZED VIEW {t}_clean_srf AS SELECT s FROM {t}_names();
         CREATE MATERIALIZED VIEW {t}_later AS SELECT s FROM {t}_names();
         SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
         CREATE MATERIALIZED VIEW {t}_parallel AS SELECT {t}_par(id) AS s FROM generate_series(1, 2) id;
         RESET {force};
         EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) CREATE MATERIALIZED VIEW {t}_explained AS SELECT c::text AS t FROM {t} c;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {agent};
         CREATE VIEW {t}_on_text AS SELECT * FROM {t}_text;
         GRANT SELECT ON {t}_on_text TO {agent};
         CREATE FUNCTION {t}_read_text() RETURNS SETOF text LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY SELECT t FROM {t}_text; END $$;",
        agent = s.agent
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    // the human reads real values in every one of them
    let raw = rows_text_ok(&mut a, &format!("SELECT string_agg(t, ' ') FROM {t}_text"));
    assert!(raw.contains(&s.raw[0].0), "{raw}");

    let mut c = connect(&s.agent);
    for mv in [
        "text",
        "json",
        "base",
        "over",
        "over2",
        "srf",
        "plpgsql",
        "dynamic",
        "xml",
        "viewrow",
        "parallel",
        "explained",
    ] {
        assert_tainted(&mut c, &s, &format!("SELECT * FROM {t}_{mv}"));
        let e = c
            .copy_out(format!("COPY (SELECT * FROM {t}_{mv}) TO STDOUT").as_str())
            .err()
            .unwrap_or_else(|| panic!("COPY of {t}_{mv} refused too"));
        assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    }
    // through a view and a function
    assert_tainted(&mut c, &s, &format!("SELECT * FROM {t}_on_text"));
    assert_tainted(&mut c, &s, &format!("SELECT * FROM {t}_read_text()"));
    // what read no masked column stays readable
    for mv in ["late", "clean", "clean_srf", "later"] {
        let out = rows_text_ok(&mut c, &format!("SELECT * FROM {t}_{mv}"));
        s.assert_clean(mv, &out);
        assert!(!out.is_empty(), "{mv}");
    }
    // a concurrent refresh reads the view itself: still clean
    a.batch_execute(&format!("REFRESH MATERIALIZED VIEW CONCURRENTLY {t}_clean"))
        .unwrap();
    rows_text_ok(&mut c, &format!("SELECT * FROM {t}_clean"));

    // a column labelled after the population taints what read it
    a.batch_execute(&format!(
        "SECURITY LABEL FOR agent_guard ON COLUMN {t}.note IS 'MASKED WITH VALUE ''(note)''';"
    ))
    .unwrap();
    assert_tainted(&mut c, &s, &format!("SELECT * FROM {t}_late"));
    // the function behind a clean view now reads SSNs: its next refresh taints it
    a.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {t}_names() RETURNS TABLE (s text) LANGUAGE sql STABLE AS $$ SELECT ssn FROM public.{t} $$;"
    ))
    .unwrap();
    rows_text_ok(&mut c, &format!("SELECT * FROM {t}_later"));
    a.batch_execute(&format!("REFRESH MATERIALIZED VIEW {t}_later"))
        .unwrap();
    assert_tainted(&mut c, &s, &format!("SELECT * FROM {t}_later"));
    // ... and a refresh that no longer reads masked columns clears it
    a.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {t}_ssns() RETURNS TABLE (s text) LANGUAGE sql STABLE AS $$ SELECT name FROM public.{t} $$;
         REFRESH MATERIALIZED VIEW {t}_srf;"
    ))
    .unwrap();
    let out = rows_text_ok(&mut c, &format!("SELECT * FROM {t}_srf"));
    assert!(out.contains("Customer 1"), "{out}");
    // labelled, a materialized view is read masked
    a.batch_execute(&format!(
        "SECURITY LABEL FOR agent_guard ON COLUMN {t}_text.t IS 'MASKED WITH VALUE ''(row)''';"
    ))
    .unwrap();
    let out = rows_text_ok(&mut c, &format!("SELECT * FROM {t}_text"));
    assert_eq!(out.trim(), "(row)\n(row)".trim(), "{out}");
    // the view reports how each taint was found
    let taints = rows_text_ok(
        &mut a,
        &format!("SELECT relation, built_from FROM agent_guard.masking_taints WHERE relation::text LIKE '{t}%' ORDER BY 1"),
    );
    assert!(
        taints.contains(&format!("{t}_over2|{{{t}_over}}")),
        "{taints}"
    );
}

/// An agent's own materialized view holds the masks it read; a human's
/// refresh fills it with real values and taints it; an agent's refresh of a
/// view whose population would read masked columns is refused, also when
/// only a function changed since the last population.
#[test]
fn agents_refresh_no_materialized_view_from_masked_columns() {
    let s = shop("mr");
    let t = &s.t;
    let mut a = admin();
    // schema-qualified: a refresh runs with search_path = pg_catalog, pg_temp
    // from PostgreSQL 17 on
    a.batch_execute(&format!(
        "CREATE FUNCTION {t}_label(i int) RETURNS text LANGUAGE plpgsql STABLE AS $$
             DECLARE r text; BEGIN SELECT name INTO r FROM public.{t} WHERE id = i; RETURN r; END $$;
         GRANT CREATE ON SCHEMA public TO {agent};",
        agent = s.agent
    ))
    .unwrap();
    let mut c = connect(&s.agent);
    grant(&mut c, &s.approver, "ddl");
    // the agent's copy holds masks, like its CREATE TABLE AS would
    rows_text_ok(
        &mut c,
        &format!("CREATE MATERIALIZED VIEW {t}_agent_copy AS SELECT id, ssn FROM {t}"),
    );
    let copy = rows_text_ok(
        &mut a,
        &format!("SELECT ssn FROM {t}_agent_copy ORDER BY id"),
    );
    s.assert_clean("the agent's materialized view", &copy);
    assert!(copy.contains(&s.masked_ssn(0)), "{copy}");
    let out = rows_text_ok(
        &mut c,
        &format!("SELECT ssn FROM {t}_agent_copy ORDER BY id"),
    );
    assert!(out.contains(&s.masked_ssn(0)), "{out}");
    // its refresh would read masked columns again: refused, contents kept
    let e = c
        .batch_execute(&format!("REFRESH MATERIALIZED VIEW {t}_agent_copy"))
        .expect_err("refresh from masked columns");
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    assert!(
        e.as_db_error().unwrap().hint().is_some(),
        "{}",
        describe(&e)
    );
    // a human's refresh puts real values there: agents are refused from then on
    a.batch_execute(&format!("REFRESH MATERIALIZED VIEW {t}_agent_copy"))
        .unwrap();
    assert_tainted(&mut c, &s, &format!("SELECT * FROM {t}_agent_copy"));

    // a view that read no masked column, whose function now reads one
    rows_text_ok(
        &mut c,
        &format!("CREATE MATERIALIZED VIEW {t}_labels AS SELECT {t}_label(id) AS l FROM generate_series(1, 2) id"),
    );
    rows_text_ok(&mut c, &format!("REFRESH MATERIALIZED VIEW {t}_labels"));
    a.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {t}_label(i int) RETURNS text LANGUAGE plpgsql STABLE AS $$
             DECLARE r text; BEGIN SELECT ssn INTO r FROM public.{t} WHERE id = i; RETURN r; END $$;"
    ))
    .unwrap();
    for sql in [
        format!("REFRESH MATERIALIZED VIEW {t}_labels"),
        format!("CREATE UNIQUE INDEX ON {t}_labels (l); REFRESH MATERIALIZED VIEW CONCURRENTLY {t}_labels"),
    ] {
        let e = c.batch_execute(&sql).expect_err(&sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e));
    }
    let kept = rows_text_ok(&mut a, &format!("SELECT l FROM {t}_labels ORDER BY l"));
    assert_eq!(kept, "Customer 1\nCustomer 2\n");
}

/// No granted write assigns to a masked column a value computed from masked
/// values — of the same row, other rows (`UPDATE … FROM`), CTEs, subqueries,
/// views, set operations, functions or another masked table — however the
/// statement reaches them; values that carry no mask are still written.
#[test]
fn granted_writes_never_write_masks_into_masked_columns() {
    let s = shop("wb");
    let t = &s.t;
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {t}_other (id int, secret text);
         INSERT INTO {t}_other VALUES (1, 'other-secret-value-1');
         SECURITY LABEL FOR agent_guard ON COLUMN {t}_other.secret IS 'MASKED WITH VALUE ''(secret)''';
         CREATE VIEW {t}_v AS SELECT id, ssn, card_number FROM {t};
         CREATE FUNCTION {t}_ssn(i int) RETURNS text LANGUAGE sql STABLE AS $$ SELECT ssn FROM {t} WHERE id = i $$;
         CREATE FUNCTION {t}_card(i int) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE r text; BEGIN SELECT card_number INTO r FROM {t} WHERE id = i; RETURN r; END $$;
         CREATE FUNCTION {t}_liar(i int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT ssn FROM {t} WHERE id = i $$;
         CREATE FUNCTION {t}_rows() RETURNS TABLE (id int, s text) LANGUAGE sql STABLE AS $$ SELECT id, ssn FROM {t} $$;
         GRANT SELECT, INSERT, UPDATE ON {t}, {t}_other, {t}_v TO {agent};",
        agent = s.agent
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    let before = rows_text_ok(&mut a, &format!("SELECT x::text FROM {t} x ORDER BY id"));
    let mut c = connect(&s.agent);
    grant(&mut c, &s.approver, "write");
    let refused = [
        // other rows, CTEs, subqueries
        format!("UPDATE {t} SET card_number = c2.card_number FROM {t} c2 WHERE c2.id = 2 AND {t}.id = 1"),
        format!("WITH s AS (SELECT id, email FROM {t}) UPDATE {t} SET email = s.email FROM s WHERE s.id = {t}.id"),
        format!("WITH RECURSIVE r(n, v) AS (SELECT 1, ssn FROM {t} WHERE id = 2 UNION ALL SELECT n + 1, v FROM r WHERE n < 2) UPDATE {t} SET ssn = (SELECT v FROM r WHERE n = 2) WHERE id = 1"),
        format!("UPDATE {t} SET ssn = (SELECT ssn FROM {t} c2 WHERE c2.id = 2) WHERE id = 1"),
        format!("UPDATE {t} SET ssn = coalesce((SELECT max(c2.ssn) FROM {t} c2), 'x') WHERE id = 1"),
        format!("UPDATE {t} SET (ssn) = (SELECT ssn FROM {t} c2 WHERE c2.id = 2) WHERE id = 1"),
        format!("UPDATE {t} SET (name, card_number) = (SELECT 'n', card_number FROM {t} c2 WHERE c2.id = 2) WHERE id = 1"),
        format!("UPDATE {t} SET ssn = x.s FROM (SELECT id, ssn AS s FROM {t}) x WHERE x.id = 2 AND {t}.id = 1"),
        format!("UPDATE {t} SET ssn = l.s FROM LATERAL (SELECT ssn AS s FROM {t} c WHERE c.id = 2) l WHERE {t}.id = 1"),
        format!("UPDATE {t} SET ssn = u.v FROM (SELECT 1 AS id, 'x' AS v UNION ALL SELECT id, ssn FROM {t}) u WHERE u.id = {t}.id"),
        format!("UPDATE {t} SET email = j.e FROM ({t} a JOIN {t} b USING (id)) AS j(id, n1, e) WHERE j.id = {t}.id"),
        format!("UPDATE {t} SET ssn = c2::text FROM {t} c2 WHERE c2.id = 2 AND {t}.id = 1"),
        format!("UPDATE {t} SET ssn = upper(email) WHERE id = 1"),
        // views, another masked table
        format!("UPDATE {t} SET ssn = v.ssn FROM {t}_v v WHERE v.id = 2 AND {t}.id = 1"),
        format!("UPDATE {t}_v SET card_number = o.card_number FROM {t} o WHERE o.id = 2 AND {t}_v.id = 1"),
        format!("UPDATE {t} SET ssn = o.secret FROM {t}_other o WHERE {t}.id = 1"),
        // functions: SQL, PL/pgSQL, a set-returning one, an IMMUTABLE one that reads a table
        format!("UPDATE {t} SET ssn = {t}_ssn(2) WHERE id = 1"),
        format!("UPDATE {t} SET card_number = {t}_card(2) WHERE id = 1"),
        format!("UPDATE {t} SET ssn = {t}_liar(2) WHERE id = 1"),
        format!("UPDATE {t} SET ssn = f.s FROM {t}_rows() f WHERE f.id = 2 AND {t}.id = 1"),
        format!("UPDATE {t} SET ssn = query_to_xml('SELECT ssn FROM {t}', true, false, '')::text WHERE id = 1"),
        // INSERT, ON CONFLICT, MERGE, writable CTEs
        format!("INSERT INTO {t} (id, ssn) SELECT id + 100, ssn FROM {t}"),
        format!("INSERT INTO {t} (id, ssn) VALUES (101, (SELECT ssn FROM {t} WHERE id = 1))"),
        format!("INSERT INTO {t} (id, card_number) VALUES (102, 'x'), (103, (SELECT card_number FROM {t} WHERE id = 1))"),
        format!("INSERT INTO {t} (id, ssn) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET ssn = (SELECT ssn FROM {t} c2 WHERE c2.id = 2)"),
        format!("INSERT INTO {t} (id, ssn) SELECT 1, ssn FROM {t} WHERE id = 2 ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn"),
        format!("MERGE INTO {t} d USING {t} s ON s.id = 2 AND d.id = 1 WHEN MATCHED THEN UPDATE SET ssn = s.ssn"),
        format!("MERGE INTO {t} d USING (SELECT id + 200 AS id, email FROM {t}) s ON s.id = d.id WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, s.email)"),
        format!("WITH u AS (UPDATE {t} SET ssn = c2.ssn FROM {t} c2 WHERE c2.id = 2 AND {t}.id = 1 RETURNING {t}.id) SELECT * FROM u"),
        format!("DO $$ BEGIN UPDATE {t} SET card_number = c2.card_number FROM {t} c2 WHERE c2.id = 2 AND {t}.id = 1; END $$"),
    ];
    for sql in &refused {
        match c.batch_execute(sql) {
            Ok(()) => panic!("{sql}: a masked value was written"),
            Err(e) => {
                assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e));
                let db = e.as_db_error().unwrap();
                assert!(
                    db.hint().is_some() && db.detail().is_some(),
                    "{sql}: {}",
                    describe(&e)
                );
            }
        }
    }
    let after = rows_text_ok(&mut a, &format!("SELECT x::text FROM {t} x ORDER BY id"));
    assert_eq!(before, after, "the refused writes changed nothing");
    // values that carry no mask are written
    let literal = "111-22-3333";
    for sql in [
        format!("UPDATE {t} SET ssn = '{literal}' WHERE id = 1"),
        format!("UPDATE {t} SET ssn = upper('{literal}') WHERE id = 1"),
        format!("UPDATE {t} SET ssn = x.v FROM (VALUES (1, '{literal}')) x(id, v) WHERE x.id = {t}.id"),
        format!("UPDATE {t} SET ssn = n.v FROM (SELECT id, '{literal}' AS v, ssn FROM {t}) n WHERE n.id = {t}.id AND n.id = 1"),
        format!("UPDATE {t} SET note = c2.ssn FROM {t} c2 WHERE c2.id = 2 AND {t}.id = 1"),
        format!("UPDATE {t} SET ssn = x.v FROM (SELECT 1 AS id, '{literal}' AS v) x WHERE x.id = {t}.id AND {t}.ssn <> ''"),
        format!("INSERT INTO {t} (id, name, ssn) VALUES (50, 'n', '{literal}')"),
        format!("INSERT INTO {t} (id, ssn) SELECT 51, '{literal}' FROM {t} WHERE ssn <> '' LIMIT 1"),
        format!("INSERT INTO {t} (id, ssn) VALUES (1, '{literal}') ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn"),
    ] {
        rows_text_ok(&mut c, &sql);
    }
    let stored = rows_text_ok(
        &mut a,
        &format!("SELECT string_agg(ssn, ',' ORDER BY id) FROM {t}"),
    );
    assert!(!stored.contains('*'), "no mask was stored: {stored}");
    assert!(stored.contains(literal), "{stored}");
    let prepared = c
        .execute(
            format!("UPDATE {t} SET ssn = $1 WHERE id = 2").as_str(),
            &[&literal],
        )
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    assert_eq!(prepared, 1);
}
