//! Facts + who → decision, and the one place a refusal becomes an error.

use agent_guard_core::policy::NoGrants;
pub use agent_guard_core::policy::SessionState;
use agent_guard_core::{classify, decide, Classification, Decision, Facts, Refusal};
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raise a refusal as SQLSTATE 42501 with message, detail and hint.
pub fn refuse(r: &Refusal) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, r.message.clone(), "agent_guard")
        .set_detail(r.detail.clone())
        .set_hint(r.hint.clone())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Decide on a classified statement for the current session.
pub fn decide_current(c: &Classification) -> Decision {
    if !crate::gucs::enabled() {
        return Decision::NotEnforced;
    }
    let Some(agent) = crate::identity::current_agent() else {
        return Decision::NotEnforced;
    };
    // Housekeeping needs no catalog access: it must work in aborted transactions.
    if c.is_housekeeping() && !c.touches_guard {
        return Decision::Allow { reason: "session housekeeping".into(), grant: None };
    }
    let actor = crate::identity::actor(&agent);
    let session = crate::identity::session_state();
    decide(Some(&actor), &session, c, &NoGrants)
}

/// Check a statement of the current agent session; refuse if policy says no.
pub fn check(facts: &Facts) {
    let c = classify(facts);
    if let Decision::Deny(r) = decide_current(&c) {
        refuse(&r);
    }
}

/// Check a function call of the current agent session (from the object-access hook).
pub fn check_function(funcid: pg_sys::Oid) {
    let (schema, name) = unsafe {
        let name = pg_sys::get_func_name(funcid);
        if name.is_null() {
            return;
        }
        let nsp = pg_sys::get_namespace_name(pg_sys::get_func_namespace(funcid));
        (
            if nsp.is_null() { String::new() } else { std::ffi::CStr::from_ptr(nsp).to_string_lossy().into_owned() },
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned(),
        )
    };
    let superuser = unsafe { pg_sys::superuser_arg(pg_sys::GetUserId()) };
    if let Some(c) = agent_guard_core::classify_function(&schema, &name, superuser) {
        if let Decision::Deny(r) = decide_current(&c) {
            refuse(&r);
        }
    }
}
