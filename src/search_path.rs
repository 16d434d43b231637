//! agent_guard's own SQL runs with `search_path = pg_catalog, pg_temp`.
//!
//! Hooks and caches read the catalog without SQL ([`crate::catalog`]). Where
//! agent_guard still runs SQL of its own — the SQL-callable functions
//! (`register_agent`, `request_access`, `approve`, `verify_audit`, the masking
//! views' upkeep, ...), the grant lookup of an agent's write, the background
//! workers — every unqualified operator, function, type and cast in it must
//! resolve to PostgreSQL's own, never to an object someone created in a
//! schema of the caller's search path (a `public.=(oid, oid)` would otherwise
//! run inside agent_guard, as whoever called it). [`pinned`] sets the path for
//! the duration of a closure exactly as a function's `SET search_path` clause
//! does (a GUC nest level, restored on error too); pg_temp comes last, so
//! temporary objects cannot shadow anything either (and operators and
//! functions are never looked up there). The SQL text qualifies names as
//! well; the pinned path is what makes an oversight harmless.

use pgrx::pg_sys;
use pgrx::PgTryBuilder;

/// The search path agent_guard's own SQL runs with.
pub const PINNED: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// Run `f` with `search_path = pg_catalog, pg_temp`, restoring the caller's
/// path afterwards (also when `f` raises an error).
pub fn pinned<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let nest = unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        // GUC_ACTION_SAVE, like a function's SET clause (allowed in parallel mode too)
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            PINNED.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        nest
    };
    PgTryBuilder::new(f)
        .finally(|| unsafe { pg_sys::AtEOXact_GUC(true, nest) })
        .execute()
}

/// Pin the search path for the rest of a background worker's life (its
/// database's and role's settings included).
pub fn pin_for_worker() {
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            PINNED.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}
