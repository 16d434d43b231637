//! The access review with real sessions: a human sponsor and an approver, an
//! agent with an active sponsor that gets a write approved, an orphaned agent,
//! an agent holding superuser it never uses, and an unregistered service
//! account a CI runner connects with (seen by the activity samples while its
//! session is open). Each appears with the right kind and findings; the
//! report renders as markdown and json and carries the approval chain of the
//! approved write. Roles are cluster-wide: every check filters to this
//! test's own roles.

use agent_guard_integration::*;
use postgres::Row;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// Connect to the test database as `user` with an application name of our choosing.
fn connect_as_app(user: &str, app: &str) -> Client {
    ensure_database();
    postgres::Config::new()
        .host(&host())
        .port(port())
        .user(user)
        .dbname(&database())
        .application_name(app)
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect {user} as {app}: {}", describe(&e)))
}

struct Cast {
    alice: String,
    bob: String,
    carol: String,
    dave: String,
    bot: String,
    orphan: String,
    root: String,
    svc: String,
    table: String,
    customers: String,
}

impl Cast {
    fn roles(&self) -> Vec<&str> {
        vec![
            &self.alice,
            &self.bob,
            &self.carol,
            &self.dave,
            &self.bot,
            &self.orphan,
            &self.root,
            &self.svc,
        ]
    }
}

fn cast() -> Cast {
    let alice = create_login_role("rv_alice", "");
    let bob = create_login_role("rv_bob", "IN ROLE agent_guard_approver");
    let carol = create_login_role("rv_carol", "");
    let dave = create_login_role("rv_dave", "");
    let bot = create_login_role("rv_bot", "");
    let orphan = create_login_role("rv_orphan", "");
    let root = create_login_role("rv_root", "SUPERUSER");
    let svc = create_login_role("rv_svc", "");
    let table = unique_name("rv_orders");
    let customers = unique_name("rv_customers");
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, amount int);
         INSERT INTO {table} SELECT g, g FROM generate_series(1, 10) g;
         CREATE TABLE {customers} (id int PRIMARY KEY, email text);
         GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {bot}, {orphan}, {svc};
         GRANT SELECT ON {customers} TO {bot};
         SELECT agent_guard.register_agent('{bot}', '{alice}', note => 'review test agent');
         SELECT agent_guard.register_agent('{orphan}', '{carol}');
         SELECT agent_guard.register_agent('{root}', '{alice}');
         ALTER ROLE {bot} SET agent_guard.audit_durability = sync;
         ALTER ROLE {root} SET agent_guard.audit_durability = sync;"
    ))
    .unwrap_or_else(|e| panic!("setup: {}", describe(&e)));
    Cast {
        alice,
        bob,
        carol,
        dave,
        bot,
        orphan,
        root,
        svc,
        table,
        customers,
    }
}

fn cleanup(c: &Cast) {
    let mut a = admin();
    let _ = a.batch_execute(&format!(
        "DROP TABLE IF EXISTS {}, {}",
        c.table, c.customers
    ));
    for r in c.roles() {
        let _ = a.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE IF EXISTS {r};"));
    }
}

fn get<T: for<'a> postgres::types::FromSql<'a>>(row: &Row, col: &str) -> T {
    row.try_get(col)
        .unwrap_or_else(|e| panic!("column {col}: {e}"))
}

/// access_review() rows of our roles, by role name.
fn review(a: &mut Client, c: &Cast) -> HashMap<String, Row> {
    let names: Vec<String> = c.roles().iter().map(|s| s.to_string()).collect();
    a.query(
        "SELECT role::text AS role, kind, agent::text AS agent, sponsor::text AS sponsor, sponsor_status,
                can_login, superuser, can_write, risks_used, commands_used, objects_used, unused_rights,
                refusals, grants_requested, grants_approved, approved_by::text[] AS approved_by,
                sessions, application_names, machine_signals, findings::text AS findings, top_severity
         FROM agent_guard.access_review() WHERE role::text = ANY ($1)",
        &[&names],
    )
    .unwrap_or_else(|e| panic!("access_review(): {}", describe(&e)))
    .into_iter()
    .map(|r| (get::<String>(&r, "role"), r))
    .collect()
}

fn codes(row: &Row) -> Vec<(String, String)> {
    let findings: Value = serde_json::from_str(&get::<String>(row, "findings")).unwrap();
    findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn finding(row: &Row, code: &str) -> Value {
    let findings: Value = serde_json::from_str(&get::<String>(row, "findings")).unwrap();
    findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .cloned()
        .unwrap_or_else(|| panic!("no {code} finding in {findings}"))
}

#[test]
fn the_review_classifies_actors_and_the_report_carries_the_approval_chain() {
    let c = cast();

    // the unregistered service account, used by a CI runner; its session is
    // open while the activity is sampled
    let mut svc = connect_as_app(&c.svc, "GitHub Actions");
    svc.batch_execute(&format!("SELECT count(*) FROM {}", c.table))
        .unwrap();
    // a human at a psql prompt
    let mut dave = connect_as_app(&c.dave, "psql");
    dave.batch_execute("SELECT 1").unwrap();
    let seen: i32 = admin()
        .query_one("SELECT agent_guard.sample_activity()", &[])
        .unwrap()
        .get(0);
    assert!(seen >= 2, "sampled {seen} sessions");
    drop((svc, dave));

    // the agent is refused, requests from the hint, bob approves, the agent writes
    let mut bot = connect(&c.bot);
    bot.batch_execute(&format!("SELECT count(*) FROM {}", c.customers))
        .unwrap();
    let delete = format!("DELETE FROM {} WHERE id <= 2", c.table);
    let err = bot.batch_execute(&delete).unwrap_err();
    let hint = err
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap()
        .to_string();
    let call = hint.split("run: ").nth(1).unwrap().trim_end_matches(';');
    let call = call.replace("reason => '...'", "reason => 'remove two test orders'");
    let id: i64 = bot
        .query_one(&format!("/* request_id='it-review-1' */ {call}"), &[])
        .unwrap_or_else(|e| panic!("{call}: {}", describe(&e)))
        .get(0);
    let mut bob = connect(&c.bob);
    bob.batch_execute(&format!(
        "SELECT agent_guard.approve({id}, note => 'two rows only')"
    ))
    .unwrap_or_else(|e| panic!("approve: {}", describe(&e)));
    let deleted = bot
        .execute(
            format!("/* request_id='it-review-1' */ {delete}").as_str(),
            &[],
        )
        .unwrap_or_else(|e| panic!("approved delete: {}", describe(&e)));
    assert_eq!(deleted, 2);
    drop((bot, bob));

    // the superuser agent tries an administrative statement (refused)
    let mut root = connect(&c.root);
    assert!(root
        .batch_execute("ALTER SYSTEM SET work_mem = '1GB'")
        .is_err());
    // and may not run the review itself
    let err = root
        .query("SELECT * FROM agent_guard.access_review()", &[])
        .unwrap_err();
    assert!(
        describe(&err).contains("may not change agent_guard itself (SELECT access_review())"),
        "{}",
        describe(&err)
    );
    drop(root);

    // carol leaves: her agent is orphaned
    let mut a = admin();
    // the statement records are written before the statements run; how they
    // ended follows moments later
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done: i64 = a
            .query_one(
                "SELECT count(*) FROM agent_guard.audit_log
                 WHERE grant_id = $1 AND command = 'DELETE' AND rows_affected IS NOT NULL",
                &[&id],
            )
            .unwrap()
            .get(0);
        if done > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the approved DELETE's outcome never reached the trail"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.batch_execute(&format!("ALTER ROLE {} NOLOGIN", c.carol))
        .unwrap();

    let rows = review(&mut a, &c);
    // one row per role that can log in or is registered: carol no longer can
    assert_eq!(rows.len(), c.roles().len() - 1, "{:?}", rows.keys());
    assert!(!rows.contains_key(&c.carol));

    // humans
    for (role, why) in [
        (&c.alice, "sponsor"),
        (&c.bob, "approver"),
        (&c.dave, "psql"),
    ] {
        assert_eq!(
            get::<String>(&rows[role], "kind"),
            "human",
            "{role} ({why})"
        );
        assert!(codes(&rows[role]).is_empty(), "{role}");
    }
    // the agent with an active sponsor and an approved write
    let bot = &rows[&c.bot];
    assert_eq!(get::<String>(bot, "kind"), "agent");
    assert_eq!(
        get::<Option<String>>(bot, "sponsor").as_deref(),
        Some(c.alice.as_str())
    );
    assert_eq!(
        get::<Option<String>>(bot, "sponsor_status").as_deref(),
        Some("active")
    );
    assert_eq!(get::<i64>(bot, "grants_requested"), 1);
    assert_eq!(get::<i64>(bot, "grants_approved"), 1);
    assert_eq!(get::<Vec<String>>(bot, "approved_by"), vec![c.bob.clone()]);
    assert_eq!(get::<i64>(bot, "refusals"), 1);
    let risks: Vec<String> = get(bot, "risks_used");
    assert!(risks.contains(&"write".to_string()), "{risks:?}");
    let objects: Vec<String> = get(bot, "objects_used");
    assert!(
        objects.contains(&format!("public.{}", c.table)),
        "{objects:?}"
    );
    let bot_codes = codes(bot);
    assert!(
        !bot_codes.iter().any(|(code, _)| code == "orphaned_agent"),
        "{bot_codes:?}"
    );
    let unlabelled = finding(bot, "unlabelled_sensitive_columns");
    assert!(
        unlabelled["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("public.{}.email IS 'SENSITIVE'", c.customers)),
        "{unlabelled}"
    );

    // the orphaned agent: critical, first
    let orphan = &rows[&c.orphan];
    assert_eq!(get::<String>(orphan, "kind"), "agent");
    assert_eq!(
        get::<Option<String>>(orphan, "sponsor_status").as_deref(),
        Some("nologin")
    );
    assert!(get::<bool>(orphan, "can_login"));
    assert_eq!(
        codes(orphan)[0],
        ("orphaned_agent".to_string(), "critical".to_string())
    );
    assert_eq!(
        get::<Option<String>>(orphan, "top_severity").as_deref(),
        Some("critical")
    );
    let f = finding(orphan, "orphaned_agent");
    assert!(f["finding"].as_str().unwrap().contains(&c.carol), "{f}");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ALTER ROLE {} NOLOGIN;", c.orphan)),
        "{f}"
    );

    // the agent holding superuser it never used
    let root = &rows[&c.root];
    assert_eq!(get::<String>(root, "kind"), "agent");
    assert!(get::<bool>(root, "superuser"));
    let f = finding(root, "agent_unused_admin_rights");
    assert_eq!(f["severity"], "high");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("ALTER ROLE {} NOSUPERUSER;", c.root)),
        "{f}"
    );
    let unused: Option<Vec<String>> = get(root, "unused_rights");
    assert!(unused.unwrap().contains(&"superuser".to_string()));
    // ALTER SYSTEM and its try at access_review() (refused by the function rule, so recorded)
    assert_eq!(get::<i64>(root, "refusals"), 2);

    // the service account, seen through the activity samples only
    let svc = &rows[&c.svc];
    assert_eq!(get::<String>(svc, "kind"), "service");
    let apps: Vec<String> = get(svc, "application_names");
    assert!(apps.contains(&"GitHub Actions".to_string()), "{apps:?}");
    assert!(get::<i64>(svc, "sessions") >= 1);
    let signals: Vec<String> = get(svc, "machine_signals");
    assert!(
        signals
            .iter()
            .any(|s| s.contains("'GitHub Actions' (CI/CD runner")),
        "{signals:?}"
    );
    let f = finding(svc, "unregistered_machine_role");
    assert_eq!(f["severity"], "high", "it may write");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("agent_guard.register_agent('{}'", c.svc)),
        "{f}"
    );

    // the report, json: our roles' findings in order, the orphaned agent first;
    // the approved write with its approval chain
    let json: String = a
        .query_one("SELECT agent_guard.access_review_report('json')", &[])
        .unwrap_or_else(|e| panic!("report json: {}", describe(&e)))
        .get(0);
    let doc: Value = serde_json::from_str(&json).expect("the json report parses");
    assert_eq!(doc["scope"]["database"], database().as_str());
    assert_eq!(doc["scope"]["generated_by"], superuser().as_str());
    let ours: Vec<&Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| c.roles().contains(&f["role"].as_str().unwrap()))
        .collect();
    assert_eq!(ours[0]["role"], c.orphan.as_str());
    assert_eq!(ours[0]["code"], "orphaned_agent");
    assert_eq!(ours[0]["severity"], "critical");
    let write = doc["high_risk_actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["who"] == c.bot.as_str() && x["decision"] == "allowed" && x["command"] == "DELETE"
        })
        .unwrap_or_else(|| panic!("no approved DELETE in {}", doc["high_risk_actions"]));
    assert_eq!(write["grant"], id);
    assert_eq!(write["request_id"], "it-review-1");
    assert_eq!(write["requested_by"], c.bot.as_str());
    assert_eq!(write["approved_by"], c.bob.as_str());
    assert_eq!(write["approval_note"], "two rows only");
    assert_eq!(write["request_reason"], "remove two test orders");
    assert_eq!(write["agent"], c.bot.as_str());
    assert_eq!(write["sponsor"], c.alice.as_str());
    assert_eq!(write["rows"], 2);
    let refused = doc["high_risk_actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["who"] == c.bot.as_str() && x["decision"] == "denied")
        .count();
    assert_eq!(refused, 1, "the refused DELETE is evidence too");

    // the report, markdown: the same, as tables an auditor can file
    let md: String = a
        .query_one("SELECT agent_guard.access_review_report()", &[])
        .unwrap_or_else(|e| panic!("report markdown: {}", describe(&e)))
        .get(0);
    assert!(
        md.starts_with(&format!(
            "# agent_guard access review: database {}",
            database()
        )),
        "{}",
        &md[..200.min(md.len())]
    );
    for heading in [
        "## Summary",
        "## Findings",
        "## Actors",
        "## High-risk actions",
    ] {
        assert!(md.contains(heading), "no {heading}");
    }
    let findings_table = &md[md.find("## Findings").unwrap()..md.find("## Actors").unwrap()];
    let first_ours = findings_table
        .lines()
        .find(|l| c.roles().iter().any(|r| l.contains(&format!("| {r} |"))))
        .unwrap_or_else(|| panic!("none of our roles in\n{findings_table}"));
    assert!(
        first_ours.contains("| **critical** |") && first_ours.contains(&c.orphan),
        "{first_ours}"
    );
    let chain = md
        .lines()
        .find(|l| l.contains(&format!("| #{id} |")))
        .unwrap_or_else(|| panic!("no row with grant #{id} in\n{md}"));
    assert!(chain.contains("| write | DELETE |"), "{chain}");
    assert!(chain.contains("| it-review-1 |"), "{chain}");
    assert!(
        chain.contains(&format!("{} at ", c.bot)) && chain.contains(&format!("/ {} at ", c.bob)),
        "{chain}"
    );
    assert!(chain.contains("(two rows only)"), "{chain}");
    assert!(
        md.lines()
            .any(|l| l.starts_with(&format!("| {} | service |", c.svc))),
        "the service account is in the actors table"
    );

    cleanup(&c);
}

#[test]
fn only_human_reviewers_may_run_it() {
    let sponsor = create_login_role("rv2_sponsor", "");
    let agent = create_login_role("rv2_agent", "SUPERUSER");
    let reviewer = create_login_role("rv2_reviewer", "IN ROLE agent_guard_admin");
    let nobody = create_login_role("rv2_nobody", "");
    admin()
        .batch_execute(&format!(
            "SELECT agent_guard.register_agent('{agent}', '{sponsor}')"
        ))
        .unwrap();
    // an agent session, superuser or not
    let mut ag = connect(&agent);
    for sql in [
        "SELECT count(*) FROM agent_guard.access_review()",
        "SELECT agent_guard.access_review_report('json')",
        "SELECT agent_guard.sample_activity()",
    ] {
        let e = ag.query(sql, &[]).unwrap_err();
        assert_eq!(e.code().unwrap().code(), "42501", "{sql}: {}", describe(&e));
    }
    // a human without agent_guard_admin
    let mut no = connect(&nobody);
    let e = no
        .query("SELECT count(*) FROM agent_guard.access_review()", &[])
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42501", "{}", describe(&e));
    // a member of agent_guard_admin
    let mut rv = connect(&reviewer);
    let n: i64 = rv
        .query_one(
            "SELECT count(*) FROM agent_guard.access_review() WHERE role::text = $1",
            &[&agent],
        )
        .unwrap_or_else(|e| panic!("{}", describe(&e)))
        .get(0);
    assert_eq!(n, 1);
    let md: String = rv
        .query_one("SELECT agent_guard.access_review_report()", &[])
        .unwrap()
        .get(0);
    assert!(md.contains(&format!("| {agent} | agent |")));
    drop((ag, no, rv));
    let mut a = admin();
    for r in [&agent, &reviewer, &nobody, &sponsor] {
        let _ = a.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE IF EXISTS {r};"));
    }
}
