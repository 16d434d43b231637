//! Tamper evidence against a human superuser (issue 14.4): dropping the
//! extension while its audit trail holds rows needs an explicit, recorded
//! confirmation, and a trail created afterwards starts a verifiable chain.
//!
//! Each test uses a database of its own (so DROP EXTENSION there touches no
//! other test) on the test cluster, as the superuser (a human session).

use agent_guard_integration::*;
use std::time::{Duration, Instant};

/// A fresh database with agent_guard, whose superuser session audits itself
/// (`audit_non_agents = 'all'`) and has written at least `n` audit rows.
fn database_with_trail(prefix: &str, n: i64) -> (String, Client) {
    let db = unique_name(prefix);
    let mut pg = connect_db(&superuser(), "postgres");
    pg.batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {db}: {}", describe(&e)));
    let mut c = connect_db(&superuser(), &db);
    c.batch_execute("CREATE EXTENSION agent_guard").unwrap();
    fill_trail(&mut c, n);
    (db, c)
}

/// Run audited statements until the trail holds at least `n` rows.
fn fill_trail(c: &mut Client, n: i64) {
    c.batch_execute("SET agent_guard.audit_non_agents = 'all'")
        .unwrap();
    for i in 0..n {
        c.batch_execute(&format!("SELECT {i}")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: i64 = c
            .query_one("SELECT count(*) FROM agent_guard.audit_log", &[])
            .unwrap()
            .get(0);
        if rows >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {rows} of {n} audit rows after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The trail's newest (id, row_hash) once it no longer changes (the writer
/// has written and completed every record sent so far).
fn settled_head(c: &mut Client) -> (i64, String) {
    let read = |c: &mut Client| -> (i64, String) {
        let r = c
            .query_one(
                "SELECT id, row_hash FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut prev = read(c);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = read(c);
        if now == prev {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the trail kept changing for 30 s"
        );
        prev = now;
    }
}

fn drop_database(db: &str) {
    let mut pg = connect_db(&superuser(), "postgres");
    let _ = pg.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

fn refused(r: Result<(), postgres::Error>, what: &str) -> String {
    let e = r.err().unwrap_or_else(|| panic!("{what} was not refused"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {e}"));
    assert_eq!(db.code().code(), "42501", "{what}: {}", describe(&e));
    let hint = db.hint().unwrap_or_default();
    assert!(
        hint.contains("agent_guard.confirm_drop_trail"),
        "{what}: the HINT says how to confirm: {}",
        describe(&e)
    );
    describe(&e)
}

#[test]
fn dropping_the_extension_with_a_trail_needs_a_confirmation_in_the_same_transaction() {
    let (db, mut c) = database_with_trail("tamper_drop", 3);
    // plainly
    refused(
        c.batch_execute("DROP EXTENSION agent_guard"),
        "DROP EXTENSION",
    );
    // by way of its schema
    refused(
        c.batch_execute("DROP SCHEMA agent_guard CASCADE"),
        "DROP SCHEMA agent_guard CASCADE",
    );
    // the table taken out of the extension first, then dropped on its own
    refused(
        c.batch_execute(
            "BEGIN; ALTER EXTENSION agent_guard DROP TABLE agent_guard.audit_log; DROP TABLE agent_guard.audit_log CASCADE; COMMIT",
        ),
        "DROP TABLE agent_guard.audit_log after ALTER EXTENSION ... DROP TABLE",
    );
    c.batch_execute("ROLLBACK").ok();
    // confirmed in an earlier transaction only
    c.batch_execute(&format!("SET agent_guard.confirm_drop_trail = '{db}'"))
        .unwrap();
    refused(
        c.batch_execute("DROP EXTENSION agent_guard"),
        "DROP EXTENSION with a confirmation of an earlier transaction",
    );
    c.batch_execute("RESET agent_guard.confirm_drop_trail")
        .unwrap();
    // with another database's name
    refused(
        c.batch_execute(
            "BEGIN; SET LOCAL agent_guard.confirm_drop_trail = 'postgres'; DROP EXTENSION agent_guard; COMMIT",
        ),
        "DROP EXTENSION confirmed with another database's name",
    );
    c.batch_execute("ROLLBACK").ok();
    // a non-superuser may not set the confirmation at all
    let role = create_login_role("tamper_owner", "");
    let mut other = connect_db(&role, &db);
    let e = other
        .batch_execute(&format!("SET agent_guard.confirm_drop_trail = '{db}'"))
        .expect_err("a non-superuser set the confirmation");
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("42501"),
        "{}",
        describe(&e)
    );
    drop(other);
    // the trail is still there, intact
    let (intact, rows): (bool, i64) = {
        let r = c
            .query_one(
                "SELECT intact, rows_checked FROM agent_guard.verify_audit()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        intact && rows >= 3,
        "trail intact after the refusals: {intact} {rows}"
    );
    drop(c);
    drop_database(&db);
    admin().batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

#[test]
fn a_confirmed_drop_is_logged_and_a_new_trail_verifies_from_its_first_row() {
    let (db, mut c) = database_with_trail("tamper_redo", 5);
    // `c` audits its own statements: drop from a session that does not, once
    // the writer has written (and completed) everything `c` sent
    let mut d = connect_db(&superuser(), &db);
    let last = settled_head(&mut d);
    let from = server_log_len();
    d.batch_execute(&format!(
        "BEGIN; SET LOCAL agent_guard.confirm_drop_trail = '{db}'; DROP EXTENSION agent_guard; COMMIT"
    ))
    .unwrap_or_else(|e| panic!("confirmed DROP EXTENSION: {}", describe(&e)));
    drop(d);
    let gone: bool = c
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'agent_guard')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(gone, "the confirmed drop went through");
    let needle = format!("audit trail of database \"{db}\" dropped with the extension by");
    assert!(
        wait_for_log(from, &needle, Duration::from_secs(10)),
        "the drop is in the server log: {needle}"
    );
    let logged = server_log_since(from);
    let line = logged.lines().find(|l| l.contains(&needle)).unwrap_or("");
    assert!(
        line.contains(&format!("last id {}", last.0)) && line.contains(&last.1),
        "the log line names the last id and hash: {line}"
    );
    // the same writer may still run for this database: the new trail starts a chain of its own
    c.batch_execute("CREATE EXTENSION agent_guard").unwrap();
    fill_trail(&mut c, 5);
    let r = c
        .query_one(
            "SELECT intact, rows_checked, first_broken_id, problem FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    let (intact, rows, broken, problem): (bool, i64, Option<i64>, Option<String>) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert!(
        intact && rows >= 5,
        "the new trail verifies: intact={intact} rows={rows} first_broken_id={broken:?} {problem:?}"
    );
    let first_prev: String = c
        .query_one(
            "SELECT prev_hash FROM agent_guard.audit_log ORDER BY id LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        first_prev, "agent_guard",
        "the new chain starts at the genesis hash"
    );
    drop(c);
    drop_database(&db);
}
