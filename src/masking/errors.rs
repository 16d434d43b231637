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

static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;

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

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_emit_log(edata: *mut pg_sys::ErrorData) {
    unsafe {
        if crate::identity::cached_is_agent() && !pg_sys::IsBackgroundWorker {
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
        if let Some(prev) = PREV_EMIT_LOG {
            pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| prev(edata));
        }
    }
}

/// Install the hook (from `_PG_init`, after the audit's, so it runs first).
pub fn init() {
    unsafe {
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(on_emit_log);
    }
}
