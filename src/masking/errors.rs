//! Error messages of agent sessions that quote row values.
//!
//! Constraint violations in a (granted) write describe the offending row:
//! `Failing row contains (…)`, `Key (ssn)=(…) already exists`, `Partition key
//! of the failing row contains …`. Those rows hold real values — including
//! masked columns the statement never mentioned. In agent sessions the
//! DETAIL is replaced before the message reaches the client or the server
//! log (`emit_log_hook` runs before both).

use pgrx::pg_sys;
use std::ffi::CStr;

const ROW_DETAILS: &[&str] = &[
    "Failing row contains",
    "Key (",
    "Partition key of the failing row contains",
];

/// The replacement DETAIL.
pub const HIDDEN: &str = "Row values are not shown to agents (agent_guard masks regulated data).";

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
                    if quotes_row_values(&text) {
                        let c = std::ffi::CString::new(HIDDEN).unwrap();
                        *field = pg_sys::pstrdup(c.as_ptr());
                    }
                }
            }
        }
    }
}
