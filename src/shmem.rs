//! Cluster-wide shared state: the registry generation counter.
//!
//! Every backend caches who is an agent and which columns are sensitive; any
//! change to roles, memberships, agent registrations, labels or the extension
//! itself bumps this counter at commit, and each backend re-reads its caches
//! at its next statement. A non-agent session pays one atomic load per statement.

use pgrx::atomics::PgAtomic;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgXactCallbackEvent};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"agent_guard_generation") };

thread_local! {
    /// A bump is pending for this transaction's commit.
    static BUMP_PENDING: Cell<bool> = const { Cell::new(false) };
}

pub fn init() {
    pg_shmem_init!(GENERATION);
}

/// The current generation.
pub fn generation() -> u64 {
    GENERATION.get().load(Ordering::Acquire)
}

/// Move the generation now (for changes already visible to others).
pub fn bump_now() {
    GENERATION.get().fetch_add(1, Ordering::AcqRel);
}

/// Move the generation when the current transaction commits, so other
/// backends re-read only once the change is visible to them.
pub fn bump_at_commit() {
    // Invalidate this backend's own caches right away too.
    bump_now();
    if BUMP_PENDING.with(|p| p.replace(true)) {
        return;
    }
    pgrx::register_xact_callback(PgXactCallbackEvent::Commit, || {
        BUMP_PENDING.with(|p| p.set(false));
        bump_now();
    });
    pgrx::register_xact_callback(PgXactCallbackEvent::Abort, || {
        BUMP_PENDING.with(|p| p.set(false));
    });
}
