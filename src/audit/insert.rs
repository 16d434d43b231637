//! Writing sealed audit rows straight into `agent_guard.audit_log`'s heap and
//! indexes, as COPY does: no SQL to parse or plan per batch, no text to
//! convert back into values. Runs in the audit writer's transaction.

use super::row::Row;
use agent_guard_core::chain::{self, Hex};
use pgrx::pg_sys;
use std::ffi::CStr;

/// A row with its place in the hash chain, ready to be written (its
/// previous hash is the preceding row's `row_hash`).
pub struct Sealed<'r, 'a> {
    pub id: i64,
    /// Its session context's row in `agent_guard.audit_sessions`.
    pub session_id: i64,
    pub row_hash: Hex,
    pub outcome_hash: Option<Hex>,
    pub row: &'r Row<'a>,
}

/// The columns the writer fills, with their types.
const COLUMNS: &[(&str, pg_sys::Oid)] = &[
    ("id", pg_sys::INT8OID),
    ("session_key", pg_sys::TEXTOID),
    ("statement_no", pg_sys::INT8OID),
    ("local_xact", pg_sys::INT8OID),
    ("subxact", pg_sys::INT4OID),
    ("parent_statement", pg_sys::INT8OID),
    ("nesting_level", pg_sys::INT4OID),
    ("started_at", pg_sys::TIMESTAMPTZOID),
    ("session_id", pg_sys::INT8OID),
    ("current_user_name", pg_sys::TEXTOID),
    ("agent", pg_sys::TEXTOID),
    ("backend_pid", pg_sys::INT4OID),
    ("request_id", pg_sys::TEXTOID),
    ("traceparent", pg_sys::TEXTOID),
    ("command", pg_sys::TEXTOID),
    ("risk", pg_sys::TEXTOID),
    ("objects", pg_sys::TEXTARRAYOID),
    ("decision", pg_sys::TEXTOID),
    ("reason", pg_sys::TEXTOID),
    ("grant_id", pg_sys::INT8OID),
    ("statement_text", pg_sys::TEXTOID),
    ("parameters", pg_sys::TEXTARRAYOID),
    ("ended_at", pg_sys::TIMESTAMPTZOID),
    ("rows_affected", pg_sys::INT8OID),
    ("outcome", pg_sys::TEXTOID),
    ("sqlstate", pg_sys::TEXTOID),
    ("error_message", pg_sys::TEXTOID),
    ("transaction_id", pg_sys::INT8OID),
    ("transaction_outcome", pg_sys::TEXTOID),
    ("prev_hash", pg_sys::BYTEAOID),
    ("row_hash", pg_sys::BYTEAOID),
    ("outcome_hash", pg_sys::BYTEAOID),
];

/// How many rows go to the heap in one multi-insert.
const CHUNK: usize = 1000;

/// `agent_guard.audit_log`, opened for appending.
pub struct AuditTable {
    rel: pg_sys::Relation,
    seq: pg_sys::Oid,
    /// For each attribute of the table, the index into [`COLUMNS`] (None: left NULL).
    attrs: Vec<Option<usize>>,
}

fn relation_oid(namespace: pg_sys::Oid, name: &CStr) -> pg_sys::Oid {
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    if oid == pg_sys::InvalidOid {
        pgrx::error!(
            "agent_guard: agent_guard.{} is missing",
            name.to_string_lossy()
        );
    }
    oid
}

impl AuditTable {
    /// Open the table (RowExclusiveLock) and check that it has the columns
    /// and types the writer fills; anything else is an error (the batch
    /// stays queued and agents' risky statements are refused).
    pub fn open() -> Self {
        unsafe {
            let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), false);
            // retention (issue 14.6b): the partition this batch goes to
            let relid = super::retention::insert_target(relation_oid(ns, c"audit_log"));
            let seq = relation_oid(ns, c"audit_log_id_seq");
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            if (*(*rel).rd_rel).relam != pg_sys::HEAP_TABLE_AM_OID {
                pgrx::error!("agent_guard: agent_guard.audit_log must be a heap table");
            }
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let mut attrs = Vec::with_capacity(natts);
            let mut seen = vec![false; COLUMNS.len()];
            for a in (0..natts).map(|i| &*crate::compat::tuple_desc_attr(desc, i)) {
                if a.attisdropped {
                    attrs.push(None);
                    continue;
                }
                let name = CStr::from_ptr(a.attname.data.as_ptr()).to_string_lossy();
                let i = COLUMNS.iter().position(|(c, _)| *c == name);
                match i {
                    Some(i) if COLUMNS[i].1 != a.atttypid => {
                        pgrx::error!("agent_guard: agent_guard.audit_log.{name} has an unexpected type")
                    }
                    Some(i) => seen[i] = true,
                    // a column added by someone else is left NULL (no defaults, no triggers)
                    None if a.attnotnull => pgrx::error!(
                        "agent_guard: agent_guard.audit_log.{name} is NOT NULL but agent_guard does not write it"
                    ),
                    None => {}
                }
                attrs.push(i);
            }
            if let Some(missing) = seen.iter().position(|s| !s) {
                pgrx::error!(
                    "agent_guard: agent_guard.audit_log has no column {}",
                    COLUMNS[missing].0
                );
            }
            AuditTable { rel, seq, attrs }
        }
    }

    /// The next row id from the table's sequence.
    pub fn next_id(&self) -> i64 {
        unsafe {
            pg_sys::OidFunctionCall1Coll(
                pg_sys::Oid::from(pg_sys::F_NEXTVAL),
                pg_sys::InvalidOid,
                pg_sys::Datum::from(self.seq),
            )
            .value() as i64
        }
    }

    /// Append `rows` to the heap and every index of the table; `first_prev`
    /// is the chain head before the first of them.
    pub fn insert(&self, first_prev: &str, rows: &[Sealed]) {
        unsafe {
            let desc = (*self.rel).rd_att;
            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, self.rel, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, false);
            let cid = pg_sys::GetCurrentCommandId(true);
            // values and tuples of one chunk live in a context reset after it
            let rows_cx = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CurrentMemoryContext,
                c"agent_guard audit rows".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            );
            let natts = self.attrs.len();
            let mut values = vec![pg_sys::Datum::from(0usize); natts];
            let mut nulls = vec![true; natts];
            let bistate = pg_sys::GetBulkInsertState();
            // slots over an unpinned copy of the descriptor: pinning the
            // relation's own once per slot costs a resource-owner entry each
            let slot_desc = pg_sys::CreateTupleDescCopy(desc);
            let mut slots: Vec<*mut pg_sys::TupleTableSlot> = (0..rows.len().min(CHUNK))
                .map(|_| pg_sys::MakeSingleTupleTableSlot(slot_desc, &pg_sys::TTSOpsHeapTuple))
                .collect();
            for (c, chunk) in rows.chunks(CHUNK).enumerate() {
                let outer = pg_sys::MemoryContextSwitchTo(rows_cx);
                for (j, (r, &slot)) in chunk.iter().zip(&slots).enumerate() {
                    let at = c * CHUNK + j;
                    let prev = match at {
                        0 => first_prev,
                        _ => rows[at - 1].row_hash.as_str(),
                    };
                    let row = values_of(r, prev);
                    for (a, col) in self.attrs.iter().enumerate() {
                        let v = col.and_then(|c| row[c]);
                        nulls[a] = v.is_none();
                        values[a] = v.unwrap_or(pg_sys::Datum::from(0usize));
                    }
                    let tuple =
                        pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                    pg_sys::ExecStoreHeapTuple(tuple, slot, true);
                }
                pg_sys::heap_multi_insert(
                    self.rel,
                    slots.as_mut_ptr(),
                    chunk.len() as i32,
                    cid,
                    0,
                    bistate,
                );
                for &slot in &slots[..chunk.len()] {
                    crate::compat::insert_index_tuples(rri, slot, estate);
                    let econtext = (*estate).es_per_tuple_exprcontext;
                    if !econtext.is_null() {
                        pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                    }
                    pg_sys::ExecClearTuple(slot);
                }
                pg_sys::MemoryContextSwitchTo(outer);
                pg_sys::MemoryContextReset(rows_cx);
            }
            pg_sys::MemoryContextDelete(rows_cx);
            for slot in slots.drain(..) {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::FreeBulkInsertState(bistate);
            pg_sys::ExecCloseIndices(rri);
            pg_sys::FreeExecutorState(estate);
            pg_sys::CommandCounterIncrement();
        }
    }

    pub fn close(self) {
        unsafe { pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE) };
    }
}

fn text(s: &str) -> pg_sys::Datum {
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr() as *const std::ffi::c_char,
            s.len() as i32,
        ))
    }
}

/// A one-dimensional `text[]` datum.
fn text_array<'a>(items: impl ExactSizeIterator<Item = Option<&'a str>>) -> pg_sys::Datum {
    let n = items.len();
    let mut elems = Vec::with_capacity(n);
    let mut nulls = Vec::with_capacity(n);
    for item in items {
        nulls.push(item.is_none());
        elems.push(item.map_or(pg_sys::Datum::from(0usize), text));
    }
    let mut dims = [n as i32];
    let mut lbs = [1i32];
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_md_array(
            elems.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            pg_sys::TEXTOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        ))
    }
}

fn opt_text(s: Option<&str>) -> Option<pg_sys::Datum> {
    s.map(text)
}

/// A `bytea` datum (the same varlena layout as text: length and bytes).
fn bytea(b: &[u8]) -> pg_sys::Datum {
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            b.as_ptr() as *const std::ffi::c_char,
            b.len() as i32,
        ))
    }
}

/// The row's values in [`COLUMNS`] order (None = NULL).
fn values_of(r: &Sealed, prev_hash: &str) -> [Option<pg_sys::Datum>; COLUMNS.len()] {
    let s = r.row;
    let end = s.outcome();
    [
        Some(r.id.into()),
        Some(text(s.sk)),
        Some((s.n as i64).into()),
        Some((s.x as i64).into()),
        Some((s.sx as i32).into()),
        s.parent.map(|p| (p as i64).into()),
        Some(s.lvl.into()),
        Some(s.ts.into()),
        Some(r.session_id.into()),
        opt_text(s.cu),
        opt_text(s.agent),
        Some(s.pid.into()),
        opt_text(s.rid),
        opt_text(s.tp),
        opt_text(s.cmd),
        opt_text(s.risk),
        Some(text_array(s.obj.iter().map(|o| Some(*o)))),
        Some(text(s.dec)),
        opt_text(s.why),
        s.grant.map(Into::into),
        opt_text(s.text),
        s.params.as_ref().map(|ps| text_array(ps.iter().copied())),
        end.map(|e| e.ts.into()),
        end.and_then(|e| e.rows).map(|n| (n as i64).into()),
        end.map(|e| text(e.out)),
        end.and_then(|e| e.state).map(text),
        end.and_then(|e| e.msg).map(text),
        s.xo.and_then(|x| x.xid).map(|x| (x as i64).into()),
        s.xo.map(|x| text(x.out)),
        Some(bytea(&chain::hash_bytes(prev_hash))),
        Some(bytea(&r.row_hash.bytes())),
        r.outcome_hash.as_ref().map(|h| bytea(&h.bytes())),
    ]
}
