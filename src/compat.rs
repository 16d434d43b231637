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
//!   `permInfos`, query's `rteperminfos`) from 16 on, fields of the RTE
//!   before ([`rte_columns`], [`query_rte_selected`]);
//! - `CMD_MERGE` from 15 on ([`is_merge`]);
//! - expanded views stay subquery entries with the view's OID from 16 on
//!   ([`is_relation_entry`]);
//! - the masking rewrite moves a relation's permission checks into the
//!   subquery it builds ([`move_permission_checks`]);
//! - `ReplaceVarsFromTargetList` gained `result_relation` in 18
//!   ([`replace_vars_from_target_list`]);
//! - subquery pull-up no longer reads junk output columns in 18
//!   ([`PULLUP_READS_JUNK_COLUMNS`]: system columns read through a masked
//!   relation);
//! - statement locations: 18 starts a statement at its first token, after
//!   its leading comments ([`statement_text`] keeps them, as before 18);
//! - tuple descriptors: attributes follow `compact_attrs` from 18 on ([`tuple_desc_attr`]);
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

/// Whether the planner, pulling a subquery up into its parent, replaces the
/// parent's references to the subquery's junk output columns (up to 17); from
/// 18 on it refuses them ("could not find replacement targetlist entry"), so
/// columns the parent reads must be ordinary outputs.
pub const PULLUP_READS_JUNK_COLUMNS: bool = cfg!(any(
    feature = "pg13",
    feature = "pg14",
    feature = "pg15",
    feature = "pg16",
    feature = "pg17"
));

/// The text of the statement at `location` (length `len`, 0: to the end) of
/// `source`, trimmed, as PostgreSQL up to 17 delimits it: from the end of
/// the previous statement, so comments before the statement (a sqlcommenter
/// `/* request_id=... */`, say) belong to it. PostgreSQL 18 starts the
/// statement at its first token; where a comment precedes it, the start is
/// moved back to the previous `;` (PostgreSQL's own lexer finds it), so the
/// audit trail and hints show the same text on every major.
pub fn statement_text(source: &str, location: i32, len: i32) -> &str {
    let start = if location > 0 {
        (location as usize).min(source.len())
    } else {
        0
    };
    let end = if len > 0 {
        (start + len as usize).min(source.len())
    } else {
        source.len()
    };
    #[cfg(not(any(
        feature = "pg13",
        feature = "pg14",
        feature = "pg15",
        feature = "pg16",
        feature = "pg17"
    )))]
    let start = with_leading_comments(source, start);
    source.get(start..end).unwrap_or(source).trim()
}

#[cfg(not(any(
    feature = "pg13",
    feature = "pg14",
    feature = "pg15",
    feature = "pg16",
    feature = "pg17"
)))]
fn with_leading_comments(source: &str, start: usize) -> usize {
    let bytes = source.as_bytes();
    let mut i = start;
    while i > 0 && bytes[i - 1].is_ascii_whitespace() {
        i -= 1;
    }
    if i == 0 || bytes[i - 1] == b';' {
        return start; // only whitespace before it: the trimmed text is the same
    }
    source
        .get(..start)
        .and_then(crate::lexer::after_last_semicolon)
        .unwrap_or(start)
}

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

/// Whether a range-table entry names a relation whose columns the statement
/// reads: a relation entry, and from 16 on also an expanded view (a subquery
/// entry that keeps the view's OID and permission info; up to 15 the view
/// stays a relation entry of relkind 'v' beside its subquery).
pub unsafe fn is_relation_entry(rte: *const pg_sys::RangeTblEntry) -> bool {
    unsafe {
        match (*rte).rtekind {
            pg_sys::RTEKind::RTE_RELATION => true,
            #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
            pg_sys::RTEKind::RTE_SUBQUERY => (*rte).relid != pg_sys::InvalidOid,
            _ => false,
        }
    }
}

/// The column sets (selected, inserted, updated) of range-table entry `rte`,
/// given the permission infos of its query or plan (`Query.rteperminfos`,
/// `PlannedStmt.permInfos`; ignored before 16, where the sets are the RTE's).
unsafe fn rte_columns_in(
    perminfos: *mut pg_sys::List,
    rte: *mut pg_sys::RangeTblEntry,
) -> [*mut pg_sys::Bitmapset; 3] {
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        {
            let _ = perminfos;
            [(*rte).selectedCols, (*rte).insertedCols, (*rte).updatedCols]
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            let none = std::ptr::null_mut();
            match perminfo(perminfos, rte) {
                Some(p) => [(*p).selectedCols, (*p).insertedCols, (*p).updatedCols],
                None => [none; 3],
            }
        }
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
unsafe fn perminfo(
    perminfos: *mut pg_sys::List,
    rte: *mut pg_sys::RangeTblEntry,
) -> Option<*mut pg_sys::RTEPermissionInfo> {
    unsafe {
        let index = (*rte).perminfoindex;
        if index == 0 {
            return None;
        }
        pgrx::PgList::<pg_sys::RTEPermissionInfo>::from_pg(perminfos).get_ptr(index as usize - 1)
    }
}

/// The column sets (selected, inserted, updated) of a range-table entry of plan `pstmt`.
pub unsafe fn rte_columns(
    pstmt: *mut pg_sys::PlannedStmt,
    rte: *mut pg_sys::RangeTblEntry,
) -> [*mut pg_sys::Bitmapset; 3] {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    let perminfos = {
        let _ = pstmt;
        std::ptr::null_mut()
    };
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    let perminfos = unsafe { (*pstmt).permInfos };
    unsafe { rte_columns_in(perminfos, rte) }
}

/// The column sets (selected, inserted, updated) of a range-table entry of
/// (rewritten) query `q`.
pub unsafe fn query_rte_columns(
    q: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
) -> [*mut pg_sys::Bitmapset; 3] {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    let perminfos = {
        let _ = q;
        std::ptr::null_mut()
    };
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    let perminfos = unsafe { (*q).rteperminfos };
    unsafe { rte_columns_in(perminfos, rte) }
}

/// The columns a range-table entry of (rewritten) query `q` selects.
pub unsafe fn query_rte_selected(
    q: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
) -> *mut pg_sys::Bitmapset {
    unsafe { query_rte_columns(q, rte)[0] }
}

/// `expandRTE` without dropped columns, at no location: the column names and
/// Vars of a range-table entry. 18 added the Vars' `returning_type`
/// (RETURNING OLD/NEW; the default here).
pub unsafe fn expand_rte(
    rte: *mut pg_sys::RangeTblEntry,
    rtindex: i32,
    sublevels_up: i32,
    names: *mut *mut pg_sys::List,
    vars: *mut *mut pg_sys::List,
) {
    unsafe {
        #[cfg(not(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16",
            feature = "pg17"
        )))]
        pg_sys::expandRTE(
            rte,
            rtindex,
            sublevels_up,
            pg_sys::VarReturningType::VAR_RETURNING_DEFAULT,
            -1,
            false,
            names,
            vars,
        );
        #[cfg(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16",
            feature = "pg17"
        ))]
        pg_sys::expandRTE(rte, rtindex, sublevels_up, -1, false, names, vars);
    }
}

/// The masking rewrite turns relation entry `rte` of `q` into a subquery `sub`
/// whose only entry `inner` is a copy of it: the permission checks move with
/// the relation to `inner` (as the same user, for the same columns) and the
/// outer entry checks nothing. Up to 15 the checks are fields of the entry
/// (already copied); from 16 on they are an `RTEPermissionInfo` of the query,
/// copied into `sub.rteperminfos` (the outer one is then referenced by no
/// entry, and the planner keeps only referenced ones).
pub unsafe fn move_permission_checks(
    q: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
    inner: *mut pg_sys::RangeTblEntry,
    sub: *mut pg_sys::Query,
) {
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        {
            let _ = (q, inner, sub);
            (*rte).requiredPerms = 0;
            (*rte).checkAsUser = pg_sys::InvalidOid;
            (*rte).selectedCols = std::ptr::null_mut();
            (*rte).insertedCols = std::ptr::null_mut();
            (*rte).updatedCols = std::ptr::null_mut();
            (*rte).extraUpdatedCols = std::ptr::null_mut();
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            (*inner).perminfoindex = 0;
            if let Some(p) = perminfo((*q).rteperminfos, rte) {
                let copy = pg_sys::copyObjectImpl(p as *const std::ffi::c_void);
                (*sub).rteperminfos = pg_sys::lappend(std::ptr::null_mut(), copy);
                (*inner).perminfoindex = 1;
            }
            (*rte).perminfoindex = 0;
        }
    }
}

/// `ReplaceVarsFromTargetList`, which gained `result_relation` (for
/// RETURNING OLD/NEW) in 18.
#[allow(clippy::too_many_arguments)]
pub unsafe fn replace_vars_from_target_list(
    node: *mut pg_sys::Node,
    target_varno: i32,
    sublevels_up: i32,
    target_rte: *mut pg_sys::RangeTblEntry,
    targetlist: *mut pg_sys::List,
    result_relation: i32,
    nomatch_option: pg_sys::ReplaceVarsNoMatchOption::Type,
    nomatch_varno: i32,
    outer_has_sublinks: *mut bool,
) -> *mut pg_sys::Node {
    unsafe {
        #[cfg(not(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16",
            feature = "pg17"
        )))]
        {
            pg_sys::ReplaceVarsFromTargetList(
                node,
                target_varno,
                sublevels_up,
                target_rte,
                targetlist,
                result_relation,
                nomatch_option,
                nomatch_varno,
                outer_has_sublinks,
            )
        }
        #[cfg(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16",
            feature = "pg17"
        ))]
        {
            let _ = result_relation;
            pg_sys::ReplaceVarsFromTargetList(
                node,
                target_varno,
                sublevels_up,
                target_rte,
                targetlist,
                nomatch_option,
                nomatch_varno,
                outer_has_sublinks,
            )
        }
    }
}

/// Attribute `i` (0-based) of a tuple descriptor (`TupleDescAttr`): from 18
/// on the attributes follow the `CompactAttribute` array.
pub unsafe fn tuple_desc_attr(
    desc: pg_sys::TupleDesc,
    i: usize,
) -> *mut pg_sys::FormData_pg_attribute {
    unsafe {
        #[cfg(not(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16",
            feature = "pg17"
        )))]
        {
            let natts = (*desc).natts as usize;
            ((*desc).compact_attrs.as_ptr().add(natts) as *mut pg_sys::FormData_pg_attribute).add(i)
        }
        #[cfg(any(
            feature = "pg13",
            feature = "pg14",
            feature = "pg15",
            feature = "pg16",
            feature = "pg17"
        ))]
        {
            (*desc).attrs.as_ptr().add(i) as *mut pg_sys::FormData_pg_attribute
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
