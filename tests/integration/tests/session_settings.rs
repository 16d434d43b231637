//! Settings an agent session brings along never weaken agent_guard: not the
//! startup packet (`PGOPTIONS`), not role or database settings, not a
//! function's SET clause — for a SUPERUSER agent too. `agent_guard.enabled`
//! is PGC_SIGHUP (postgresql.conf / ALTER SYSTEM and a reload only); the other
//! protective settings are bounded in agent sessions by the server's values.

use agent_guard_integration::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Run `command` with psql as `user`, with `pgoptions` in the environment
/// (PGOPTIONS: sent in the startup packet).
fn psql_with_options(user: &str, pgoptions: &str, command: &str) -> (bool, String) {
    let bindir = bindir();
    let out = Command::new(format!("{bindir}/psql"))
        .args([
            "-X",
            "-At",
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
        .env("PGOPTIONS", pgoptions)
        .output()
        .expect("run psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Denied audit rows of `agent` for `command` (waits up to 20 s for one).
fn denied(agent: &str, command_like: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut a = admin();
    loop {
        let n: i64 = a
            .query_one(
                "SELECT count(*) FROM agent_guard.audit_log
                  WHERE agent = $1 AND command LIKE $2 AND decision = 'denied'",
                &[&agent, &command_like],
            )
            .unwrap()
            .get(0);
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Setup {
    sponsor: String,
    agent: String,
    table: String,
}

fn superuser_agent(prefix: &str) -> Setup {
    let sponsor = create_login_role(&format!("{prefix}_sp"), "");
    let agent = create_login_role(&format!("{prefix}_ag"), "SUPERUSER");
    let table = unique_name(&format!("{prefix}_t"));
    admin()
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int); INSERT INTO {table} SELECT generate_series(1, 5);
             SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
        ))
        .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    Setup {
        sponsor,
        agent,
        table,
    }
}

fn rows_in(table: &str) -> i64 {
    admin()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

fn teardown(s: &Setup) {
    let _ = admin().batch_execute(&format!(
        "DROP TABLE IF EXISTS {t}; DROP OWNED BY {a}; DROP ROLE {a}; DROP ROLE {sp};",
        t = s.table,
        a = s.agent,
        sp = s.sponsor
    ));
}

#[test]
fn startup_packet_cannot_switch_enforcement_off_for_a_superuser_agent() {
    let s = superuser_agent("pgo");
    let attack = format!(
        "SELECT agent_guard.is_agent_session(); DELETE FROM {t}; ALTER ROLE {a} NOSUPERUSER;
         SELECT pg_read_file('PG_VERSION'); COPY (SELECT 1) TO PROGRAM 'cat > /dev/null';",
        t = s.table,
        a = s.agent
    );
    // agent_guard.enabled is PGC_SIGHUP: PostgreSQL refuses it in the startup packet
    for options in ["-c agent_guard.enabled=off", "-cagent_guard.enabled=false"] {
        let (ok, out) = psql_with_options(&s.agent, options, &attack);
        assert!(!ok, "PGOPTIONS='{options}' connected and ran:\n{out}");
        assert!(
            out.contains("agent_guard.enabled") && out.contains("cannot be changed"),
            "{out}"
        );
        assert_eq!(
            rows_in(&s.table),
            5,
            "PGOPTIONS='{options}' deleted rows:\n{out}"
        );
    }
    // every other protective setting in the startup packet: the session starts,
    // agent_guard keeps the server's values, and the attack is refused and audited
    let weakening = "-c agent_guard.audit_durability=async -c agent_guard.audit_wait_timeout=600000 \
                     -c agent_guard.require_distinct_sponsor=off -c agent_guard.request_lifetime=604800 \
                     -c agent_guard.audit_non_agents=none";
    let (_, status) = psql_with_options(
        &s.agent,
        weakening,
        "SELECT agent_guard.status()->'settings'->>'agent_guard.audit_wait_timeout_ms',
                agent_guard.status()->'settings'->>'agent_guard.require_distinct_sponsor',
                agent_guard.status()->'settings'->>'agent_guard.request_lifetime_s'",
    );
    assert_eq!(
        status.trim(),
        "5000|ddl|3600",
        "the startup packet weakened agent_guard: {status}"
    );
    for statement in [
        format!("DELETE FROM {}", s.table),
        format!("ALTER ROLE {} NOSUPERUSER", s.agent),
        "SELECT pg_read_file('PG_VERSION')".to_string(),
        "COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'".to_string(),
    ] {
        let (ok, out) = psql_with_options(&s.agent, weakening, &statement);
        assert!(!ok, "{statement} ran with PGOPTIONS='{weakening}':\n{out}");
        assert!(out.contains("may not"), "{statement}: {out}");
    }
    assert_eq!(rows_in(&s.table), 5);
    for command in ["DELETE", "ALTER ROLE", "SELECT pg_read_file()", "COPY TO"] {
        assert!(
            denied(&s.agent, command) > 0,
            "no denied audit row for {command}"
        );
    }
    let still_superuser: bool = admin()
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&s.agent],
        )
        .unwrap()
        .get(0);
    assert!(still_superuser);
    teardown(&s);
}

#[test]
fn role_database_and_function_settings_cannot_weaken_an_agent_session() {
    let s = superuser_agent("rds");
    let mut a = admin();
    // ALTER ROLE / ALTER DATABASE ... SET agent_guard.enabled: refused by PostgreSQL
    for sql in [
        format!("ALTER ROLE {} SET agent_guard.enabled = off", s.agent),
        format!(
            "ALTER DATABASE {} SET agent_guard.enabled = off",
            database()
        ),
        format!(
            "ALTER ROLE {} IN DATABASE {} SET agent_guard.enabled = off",
            s.agent,
            database()
        ),
    ] {
        let e = a.batch_execute(&sql).expect_err(&sql);
        assert!(
            describe(&e).contains("cannot be changed"),
            "{sql}: {}",
            describe(&e)
        );
    }
    // a role setting that got into the catalog anyway is ignored at login
    let agent_oid: u32 = a
        .query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&s.agent])
        .unwrap()
        .get(0);
    a.batch_execute(&format!(
        "INSERT INTO pg_db_role_setting VALUES (0, {agent_oid}, '{{agent_guard.enabled=off}}')"
    ))
    .unwrap();
    let (ok, out) = psql_with_options(&s.agent, "", &format!("DELETE FROM {}", s.table));
    assert!(
        !ok,
        "a catalogued role setting switched enforcement off:\n{out}"
    );
    assert!(out.contains("may not"), "{out}");
    a.batch_execute(&format!(
        "DELETE FROM pg_db_role_setting WHERE setrole = {agent_oid}"
    ))
    .unwrap();
    // an administrator's role setting that weakens: bounded by the server's value
    a.batch_execute(&format!(
        "ALTER ROLE {} SET agent_guard.audit_wait_timeout = '10min'; ALTER ROLE {} SET agent_guard.require_distinct_sponsor = off",
        s.agent, s.agent
    ))
    .unwrap();
    let (_, status) = psql_with_options(
        &s.agent,
        "",
        "SELECT agent_guard.status()->'settings'->>'agent_guard.audit_wait_timeout_ms',
                agent_guard.status()->'settings'->>'agent_guard.require_distinct_sponsor'",
    );
    assert_eq!(
        status.trim(),
        "5000|ddl",
        "a role setting weakened agent_guard: {status}"
    );
    a.batch_execute(&format!("ALTER ROLE {} RESET ALL", s.agent))
        .unwrap();
    // a function's SET clause, called by the superuser agent: refused
    let f = unique_name("rds_fn");
    a.batch_execute(&format!(
        "CREATE FUNCTION {f}() RETURNS int LANGUAGE sql SET agent_guard.audit_durability = async AS 'SELECT 1'"
    ))
    .unwrap();
    let (ok, out) = psql_with_options(&s.agent, "", &format!("SELECT {f}()"));
    assert!(
        !ok,
        "a function's SET clause changed a protective setting:\n{out}"
    );
    assert!(
        out.contains("agent sessions may not change agent_guard's protective settings"),
        "{out}"
    );
    let e = a
        .batch_execute(&format!(
            "CREATE FUNCTION {f}_off() RETURNS int LANGUAGE sql SET agent_guard.enabled = off AS 'SELECT 1'"
        ))
        .expect_err("a SET clause of agent_guard.enabled");
    assert!(
        describe(&e).contains("cannot be changed"),
        "{}",
        describe(&e)
    );
    let _ = a.batch_execute(&format!("DROP FUNCTION {f}()"));
    // SET in the session: refused for everyone, the superuser agent included
    let (ok, out) = psql_with_options(&s.agent, "", "SET agent_guard.enabled = off");
    assert!(!ok && out.contains("may not"), "{out}");
    let e = a
        .batch_execute("SET agent_guard.enabled = off")
        .expect_err("SET by a human superuser");
    assert!(
        describe(&e).contains("cannot be changed now"),
        "{}",
        describe(&e)
    );
    teardown(&s);
}
