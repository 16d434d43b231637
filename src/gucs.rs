//! Settings under the reserved `agent_guard.` prefix.
//!
//! Settings that weaken protection are PGC_SUSET, and their check hook
//! refuses any change made from an agent session — superuser or not — on
//! every path: SET, set_config(), and function SET clauses.

use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;

/// `agent_guard.enabled`: enforce policy in agent sessions (default on).
static mut ENABLED: bool = true;
/// `agent_guard.request_id`: the request this session's statements serve.
static mut REQUEST_ID: *mut c_char = ptr::null_mut();

pub fn enabled() -> bool {
    unsafe { ENABLED }
}

/// The request id set with SET / SET LOCAL, if any.
pub fn request_id() -> Option<String> {
    unsafe {
        if REQUEST_ID.is_null() {
            return None;
        }
        let s = CStr::from_ptr(REQUEST_ID).to_string_lossy().into_owned();
        (!s.is_empty()).then_some(s)
    }
}

/// Check hook for protective settings: agents may not change them.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_protected_bool(
    _newval: *mut bool,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { allow_protected_change(source) }
}

unsafe fn allow_protected_change(source: pg_sys::GucSource::Type) -> bool {
    // Values from the configuration file, command line, ALTER ROLE/DATABASE
    // defaults and postmaster-level sources are set by administrators.
    if source < pg_sys::GucSource::PGC_S_CLIENT {
        return true;
    }
    if !crate::identity::cached_is_agent() {
        return true;
    }
    unsafe {
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32);
        pg_sys::GUC_check_errmsg_string =
            pg_sys::pstrdup(c"agent sessions may not change agent_guard's protective settings".as_ptr());
        pg_sys::GUC_check_errhint_string =
            pg_sys::pstrdup(c"Only agent_guard.request_id may be set by agents.".as_ptr());
    }
    false
}

pub fn init() {
    unsafe {
        pg_sys::DefineCustomBoolVariable(
            c"agent_guard.enabled".as_ptr(),
            c"Enforce agent_guard's policy in agent sessions.".as_ptr(),
            c"When off, agent sessions are not restricted. Superuser-only; agent sessions can never change it.".as_ptr(),
            &raw mut ENABLED,
            true,
            pg_sys::GucContext::PGC_SUSET,
            0,
            Some(check_protected_bool),
            None,
            None,
        );
        pg_sys::DefineCustomStringVariable(
            c"agent_guard.request_id".as_ptr(),
            c"Identifier of the request or CI job the session's statements serve.".as_ptr(),
            c"A sqlcommenter comment request_id='...' in a statement takes precedence.".as_ptr(),
            &raw mut REQUEST_ID,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            0,
            None,
            None,
            None,
        );
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(c"agent_guard".as_ptr());
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(c"agent_guard".as_ptr());
    }
}

/// The settings in force, for `agent_guard.status()`.
pub fn settings() -> serde_json::Value {
    serde_json::json!({
        "agent_guard.enabled": enabled(),
        "agent_guard.request_id": request_id(),
    })
}

/// Whether changing `name` with SET needs superuser rights (PGC_SUSET or stricter).
pub fn is_superuser_only(name: &str) -> bool {
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        {
            let vars = pg_sys::get_guc_variables();
            let n = pg_sys::GetNumConfigOptions();
            for i in 0..n as usize {
                let var = *vars.add(i);
                if var.is_null() {
                    continue;
                }
                let vname = CStr::from_ptr((*var).name).to_string_lossy();
                if vname.eq_ignore_ascii_case(name) {
                    return !matches!(
                        (*var).context,
                        pg_sys::GucContext::PGC_USERSET | pg_sys::GucContext::PGC_BACKEND
                    );
                }
            }
            false
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            let cname = std::ffi::CString::new(name).unwrap_or_default();
            let var = pg_sys::find_option(cname.as_ptr(), false, true, pg_sys::WARNING as i32);
            !var.is_null()
                && !matches!(
                    (*var).context,
                    pg_sys::GucContext::PGC_USERSET | pg_sys::GucContext::PGC_BACKEND
                )
        }
    }
}
