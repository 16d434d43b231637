//! Dump and restore: `pg_dumpall --roles-only` carries agent registrations
//! (role labels, by role name) and `pg_dump` a database's registry rows, grants
//! and audit trail; restored into a second cluster, the agent is still an
//! agent (its writes refused, its reads masked and audited) and the trail
//! still verifies. Registry rows that no role label confirms fail closed and
//! lead the access review.

use agent_guard_integration::cluster::{client_tool, client_tool_stdout, Cluster};
use agent_guard_integration::*;
use std::time::{Duration, Instant};

fn wait_count(c: &mut Client, sql: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = c.query_one(sql, &[]).unwrap().get(0);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn conn_args(port: u16) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-U".into(),
        superuser(),
    ]
}

/// The findings of one role in `agent_guard.access_review()`: (code, severity).
fn review_codes(c: &mut Client, role: &str) -> Vec<(String, String)> {
    let row = c
        .query_opt(
            "SELECT findings::text FROM agent_guard.access_review() WHERE role = $1",
            &[&role],
        )
        .unwrap_or_else(|e| panic!("access_review: {}", describe(&e)));
    let Some(row) = row else { return vec![] };
    let v: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap_or("").to_string(),
                f["severity"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn registrations_masks_and_the_trail_survive_a_restore_into_another_cluster() {
    // ---- the source: a database of the test cluster --------------------------------
    let src_db = unique_name("restore_src");
    let mut pg = connect_db(&superuser(), "postgres");
    pg.batch_execute(&format!("CREATE DATABASE {src_db}"))
        .unwrap();
    let sponsor = create_login_role("rs_sponsor", "");
    let kept = create_login_role("rs_agent", ""); // its label is restored
    let lost = create_login_role("rs_lost", ""); // its label is lost on the way
    let mut src = connect_db(&superuser(), &src_db);
    src.batch_execute(&format!(
        "CREATE EXTENSION agent_guard;
         CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text);
         INSERT INTO customers VALUES (1, 'Ann', '214-13-5506'), (2, 'Bob', '078-05-1120');
         SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn
             IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
         GRANT SELECT, DELETE ON customers TO {kept}, {lost};
         SELECT agent_guard.register_agent('{kept}', '{sponsor}', note => 'restore test');
         SELECT agent_guard.register_agent('{lost}', '{sponsor}');"
    ))
    .unwrap();
    let kept_oid: u32 = src
        .query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&kept])
        .unwrap()
        .get(0);
    // the agent works in the source: masked reads, refused writes, all audited
    let mut a = connect_db(&kept, &src_db);
    let ssn: String = a
        .query_one(
            "SELECT ssn FROM customers WHERE id = 1 /* request_id='before-dump' */",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-5506");
    let e = a.batch_execute("DELETE FROM customers").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    drop(a);
    let src_rows = wait_count(
        &mut src,
        &format!("SELECT count(*) FROM agent_guard.audit_log WHERE agent = '{kept}'"),
        2,
    );
    assert!(src_rows >= 2, "the source trail has the agent's statements");
    let intact: bool = src
        .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
        .unwrap()
        .get(0);
    assert!(intact);
    let (src_total, src_last_id, src_last_hash): (i64, i64, String) = {
        let r = src
            .query_one(
                "SELECT count(*), max(id), (SELECT agent_guard._hash_text(row_hash) FROM agent_guard.audit_log ORDER BY id DESC LIMIT 1)
                 FROM agent_guard.audit_log",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    drop(src);

    // ---- the dump ------------------------------------------------------------------
    let work = format!(
        "/var/tmp/agent_guard/it-restore-files-{}",
        std::process::id()
    );
    std::fs::create_dir_all(&work).unwrap();
    let src_args = conn_args(port());
    let mut args: Vec<&str> = src_args.iter().map(String::as_str).collect();
    args.push("--roles-only");
    let (ok, roles_sql, err) = client_tool_stdout("pg_dumpall", &args);
    assert!(ok, "pg_dumpall --roles-only: {err}");
    let roles_sql = String::from_utf8(roles_sql).unwrap();
    let label_of = |role: &str| {
        roles_sql
            .lines()
            .find(|l| l.starts_with(&format!("SECURITY LABEL FOR agent_guard ON ROLE {role} IS")))
            .map(str::to_string)
    };
    let kept_label = label_of(&kept).expect("pg_dumpall emits the agent's label");
    assert!(
        kept_label.contains(&format!("AGENT SPONSOR \"{sponsor}\" KIND agent")),
        "{kept_label}"
    );
    assert!(label_of(&lost).is_some());
    // the other agent's label is lost on the way (as with --no-security-labels)
    let roles_sql: String = roles_sql
        .lines()
        .filter(|l| Some(l.to_string()) != label_of(&lost))
        .map(|l| format!("{l}\n"))
        .collect();
    let roles_file = format!("{work}/roles.sql");
    std::fs::write(&roles_file, &roles_sql).unwrap();
    let dump_file = format!("{work}/db.dump");
    let mut args: Vec<&str> = src_args.iter().map(String::as_str).collect();
    args.extend(["-Fc", "-f", &dump_file, "-d", &src_db]);
    let (ok, out) = client_tool("pg_dump", &args);
    assert!(ok, "pg_dump: {out}");

    // ---- the target: a new cluster --------------------------------------------------
    let mut target = Cluster::init("restore", &[]);
    // the first role created there gets the agent's old OID
    let datadir = target.datadir.clone();
    target.server_tool(
        "pg_resetwal",
        &["-o", &kept_oid.to_string(), "-D", &datadir],
    );
    target.start();
    let mut t = target.connect("postgres", "postgres");
    t.batch_execute("CREATE ROLE carol LOGIN").unwrap();
    let carol_oid: u32 = t
        .query_one("SELECT oid FROM pg_roles WHERE rolname = 'carol'", &[])
        .unwrap()
        .get(0);
    assert_eq!(carol_oid, kept_oid, "carol has the agent's old OID");
    let targs = target.conn_args();
    let mut args: Vec<&str> = targs.iter().map(String::as_str).collect();
    args.extend(["-X", "-q", "-d", "postgres", "-f", &roles_file]);
    let (_, out) = client_tool("psql", &args);
    assert!(
        !out.contains("role labels are managed by"),
        "restoring pg_dumpall's role labels as a superuser is accepted:\n{out}"
    );
    assert!(!out.contains(&format!("ON ROLE {kept}")), "{out}");
    t.batch_execute("CREATE DATABASE dst").unwrap();
    let mut args: Vec<&str> = targs.iter().map(String::as_str).collect();
    // the generated masking views come back from the labels (README, Inline masking)
    args.extend([
        "--exclude-schema=agent_guard_masked",
        "-d",
        "dst",
        &dump_file,
    ]);
    let (ok, out) = client_tool("pg_restore", &args);
    assert!(ok && !out.contains("ERROR"), "pg_restore: {out}");
    drop(t);

    // ---- in the restored database -----------------------------------------------------
    let mut dst = target.connect("postgres", "dst");
    dst.batch_execute("SELECT agent_guard.refresh_masking_views()")
        .unwrap();
    let (dst_total, dst_hash): (i64, String) = {
        let r = dst
            .query_one(
                "SELECT count(*), (SELECT agent_guard._hash_text(row_hash) FROM agent_guard.audit_log WHERE id = $1)
                 FROM agent_guard.audit_log",
                &[&src_last_id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(dst_total, src_total, "pg_dump carries the whole trail");
    assert_eq!(dst_hash, src_last_hash);
    let v = dst
        .query_one(
            "SELECT intact, rows_checked FROM agent_guard.verify_audit()",
            &[],
        )
        .unwrap();
    assert!(v.get::<_, bool>(0), "the restored trail verifies");
    assert_eq!(v.get::<_, i64>(1), src_total);
    let status: String = dst
        .query_one(
            "SELECT sponsor_status FROM agent_guard.agents WHERE agent::text = $1",
            &[&kept],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        status, "active",
        "the sponsor is found by name in the new cluster"
    );

    // the agent is still an agent: masked read, refused write, audited
    let mut a = target.connect(&kept, "dst");
    let ssn: String = a
        .query_one(
            "SELECT ssn FROM customers WHERE id = 1 /* request_id='after-restore' */",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-5506", "reads stay masked after the restore");
    let e = a.batch_execute("DELETE FROM customers").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    let db = e.as_db_error().unwrap();
    assert!(
        db.hint()
            .unwrap_or("")
            .contains("agent_guard.request_access"),
        "{}",
        describe(&e)
    );
    drop(a);
    let after = wait_count(
        &mut dst,
        &format!(
            "SELECT count(*) FROM agent_guard.audit_log WHERE agent = '{kept}' AND id > {src_last_id}"
        ),
        2,
    );
    assert!(
        after >= 2,
        "the restored agent's statements are audited in the new cluster"
    );
    let decision: String = dst
        .query_one(
            "SELECT decision FROM agent_guard.audit_log WHERE request_id = 'after-restore'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(decision, "allowed");
    let intact: bool = dst
        .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
        .unwrap()
        .get(0);
    assert!(intact, "new rows continue the restored chain");

    // carol got the agent's old OID: the restored row is not about her
    let mut c = target.connect("carol", "dst");
    c.batch_execute("SELECT 1").unwrap();
    drop(c);

    // the agent whose label was lost fails closed
    let mut l = target.connect(&lost, "dst");
    let e = l.batch_execute("SELECT name FROM customers").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    assert!(
        describe(&e).contains("no agent registration (role security label) confirms it"),
        "{}",
        describe(&e)
    );
    l.batch_execute("SHOW agent_guard.request_id").unwrap();

    // the review: the unverified registration first, the moved row for the restored agent
    let first: (String, String) = {
        let r = dst
            .query_one(
                "SELECT role::text, findings->0->>'code' FROM agent_guard.access_review() LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(first, (lost.clone(), "unverified_registration".into()));
    let codes = review_codes(&mut dst, &lost);
    assert_eq!(
        codes[0],
        ("unverified_registration".into(), "critical".into())
    );
    let codes = review_codes(&mut dst, &kept);
    assert!(
        codes.contains(&("stale_registry_row".into(), "high".into())),
        "{codes:?}"
    );
    assert!(review_codes(&mut dst, "carol").is_empty());

    // repair: the restored row follows its role; the unconfirmed one waits for a decision
    let actions: Vec<(String, String, String)> = dst
        .query(
            "SELECT agent_name, state, action FROM agent_guard.repair_registry()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        actions
            .iter()
            .any(|(n, s, a)| *n == kept && s == "moved" && a.starts_with("relinked")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(n, s, a)| *n == lost && s == "unmatched" && a.starts_with("kept")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|(n, s, _)| *n == kept && s == "label"),
        "the restored label is re-written for this cluster: {actions:?}"
    );
    assert!(!review_codes(&mut dst, &kept)
        .iter()
        .any(|(c, _)| c == "stale_registry_row"));
    let e = l.batch_execute("SELECT 1").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "still refused until someone decides");
    dst.batch_execute(&format!(
        "SELECT agent_guard.register_agent('{lost}', '{sponsor}')"
    ))
    .unwrap();
    let ssn: String = l
        .query_one("SELECT ssn FROM customers WHERE id = 2", &[])
        .unwrap()
        .get(0);
    assert_eq!(ssn, "***-**-1120", "registered again: an ordinary agent");
    assert!(
        review_codes(&mut dst, &lost).is_empty()
            || !review_codes(&mut dst, &lost)
                .iter()
                .any(|(c, _)| c == "unverified_registration")
    );
    drop(l);
    drop(dst);
    drop(target);
    let _ = std::fs::remove_dir_all(&work);
    let mut pg = connect_db(&superuser(), "postgres");
    let _ = pg.batch_execute(&format!("DROP DATABASE {src_db} WITH (FORCE)"));
}

/// A registry row that no label confirms (here: one restored from another
/// cluster under a role's name) refuses that role's sessions, open ones
/// too, until it is settled.
#[test]
fn unconfirmed_registry_rows_fail_closed() {
    let human = create_login_role("rs_unconfirmed", "");
    let sponsor = create_login_role("rs_sp", "");
    let mut open = connect(&human);
    open.batch_execute("SELECT 1").unwrap();
    let mut a = admin();
    a.batch_execute(&format!(
        "INSERT INTO agent_guard.agent_registry (agent, agent_name, sponsor, sponsor_name, kind, system_identifier)
         VALUES (4000000001, '{human}', 4000000002, '{sponsor}', 'agent', '1')"
    ))
    .unwrap();
    let e = open.batch_execute("SELECT 1").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    let db = e.as_db_error().unwrap();
    assert!(
        db.message()
            .starts_with(&format!("role \"{human}\" may not run statements here")),
        "{}",
        describe(&e)
    );
    assert!(
        db.hint().unwrap_or("").contains("register_agent"),
        "{}",
        describe(&e)
    );
    let mut fresh = connect(&human);
    let e = fresh.batch_execute("SELECT 1").unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // the refusal is in the trail, as an agent's
    let n = wait_count(
        &mut a,
        &format!(
            "SELECT count(*) FROM agent_guard.audit_log a JOIN agent_guard.audit_sessions s ON s.id = a.session_id \
             WHERE s.login_role = '{human}' AND a.decision = 'denied'"
        ),
        2,
    );
    assert!(n >= 2, "{n}");
    let check: Vec<(String, String)> = a
        .query(
            "SELECT state, role_name::text FROM agent_guard.registry_check() WHERE agent_name = $1",
            &[&human],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(check, vec![("unmatched".to_string(), human.clone())]);
    a.batch_execute(&format!(
        "DELETE FROM agent_guard.agent_registry WHERE agent_name = '{human}'"
    ))
    .unwrap();
    open.batch_execute("SELECT 1").unwrap();
}

/// The label pg_dumpall emits is accepted from a superuser only, and only
/// to register: removing a registration takes unregister_agent().
#[test]
fn role_labels_restore_only_from_superusers() {
    let sponsor = create_login_role("rl_sponsor", "");
    let agent = create_login_role("rl_agent", "");
    let creator = create_login_role("rl_creator", "CREATEROLE");
    let mut a = admin();
    let label = format!("AGENT SPONSOR \"{sponsor}\" KIND agent");
    // a role admin who is not a superuser may not
    let mut cr = connect(&creator);
    let e = cr
        .batch_execute(&format!(
            "SECURITY LABEL FOR agent_guard ON ROLE {agent} IS '{label}'"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    // malformed labels are refused
    let e = a
        .batch_execute(&format!(
            "SECURITY LABEL FOR agent_guard ON ROLE {agent} IS 'AGENT'"
        ))
        .unwrap_err();
    assert!(
        describe(&e).contains("is not a valid agent_guard role label"),
        "{}",
        describe(&e)
    );
    // the superuser restores it: the role is an agent at once
    a.batch_execute(&format!(
        "SECURITY LABEL FOR agent_guard ON ROLE {agent} IS '{label}'"
    ))
    .unwrap();
    let mut c = connect(&agent);
    let is_agent: bool = c
        .query_one("SELECT agent_guard.is_agent_session()", &[])
        .unwrap()
        .get(0);
    assert!(is_agent);
    let status: String = a
        .query_one(
            "SELECT sponsor_status FROM agent_guard.agents WHERE agent::text = $1",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
    // removing it directly is refused, even for a superuser
    let e = a
        .batch_execute(&format!(
            "SECURITY LABEL FOR agent_guard ON ROLE {agent} IS NULL"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    assert!(
        describe(&e).contains("unregister_agent"),
        "{}",
        describe(&e)
    );
    a.batch_execute(&format!("SELECT agent_guard.unregister_agent('{agent}')"))
        .unwrap();
    let is_agent: bool = c
        .query_one("SELECT agent_guard.is_agent_session()", &[])
        .unwrap()
        .get(0);
    assert!(!is_agent);
}
