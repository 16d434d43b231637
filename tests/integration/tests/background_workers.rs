//! agent_guard's background workers as an operator sees them: the activity
//! sampler comes back after `pg_terminate_backend` (it exits so that the
//! postmaster restarts it), and `agent_guard.status()` reports the workers
//! that really run — the activity sampler and this database's audit writer —
//! with the process ids `pg_stat_activity` shows.

use agent_guard_integration::*;
use postgres::Client;
use serde_json::Value;
use std::time::{Duration, Instant};

fn status(c: &mut Client) -> Value {
    let s: String = c
        .query_one("SELECT agent_guard.status()::text", &[])
        .unwrap_or_else(|e| panic!("status(): {}", describe(&e)))
        .get(0);
    serde_json::from_str(&s).unwrap()
}

/// The pid of the running process of `backend_type` (in `datname` if given).
fn worker_pid(c: &mut Client, backend_type: &str, datname: Option<&str>) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = $1
           AND ($2::text IS NULL OR datname = $2) ORDER BY backend_start DESC LIMIT 1",
        &[&backend_type, &datname],
    )
    .unwrap()
    .map(|r| r.get(0))
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_activity_sampler_comes_back_after_pg_terminate_backend() {
    let mut a = admin();
    let sampler = "agent_guard activity sampler";
    let first = wait_for("the activity sampler", Duration::from_secs(30), || {
        worker_pid(&mut a, sampler, None)
    });
    let killed: bool = a
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap()
        .get(0);
    assert!(killed);
    // the postmaster starts it again after its restart interval (10 s)
    let second = wait_for(
        "the activity sampler to come back",
        Duration::from_secs(45),
        || worker_pid(&mut a, sampler, None).filter(|p| *p != first),
    );
    let st = wait_for(
        "status() to report the new sampler",
        Duration::from_secs(10),
        || {
            let st = status(&mut a);
            (st["background_workers"]["activity_sampler"]["pid"].as_i64() == Some(second as i64))
                .then_some(st)
        },
    );
    let reported = &st["background_workers"]["activity_sampler"];
    assert_eq!(reported["running"], Value::Bool(true), "status(): {st}");
    assert_eq!(
        reported["database"].as_str(),
        Some("postgres"),
        "status(): {st}"
    );
}

#[test]
fn status_reports_the_audit_writer_of_this_database() {
    let mut a = admin();
    let sponsor = create_login_role("bgw_sponsor", "");
    let agent = create_login_role("bgw_agent", "");
    a.batch_execute(&format!(
        "SELECT agent_guard.register_agent('{agent}', '{sponsor}');"
    ))
    .unwrap();
    let mut c = connect(&agent);
    // a refusal waits for its record: the writer runs by the time it returns
    let refused = c.batch_execute("CREATE TABLE bgw_nope (id int)");
    assert!(refused.is_err());
    let db = database();
    let pid = wait_for(
        "this database's audit writer",
        Duration::from_secs(20),
        || worker_pid(&mut a, "agent_guard audit writer", Some(&db)),
    );
    let st = status(&mut a);
    let writers = st["background_workers"]["audit_writers"]
        .as_array()
        .unwrap_or_else(|| panic!("status() lists no audit writers: {st}"));
    let mine = writers
        .iter()
        .find(|w| w["pid"].as_i64() == Some(pid as i64))
        .unwrap_or_else(|| panic!("status() does not list writer {pid}: {st}"));
    assert_eq!(mine["database"].as_str(), Some(db.as_str()), "{st}");
    assert_eq!(mine["state"].as_str(), Some("running"), "{st}");
    assert!(
        st.get("background_worker").is_none(),
        "no placeholder left: {st}"
    );
}
