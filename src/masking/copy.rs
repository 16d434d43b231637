//! `COPY t TO` in an agent session, when `t` has masked columns: rewritten to
//! `COPY (SELECT <columns> FROM ONLY t) TO` before PostgreSQL runs it, so the
//! rows go through the planner and its masking like any query. The query is
//! built as a parse tree (column references by name, the relation as the
//! original RangeVar), never as SQL text; the output (columns, order, header,
//! formats) is the same as the original COPY's.

use pgrx::pg_sys::{self, NodeTag};
use pgrx::{is_a, PgList};
use std::ffi::c_void;

unsafe fn column_ref(name: *mut pg_sys::Node) -> *mut pg_sys::Node {
    unsafe {
        let c = pg_sys::palloc0(std::mem::size_of::<pg_sys::ColumnRef>()) as *mut pg_sys::ColumnRef;
        (*c).type_ = NodeTag::T_ColumnRef;
        (*c).fields = pg_sys::lappend(std::ptr::null_mut(), name as *mut c_void);
        (*c).location = -1;
        c as *mut pg_sys::Node
    }
}

unsafe fn res_target(val: *mut pg_sys::Node) -> *mut c_void {
    unsafe {
        let r = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResTarget>()) as *mut pg_sys::ResTarget;
        (*r).type_ = NodeTag::T_ResTarget;
        (*r).val = val;
        (*r).location = -1;
        r as *mut c_void
    }
}

/// The statement to run instead of `pstmt`: `pstmt` itself unless it is a
/// `COPY <masked relation> TO` (then a copy, rewritten).
///
/// # Safety
/// `pstmt` must be a valid utility `PlannedStmt`.
pub unsafe fn mask_copy(pstmt: *mut pg_sys::PlannedStmt) -> *mut pg_sys::PlannedStmt {
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() || !is_a(node, NodeTag::T_CopyStmt) {
            return pstmt;
        }
        let s = node as *mut pg_sys::CopyStmt;
        if (*s).is_from || (*s).relation.is_null() || !(*s).query.is_null() {
            return pstmt;
        }
        let relid = pg_sys::RangeVarGetRelidExtended(
            (*s).relation,
            pg_sys::AccessShareLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        // Only tables can be copied from by name (PostgreSQL refuses the others itself).
        if relid == pg_sys::InvalidOid
            || pg_sys::get_rel_relkind(relid) as u8 != b'r'
            || super::rules::rules().relation(relid).is_none()
        {
            return pstmt;
        }
        // The tree may be cached (read-only): change a copy.
        let pstmt = pg_sys::copyObjectImpl(pstmt as *const c_void) as *mut pg_sys::PlannedStmt;
        let s = (*pstmt).utilityStmt as *mut pg_sys::CopyStmt;
        let mut targets: Vec<*mut c_void> = vec![];
        let attlist: Vec<*mut pg_sys::Node> = PgList::<pg_sys::Node>::from_pg((*s).attlist)
            .iter_ptr()
            .collect();
        if attlist.is_empty() {
            let rel = pg_sys::relation_open(relid, pg_sys::NoLock as i32);
            let atts = super::label::attributes(rel);
            pg_sys::relation_close(rel, pg_sys::NoLock as i32);
            for a in atts.iter().filter(|a| !a.dropped) {
                let name = std::ffi::CString::new(a.name.as_str()).unwrap_or_default();
                let s = pg_sys::makeString(pg_sys::pstrdup(name.as_ptr()));
                targets.push(res_target(column_ref(s as *mut pg_sys::Node)));
            }
        } else {
            for n in attlist {
                targets.push(res_target(column_ref(n)));
            }
        }
        let select =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::SelectStmt>()) as *mut pg_sys::SelectStmt;
        (*select).type_ = NodeTag::T_SelectStmt;
        let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
        for t in targets {
            tlist = pg_sys::lappend(tlist, t);
        }
        (*select).targetList = tlist;
        let rv = pg_sys::copyObjectImpl((*s).relation as *const c_void) as *mut pg_sys::RangeVar;
        (*rv).inh = false; // COPY t TO copies t's own rows, not its children's
        (*select).fromClause = pg_sys::lappend(std::ptr::null_mut(), rv as *mut c_void);
        (*select).op = pg_sys::SetOperation::SETOP_NONE;
        // DoCopy wraps the raw SELECT into a RawStmt itself.
        (*s).query = select as *mut pg_sys::Node;
        (*s).relation = std::ptr::null_mut();
        (*s).attlist = std::ptr::null_mut();
        pstmt
    }
}
