//! Cluster-wide shared state: the registry generation counter.
//!
//! Every backend caches who is an agent and which columns are sensitive; any
//! change to roles, memberships, agent registrations, labels or the extension
//! itself bumps this counter at commit, and each backend re-reads its caches
//! at its next statement. A non-agent session pays one atomic load per statement.
//!
//! On a hot standby nobody bumps the counter: the changes arrive by WAL
//! replay. There, PostgreSQL's own invalidation messages (replayed with each
//! commit) move a backend-local part of the generation instead: relcache
//! invalidations (agent_guard sends one for `pg_shseclabel` when a role label
//! changes and for `agent_guard.agent_registry` when its rows change; column
//! labels invalidate their relation) and syscache invalidations of roles and
//! memberships. So an open standby session learns that its role became an
//! agent, or that a column is now masked, at its next statement.

use pgrx::atomics::PgAtomic;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"agent_guard_generation") };

thread_local! {
    /// A bump is pending for this transaction's commit.
    static BUMP_PENDING: Cell<bool> = const { Cell::new(false) };
    /// The resource-release callback is registered in this backend.
    static RELEASE_CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// Invalidations replayed on a hot standby that bear on the caches.
    static LOCAL: Cell<u64> = const { Cell::new(0) };
}

pub fn init() {
    pg_shmem_init!(GENERATION);
    // Registered in the postmaster: every backend and worker inherits them.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0usize));
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(syscache_changed),
                pg_sys::Datum::from(0usize),
            );
        }
    }
}

/// Only on a hot standby (on a primary the shared counter covers it all).
fn replayed_change() {
    if unsafe { pg_sys::RecoveryInProgress() } {
        LOCAL.with(|l| l.set(l.get().wrapping_add(1)));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    replayed_change();
}

#[pg_guard]
unsafe extern "C-unwind" fn syscache_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    replayed_change();
}

/// The current generation (the shared counter, plus what replay invalidated
/// in this backend on a hot standby).
pub fn generation() -> u64 {
    GENERATION
        .get()
        .load(Ordering::Acquire)
        .wrapping_add(LOCAL.with(|l| l.get()))
}

/// Tell hot standbys' backends, through the WAL, that `relid`'s contents
/// bear on agent_guard's caches (a relcache invalidation sent at commit).
pub fn invalidate_replicas(relid: pg_sys::Oid) {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// Move the generation now (for changes already visible to others).
pub fn bump_now() {
    GENERATION.get().fetch_add(1, Ordering::AcqRel);
}

/// Move the generation when the current transaction commits, so other
/// backends re-read only once the change is visible to them: after the
/// commit is visible *and* its invalidation messages are sent (PostgreSQL
/// sends them after the transaction callbacks run, so the bump waits for
/// the release of the transaction's locks). A reader that sees the new
/// generation and then calls [`catch_up`] reads the committed state, from
/// the syscache too.
pub fn bump_at_commit() {
    // Invalidate this backend's own caches right away too.
    bump_now();
    if BUMP_PENDING.with(|p| p.replace(true)) {
        return;
    }
    if !RELEASE_CALLBACK.with(|r| r.replace(true)) {
        unsafe {
            pg_sys::RegisterResourceReleaseCallback(Some(after_release), std::ptr::null_mut())
        };
    }
}

/// The end of a top-level transaction: its changes are visible and its
/// invalidations sent once its locks are released.
#[pg_guard]
unsafe extern "C-unwind" fn after_release(
    phase: pg_sys::ResourceReleasePhase::Type,
    is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if phase == pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS
        && is_top_level
        && BUMP_PENDING.with(|p| p.replace(false))
        && is_commit
    {
        bump_now();
    }
}

/// Before re-reading a cache because the generation moved: take in the
/// invalidations other backends sent (their commits moved the generation
/// only after sending them) and start a fresh catalog snapshot, so the
/// reload sees every change the generation read before this call stands for.
pub fn catch_up() {
    unsafe {
        if pg_sys::IsTransactionState() {
            pg_sys::AcceptInvalidationMessages();
            pg_sys::InvalidateCatalogSnapshot();
        }
    }
}
