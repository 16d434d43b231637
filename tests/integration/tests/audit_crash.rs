//! Crash safety: after `pg_ctl stop -m immediate`, every agent statement that
//! executed in sync mode has its audit record.

use agent_guard_integration::*;
use std::time::{Duration, Instant};

#[test]
fn sync_records_survive_an_immediate_shutdown() {
    let _x = exclusive();
    let sponsor = create_login_role("crash_sponsor", "");
    let agent = create_login_role("crash_agent", "");
    let tag = unique_name("crash");
    let mut a = admin();
    a.batch_execute(&format!(
        "SELECT agent_guard.register_agent('{agent}', '{sponsor}');
         ALTER ROLE {agent} SET agent_guard.audit_durability = 'sync';"
    ))
    .unwrap();
    drop(a);
    let mut c = connect(&agent);
    let durability: String = c
        .query_one("SHOW agent_guard.audit_durability", &[])
        .unwrap()
        .get(0);
    assert_eq!(durability, "sync");
    let n = 25;
    for i in 0..n {
        c.batch_execute(&format!("SELECT {i} /* request_id='{tag}' */"))
            .unwrap();
    }
    drop(c);
    restart("immediate");
    let mut a = admin();
    let deadline = Instant::now() + Duration::from_secs(20);
    let found: i64 = loop {
        let found: i64 = a
            .query_one(
                "SELECT count(*) FROM agent_guard.audit_log WHERE request_id = $1",
                &[&tag],
            )
            .unwrap()
            .get(0);
        if found >= n || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        found, n,
        "every statement that ran in sync mode is in the trail after a crash"
    );
    let intact: bool = a
        .query_one("SELECT intact FROM agent_guard.verify_audit()", &[])
        .unwrap()
        .get(0);
    assert!(intact);
}
