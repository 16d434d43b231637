//! Error messages of agent sessions that quote row values.
//!
//! Constraint violations in a (granted) write describe the offending row:
//! `Failing row contains (…)`, `Key (ssn)=(…) already exists`, `Partition key
//! of the failing row contains …`. Those rows hold real values — including
//! masked columns the statement never mentioned. In agent sessions the
//! DETAIL of every integrity-constraint violation (SQLSTATE class 23, in any
//! `lc_messages` language) is replaced twice over:
//!
//! - as the error is raised, by an error-context callback every statement
//!   frame of the trampolines pushes (`ag_hide_row_values`, which asks
//!   [`row_values_hidden`]): so a PL/pgSQL `EXCEPTION` handler that catches
//!   the error (`GET STACKED DIAGNOSTICS … = PG_EXCEPTION_DETAIL`) never
//!   holds the real row, and the replacement does not depend on the error
//!   being logged (`log_min_messages` above `error` skips `emit_log_hook`);
//! - as it is reported (`emit_log_hook`, before the client and the server
//!   log), for errors raised outside any statement frame (deferred
//!   constraints at `COMMIT`), also by the English wording of other DETAILs
//!   that quote rows.

use pgrx::pg_sys;
use std::ffi::CStr;

const ROW_DETAILS: &[&str] = &[
    "Failing row contains",
    "Key (",
    "Partition key of the failing row contains",
];

/// The replacement DETAIL.
pub const HIDDEN: &CStr = c"Row values are not shown to agents (agent_guard masks regulated data).";

/// Whether an error of this SQLSTATE is an integrity-constraint violation (class 23).
pub fn is_integrity_violation(sqlerrcode: i32) -> bool {
    // MAKE_SQLSTATE packs six bits per character, first character lowest
    let class = sqlerrcode & 0xFFF;
    let c0 = ((class & 0x3F) + b'0' as i32) as u8;
    let c1 = (((class >> 6) & 0x3F) + b'0' as i32) as u8;
    (c0, c1) == (b'2', b'3')
}

/// The replacement DETAIL for an error raised in this session, if its
/// DETAIL is to be hidden (agent sessions; called from the error-context
/// callback, so it must not raise or panic).
pub fn row_values_hidden() -> Option<&'static CStr> {
    (crate::identity::cached_is_agent_in_error() && !crate::hooks::is_own_worker())
        .then_some(HIDDEN)
}

/// Whether a DETAIL quotes row values.
pub fn quotes_row_values(detail: &str) -> bool {
    ROW_DETAILS.iter().any(|p| detail.starts_with(p))
}

/// Hide row values quoted by an agent session's error DETAIL.
///
/// # Safety
/// `edata` is the error being reported (from the emit_log trampoline).
pub unsafe fn on_emit_log(edata: *mut pg_sys::ErrorData) {
    unsafe {
        if crate::identity::cached_is_agent() && !crate::hooks::is_own_worker() {
            for field in [&raw mut (*edata).detail, &raw mut (*edata).detail_log] {
                if !(*field).is_null() {
                    let text = CStr::from_ptr(*field).to_string_lossy();
                    if quotes_row_values(&text) || is_integrity_violation((*edata).sqlerrcode) {
                        *field = pg_sys::pstrdup(HIDDEN.as_ptr());
                    }
                }
            }
        }
    }
}
