//! Tamper evidence against a human superuser. Issue 14.4: dropping the
//! extension while its audit trail holds rows needs an explicit, recorded
//! confirmation, and a trail created afterwards starts a verifiable chain.
//! Issue 14.5: a superuser who disables the trail's triggers
//! (`session_replication_role = replica`, `ALTER TABLE ... DISABLE
//! TRIGGER`) and removes the newest rows, recomputes hashes or forges a purge
//! anchor is exposed by `verify_audit()` and `verify_audit_anchor()`, which
//! compare the trail with the chain head the writer keeps outside the table.
//!
//! `DROP DATABASE` is logged with the head of the trail it takes along, and
//! the head file goes with it.
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
                "SELECT id, agent_guard._hash_text(row_hash) FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1",
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
    let r = c
        .query_one(
            "SELECT intact, rows_checked, coalesce(problem, '') FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    let (intact, rows, problem): (bool, i64, String) = (r.get(0), r.get(1), r.get(2));
    assert!(
        intact && rows >= 3,
        "trail intact after the refusals: {intact} {rows} {problem}"
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
            "SELECT agent_guard._hash_text(prev_hash) FROM agent_guard.audit_log ORDER BY id LIMIT 1",
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

/// A database with a trail of at least `n` rows, settled, and a session
/// that does not audit itself (so what it does adds no rows).
fn settled_trail(prefix: &str, n: i64) -> (String, Client, (i64, String)) {
    let (db, c) = database_with_trail(prefix, n);
    drop(c);
    let mut d = connect_db(&superuser(), &db);
    let head = settled_head(&mut d);
    (db, d, head)
}

fn verify(d: &mut Client) -> (bool, Option<i64>, String) {
    let r = d
        .query_one(
            "SELECT intact, first_broken_id, coalesce(problem, '') FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn anchor_holds(d: &mut Client, a: &(i64, String)) -> (bool, String) {
    let r = d
        .query_one(
            "SELECT holds, coalesce(problem, '') FROM agent_guard.verify_audit_anchor($1, $2)",
            &[&a.0, &a.1],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn audit_anchor(d: &mut Client) -> (i64, String) {
    let r = d
        .query_one(
            "SELECT id, hash, database FROM agent_guard.audit_anchor()",
            &[],
        )
        .unwrap();
    let db: String = r.get(2);
    let current: String = d
        .query_one("SELECT current_database()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(db, current, "the anchor names its database");
    (r.get(0), r.get(1))
}

#[test]
fn the_chain_head_is_kept_outside_the_table_in_a_file_and_the_server_log() {
    let from = server_log_len();
    let (db, mut d, head) = settled_trail("tamper_head", 4);
    let (intact, _, problem) = verify(&mut d);
    assert!(intact, "an untouched trail verifies: {problem}");
    let anchor = audit_anchor(&mut d);
    assert_eq!(anchor, head, "audit_anchor() is the writer's newest row");
    assert_eq!(anchor_holds(&mut d, &anchor), (true, String::new()));
    // the server log has a parsable head line for this database
    let needle = format!("agent_guard: audit chain head: database={db} id=");
    assert!(
        wait_for_log(from, &needle, Duration::from_secs(10)),
        "a head line in the server log: {needle}"
    );
    // the file in the data directory gets the settled head
    let oid: u32 = d
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    let file = format!("{}/agent_guard_heads/{oid}", pgdata());
    let want = format!("id={} hash={}", head.0, head.1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{file} holds the head ({want}): {text:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // DROP DATABASE takes the trail along: logged with its head, and the
    // head file goes with the database (a later database with its OID
    // starts afresh)
    drop(d);
    let from = server_log_len();
    let mut pg = connect_db(&superuser(), "postgres");
    pg.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap_or_else(|e| panic!("DROP DATABASE: {}", describe(&e)));
    let needle =
        format!("audit trail of database \"{db}\" (oid {oid}) dropped with the database by");
    assert!(
        wait_for_log(from, &needle, Duration::from_secs(10)),
        "DROP DATABASE is in the server log: {needle}"
    );
    let logged = server_log_since(from);
    let line = logged.lines().find(|l| l.contains(&needle)).unwrap_or("");
    assert!(
        line.contains(&format!("chain head id {}, hash {}", head.0, head.1)),
        "the log line names the head: {line}"
    );
    assert!(
        !std::path::Path::new(&file).exists(),
        "{file} is removed with the database"
    );
}

#[test]
fn removing_the_newest_rows_with_the_triggers_off_is_exposed() {
    let (db, mut d, head) = settled_trail("tamper_cut", 6);
    let anchor = audit_anchor(&mut d);
    d.batch_execute(&format!(
        "BEGIN; SET LOCAL session_replication_role = replica; \
         DELETE FROM agent_guard.audit_log WHERE id > {} - 2; COMMIT",
        head.0
    ))
    .unwrap_or_else(|e| panic!("the superuser's DELETE: {}", describe(&e)));
    let left: i64 = d
        .query_one("SELECT max(id) FROM agent_guard.audit_log", &[])
        .unwrap()
        .get(0);
    assert!(left < head.0, "rows were removed: {left} < {}", head.0);
    let (intact, broken, problem) = verify(&mut d);
    assert!(
        !intact && broken == Some(head.0) && problem.contains("removed from its end"),
        "verify_audit() reports the cut: intact={intact} first_broken_id={broken:?} {problem}"
    );
    let (holds, why) = anchor_holds(&mut d, &anchor);
    assert!(!holds, "the kept anchor no longer holds: {why}");
    drop(d);
    drop_database(&db);
}

#[test]
fn recomputing_the_hashes_of_a_changed_row_is_exposed() {
    let (db, mut d, head) = settled_trail("tamper_rechain", 4);
    let anchor = audit_anchor(&mut d);
    let last = head.0;
    d.batch_execute(&format!(
        "BEGIN; \
         ALTER TABLE agent_guard.audit_log DISABLE TRIGGER audit_log_append_only; \
         UPDATE agent_guard.audit_log SET statement_text = 'SELECT 1' WHERE id = {last}; \
         UPDATE agent_guard.audit_log a \
           SET row_hash = agent_guard._hash_bytes(agent_guard._link(agent_guard._hash_text(a.prev_hash), agent_guard._row_content(a, s))) \
           FROM agent_guard.audit_sessions s WHERE s.id = a.session_id AND a.id = {last}; \
         UPDATE agent_guard.audit_log a \
           SET outcome_hash = agent_guard._hash_bytes(agent_guard._link(agent_guard._hash_text(a.row_hash), agent_guard._outcome_content(a))) \
           WHERE id = {last} AND outcome_hash IS NOT NULL; \
         ALTER TABLE agent_guard.audit_log ENABLE TRIGGER audit_log_append_only; \
         COMMIT"
    ))
    .unwrap_or_else(|e| panic!("the superuser's rewrite: {}", describe(&e)));
    let now: String = d
        .query_one(
            &format!("SELECT agent_guard._hash_text(row_hash) FROM agent_guard.audit_log WHERE id = {last}"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(now, head.1, "the row's hash was recomputed");
    let (intact, broken, problem) = verify(&mut d);
    assert!(
        !intact && broken == Some(last) && problem.contains("recomputed"),
        "verify_audit() reports the re-chained row: intact={intact} first_broken_id={broken:?} {problem}"
    );
    let (holds, why) = anchor_holds(&mut d, &anchor);
    assert!(!holds, "the kept anchor no longer holds: {why}");
    drop(d);
    drop_database(&db);
}

#[test]
fn a_purge_verifies_and_a_forged_purge_anchor_is_exposed() {
    let (db, mut d, _) = settled_trail("tamper_purge", 8);
    // a real purge of the oldest rows leaves a trail that verifies
    let cut: i64 = d
        .query_one("SELECT min(id) + 2 FROM agent_guard.audit_log", &[])
        .unwrap()
        .get(0);
    let purged: i64 = d
        .query_one(
            &format!(
                "SELECT agent_guard.purge_audit((SELECT started_at FROM agent_guard.audit_log WHERE id = {cut}))"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(purged >= 1, "purge_audit() removed rows: {purged}");
    settled_head(&mut d);
    let (intact, broken, problem) = verify(&mut d);
    assert!(
        intact,
        "the trail verifies after purge_audit(): first_broken_id={broken:?} {problem}"
    );
    let anchor = audit_anchor(&mut d);
    // the superuser removes two more old rows and forges the anchor
    let first: i64 = d
        .query_one("SELECT min(id) FROM agent_guard.audit_log", &[])
        .unwrap()
        .get(0);
    let keep = first + 2;
    d.batch_execute(&format!(
        "BEGIN; SET LOCAL session_replication_role = replica; \
         INSERT INTO agent_guard.audit_purges (older_than, rows_purged, anchor_hash) \
           SELECT started_at, 2, agent_guard._hash_text(prev_hash) FROM agent_guard.audit_log WHERE id = {keep}; \
         DELETE FROM agent_guard.audit_log WHERE id < {keep}; COMMIT"
    ))
    .unwrap_or_else(|e| panic!("the superuser's forged purge: {}", describe(&e)));
    let (intact, broken, problem) = verify(&mut d);
    assert!(
        !intact && problem.contains("named by no PURGE AUDIT row"),
        "verify_audit() reports the forged anchor: intact={intact} first_broken_id={broken:?} {problem}"
    );
    let (holds, why) = anchor_holds(&mut d, &anchor);
    assert!(!holds, "the kept anchor no longer holds: {why}");
    drop(d);
    drop_database(&db);
}

/// Issue 14.6: the session context is stored once per session
/// (agent_guard.audit_sessions), and still covered by the chain: a superuser
/// who rewrites a session row (its sponsor) with the triggers disabled is
/// exposed at the first statement of that session.
#[test]
fn rewriting_a_session_row_is_exposed() {
    let (db, mut d, _head) = settled_trail("tamper_session", 4);
    let (intact, _, problem) = verify(&mut d);
    assert!(intact, "an untouched trail verifies: {problem}");
    let (session, first): (i64, i64) = {
        let r = d
            .query_one(
                "SELECT session_id, id FROM agent_guard.audit_log ORDER BY id LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // the session row is protected like the trail
    let e = d
        .batch_execute(&format!(
            "UPDATE agent_guard.audit_sessions SET sponsor = 'someone_else' WHERE id = {session}"
        ))
        .err()
        .expect("an UPDATE of audit_sessions is refused");
    assert_eq!(
        e.as_db_error().map(|e| e.code().code()),
        Some("42501"),
        "{}",
        describe(&e)
    );
    d.batch_execute(&format!(
        "BEGIN; \
         ALTER TABLE agent_guard.audit_sessions DISABLE TRIGGER audit_sessions_append_only; \
         UPDATE agent_guard.audit_sessions SET sponsor = 'someone_else' WHERE id = {session}; \
         ALTER TABLE agent_guard.audit_sessions ENABLE TRIGGER audit_sessions_append_only; \
         COMMIT"
    ))
    .unwrap_or_else(|e| panic!("the superuser's rewrite: {}", describe(&e)));
    let (intact, broken, problem) = verify(&mut d);
    assert!(
        !intact && broken == Some(first) && problem.contains("audit_sessions"),
        "verify_audit() reports the rewritten session row: intact={intact} first_broken_id={broken:?} {problem}"
    );
    drop(d);
    drop_database(&db);
}
