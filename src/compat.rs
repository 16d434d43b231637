//! Differences between PostgreSQL majors, in one place.
//!
//! Every `cfg(feature = "pgNN")` of the Rust side lives here; the rest of the
//! crate calls these functions and is the same for every major. The hook
//! signatures that differ (ExecutorStart returning bool and ExecutorRun
//! without `execute_once` in 18) live in the C trampolines
//! (`src/hooks/trampolines.c`, section "executor"), the other place that
//! knows about versions.
//!
//! Built and tested: PostgreSQL 15 (Debian's package) and 18 (built from
//! source, `scripts/build-postgres.sh`); 17 when its source is available (see
//! the README). The branches for 13, 14, 16 and 17 are kept as written for
//! those majors' APIs but are not compiled on these machines (no headers).
//!
//! What differs, and where it is handled:
//! - shared memory requests: `shmem_request_hook` from 15 on
//!   ([`request_shmem_in_hook`]); before, `_PG_init` requests directly;
//! - GUC prefix reservation: `MarkGUCPrefixReserved` from 15 on ([`reserve_guc_prefix`]);
//! - finding a GUC's context: `find_option` is exported from 16 on; before,
//!   a scan of `get_guc_variables()` ([`guc_context`]);
//! - column privileges per range-table entry: `RTEPermissionInfo` (plan's
//!   `permInfos`) from 16 on, fields of the RTE before ([`rte_columns`]);
//! - `CMD_MERGE` from 15 on ([`is_merge`]);
//! - `ExecInsertIndexTuples` gained `onlySummarizing` in 16 ([`insert_index_tuples`]).
//!
//! Differences that need no code: agents' plans are kept serial through the
//! planner's cursor options, not through `force_parallel_mode` /
//! `debug_parallel_query` (renamed in 16); `VACUUM`, `ANALYZE`, `CLUSTER`,
//! `REINDEX` are `admin` and `REFRESH MATERIALIZED VIEW` is `ddl` for agents
//! whatever privileges they hold, so 17's `MAINTAIN` privilege and
//! `pg_maintain` role change nothing agent_guard decides (the access review
//! counts SELECT/INSERT/UPDATE/DELETE/TRUNCATE and lists `pg_*` memberships by
//! name, `pg_maintain` among them); the security-label catalogs
//! (`pg_seclabel`, `pg_shseclabel`) have the same columns in every major.

use pgrx::pg_sys;

/// Install `hook` as `shmem_request_hook`, returning the previous one; `None`
/// where the hook does not exist (then the caller requests in `_PG_init`).
pub unsafe fn request_shmem_in_hook(
    hook: unsafe extern "C-unwind" fn(),
) -> Option<Option<unsafe extern "C-unwind" fn()>> {
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        let prev = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(hook);
        Some(prev)
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    {
        let _ = hook;
        None
    }
}

/// Reserve the `agent_guard.` prefix for the settings defined so far.
pub unsafe fn reserve_guc_prefix() {
    unsafe {
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(c"agent_guard".as_ptr());
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(c"agent_guard".as_ptr());
    }
}

/// The context of setting `name` (case-insensitive), or `None` if it does not exist.
pub fn guc_context(name: &str) -> Option<pg_sys::GucContext::Type> {
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
                let vname = std::ffi::CStr::from_ptr((*var).name).to_string_lossy();
                if vname.eq_ignore_ascii_case(name) {
                    return Some((*var).context);
                }
            }
            None
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            let cname = std::ffi::CString::new(name).unwrap_or_default();
            let var = pg_sys::find_option(cname.as_ptr(), false, true, pg_sys::WARNING as i32);
            (!var.is_null()).then(|| (*var).context)
        }
    }
}

/// Whether `cmd` is MERGE (which exists from 15 on).
pub fn is_merge(cmd: pg_sys::CmdType::Type) -> bool {
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    {
        cmd == pg_sys::CmdType::CMD_MERGE
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    {
        let _ = cmd;
        false
    }
}

/// The column sets (selected, inserted, updated) of a range-table entry of `pstmt`.
pub unsafe fn rte_columns(
    pstmt: *mut pg_sys::PlannedStmt,
    rte: *mut pg_sys::RangeTblEntry,
) -> [*mut pg_sys::Bitmapset; 3] {
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        {
            let _ = pstmt;
            [(*rte).selectedCols, (*rte).insertedCols, (*rte).updatedCols]
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            let none = std::ptr::null_mut();
            let index = (*rte).perminfoindex;
            if index == 0 {
                return [none; 3];
            }
            let perms = pgrx::PgList::<pg_sys::RTEPermissionInfo>::from_pg((*pstmt).permInfos);
            match perms.get_ptr(index as usize - 1) {
                Some(p) => [(*p).selectedCols, (*p).insertedCols, (*p).updatedCols],
                None => [none; 3],
            }
        }
    }
}

/// Insert the index entries of the heap tuple in `slot` (its TID set by the
/// heap insert), as COPY does: no uniqueness-conflict handling, no arbiters.
pub unsafe fn insert_index_tuples(
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
) {
    let (none, no_list) = (std::ptr::null_mut(), std::ptr::null_mut());
    unsafe {
        #[cfg(feature = "pg13")]
        {
            (*estate).es_result_relation_info = rri;
            pg_sys::ExecInsertIndexTuples(slot, estate, false, none, no_list);
        }
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        pg_sys::ExecInsertIndexTuples(rri, slot, estate, false, false, none, no_list);
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        pg_sys::ExecInsertIndexTuples(rri, slot, estate, false, false, none, no_list, false);
    }
}

