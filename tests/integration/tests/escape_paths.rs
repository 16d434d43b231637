//! Paths by which PostgreSQL runs code on a session's behalf outside the
//! ordinary executor of its own backend: parallel workers and fast-path
//! function calls (libpq `PQfn`, used by the large-object API). An agent's
//! statements are checked, masked and audited there too.

use agent_guard_integration::*;
use postgres::SimpleQueryMessage;
use std::process::Command;
use std::time::{Duration, Instant};

fn rows_text(c: &mut Client, sql: &str) -> Result<String, postgres::Error> {
    let mut out = String::new();
    for m in c.simple_query(sql)? {
        if let SimpleQueryMessage::Row(r) = m {
            let cells: Vec<&str> = (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
            out.push_str(&cells.join("|"));
            out.push('\n');
        }
    }
    Ok(out)
}

fn psql_as(user: &str, command: &str) -> (bool, String) {
    let bindir = bindir();
    let out = Command::new(format!("{bindir}/psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &host(),
            "-p",
            &port().to_string(),
            "-U",
            user,
            "-d",
            &database(),
            "-c",
            command,
        ])
        .env_remove("PGOPTIONS")
        .output()
        .expect("run psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Audit rows of `agent` whose command matches `like`, once at least `min` exist.
fn audited(agent: &str, like: &str, min: i64) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut a = admin();
    loop {
        let rows: Vec<(String, String)> = a
            .query(
                "SELECT command, decision FROM agent_guard.audit_log
                  WHERE agent = $1 AND command LIKE $2 ORDER BY id",
                &[&agent, &like],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if rows.len() as i64 >= min || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn parallel_plans_do_not_take_agents_statements_out_of_their_backend() {
    let sponsor = create_login_role("par_sp", "");
    let agent = create_login_role("par_ag", "");
    let t = unique_name("par_customers");
    let f = unique_name("par_leak");
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {t} (id int, ssn text);
         INSERT INTO {t} VALUES (1, '219-09-' || (9000 + 999)::text);
         SECURITY LABEL FOR agent_guard ON COLUMN {t}.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         CREATE FUNCTION {f}() RETURNS text PARALLEL SAFE LANGUAGE plpgsql AS $$
           BEGIN RETURN (SELECT ssn FROM {t} LIMIT 1); END $$;
         GRANT SELECT ON {t} TO {agent};
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    let mut c = connect(&agent);
    let force = debug_parallel_setting(&mut c);
    let out = rows_text(
        &mut c,
        &format!(
            "SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0; SELECT {f}(); SELECT ssn FROM {t};
             EXPLAIN (COSTS OFF) SELECT {f}() FROM {t};"
        ),
    )
    .unwrap_or_else(|e| panic!("{}", describe(&e)));
    assert!(
        !out.contains("219-09-9999"),
        "raw SSN through a parallel plan:\n{out}"
    );
    assert!(out.contains("***-**-9999"), "{out}");
    assert!(
        !out.contains("Gather"),
        "an agent's plan went parallel:\n{out}"
    );
    // The function's nested statement is in the agent's own trail.
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = a
            .query_one(
                "SELECT count(*) FROM agent_guard.audit_log WHERE backend_pid = $1 AND nesting_level > 0 AND statement_text LIKE '%ssn FROM%LIMIT%'",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if n >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nested statement has no audit row"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A human's plan still goes parallel (nothing changes for others).
    let plan = rows_text(
        &mut a,
        &format!("SET {force} = on; EXPLAIN (COSTS OFF) SELECT {f}() FROM {t};"),
    )
    .unwrap();
    assert!(
        plan.contains("Gather"),
        "a human's plan lost parallelism:\n{plan}"
    );
    let _ = a.batch_execute(&format!(
        "DROP TABLE {t}; DROP FUNCTION {f}(); DROP OWNED BY {agent}; DROP ROLE {agent}; DROP ROLE {sponsor};"
    ));
}

#[test]
fn fast_path_calls_are_audited_statements_and_obey_the_sponsor_rule() {
    let sponsor = create_login_role("fp_sp", "");
    let agent = create_login_role("fp_ag", "");
    let mut a = admin();
    let lo: u32 = a
        .query_one("SELECT lo_from_bytea(0, 'large object content')::oid", &[])
        .unwrap()
        .get(0);
    a.batch_execute(&format!(
        "GRANT SELECT ON LARGE OBJECT {lo} TO {agent};
         SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap();
    let file = format!("/tmp/agent_guard_fp_{}", std::process::id());
    // psql's \lo_export reads the object with fast-path calls (lo_open, loread, lo_close).
    let (ok, out) = psql_as(&agent, &format!("\\lo_export {lo} {file}"));
    assert!(ok, "{out}");
    let rows = audited(&agent, "FASTPATH%", 2);
    assert!(
        rows.iter()
            .any(|(cmd, d)| cmd.starts_with("FASTPATH") && d == "allowed"),
        "fast-path calls have no audit row: {rows:?}"
    );
    // Writing a large object through the fast path is a write: refused without a grant.
    std::fs::write(&file, b"new content").unwrap();
    let (ok, out) = psql_as(&agent, &format!("\\lo_import {file}"));
    assert!(!ok, "lo_import via fast path was allowed: {out}");
    assert!(out.contains("may not"), "{out}");
    // The sponsor leaves: the orphaned agent reads no large object either.
    a.batch_execute(&format!("ALTER ROLE {sponsor} NOLOGIN"))
        .unwrap();
    let (ok, out) = psql_as(&agent, &format!("\\lo_export {lo} {file}"));
    assert!(
        !ok,
        "an orphaned agent read a large object via fast path: {out}"
    );
    let _ = std::fs::remove_file(&file);
    let _ = a.batch_execute(&format!(
        "SELECT lo_unlink({lo}); DROP OWNED BY {agent}; DROP ROLE {agent}; DROP ROLE {sponsor};"
    ));
}
