//! Smoke test: a real client reaches the extension on the test cluster.
use agent_guard_integration::{admin, connect, create_login_role};

#[test]
fn version_is_reported() {
    let mut c = admin();
    let v: String = c
        .query_one("SELECT agent_guard.version()::text", &[])
        .unwrap()
        .get(0);
    assert!(
        !v.trim().is_empty(),
        "agent_guard.version() returned an empty string"
    );
}

#[test]
fn extension_is_preloaded_and_installed() {
    let mut c = admin();
    let preload: String = c
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    assert!(
        preload.contains("agent_guard"),
        "shared_preload_libraries = {preload:?}"
    );
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'agent_guard'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn a_fresh_role_can_log_in() {
    let role = create_login_role("it_smoke", "");
    let mut c = connect(&role);
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, role);
}
