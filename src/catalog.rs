//! Reading PostgreSQL's catalogs without SQL.
//!
//! Hooks, callbacks and the per-backend caches behind them never run a
//! query. A query of agent_guard's own inside a user's session would be
//!
//! - visible: pgaudit logs it, pg_stat_statements counts it, as if the user
//!   had sent it (every new session's first statement would be agent_guard's);
//! - injectable: its operators and functions resolve through the session's
//!   `search_path`, so whoever can create a `public.=(oid, regclass)` would run
//!   code inside agent_guard's internals, in superusers' sessions too;
//! - intrusive: it takes a transaction snapshot before the user's first
//!   statement (`SET TRANSACTION ISOLATION LEVEL` then fails) and, on a hot
//!   standby, may need what recovery cannot give.
//!
//! Instead, as PostgreSQL reads its own catalogs: syscache lookups
//! (lsyscache, `SearchSysCache*`) and [`scan`]s of a catalog, through one of
//! its indexes where the keys allow, with the catalog snapshot. No
//! transaction snapshot is taken, nothing is planned or executed, no
//! transaction id is needed (so all of it works on a hot standby), and other
//! extensions' executor hooks see nothing.
//!
//! Only catalogs that lsyscache has no lookup for are scanned here; the OIDs
//! of the catalogs and indexes pgrx has no bindings for are PostgreSQL's
//! fixed ones (`catalog/pg_*_d.h`).

use pgrx::pg_sys::{self, Datum, Oid};
use std::ffi::CStr;

/// `pg_shseclabel` and its index on (objoid, classoid, provider).
pub const SHARED_SECLABEL: u32 = 3592;
/// `pg_depend`; indexes on (classid, objid, objsubid) and (refclassid, refobjid, refobjsubid).
pub const DEPEND: u32 = 2608;
pub const DEPEND_DEPENDER_INDEX: u32 = 2673;
pub const DEPEND_REFERENCE_INDEX: u32 = 2674;
/// `pg_rewrite` and its index on oid.
pub const REWRITE: u32 = 2618;
pub const REWRITE_OID_INDEX: u32 = 2692;
/// `pg_inherits`; indexes on (inhrelid, inhseqno) and (inhparent).
pub const INHERITS: u32 = 2611;
pub const INHERITS_RELID_SEQNO_INDEX: u32 = 2680;
pub const INHERITS_PARENT_INDEX: u32 = 2187;
/// `pg_attrdef` and its index on (adrelid, adnum).
pub const ATTRDEF: u32 = 2604;
pub const ATTRDEF_INDEX: u32 = 2656;

/// Column numbers of the catalogs above (and of `pg_seclabel`).
pub mod col {
    pub const SHSECLABEL_OBJOID: i16 = 1;
    pub const SHSECLABEL_CLASSOID: i16 = 2;
    pub const SHSECLABEL_PROVIDER: i16 = 3;
    pub const SHSECLABEL_LABEL: i16 = 4;
    pub const SECLABEL_OBJOID: i16 = 1;
    pub const SECLABEL_CLASSOID: i16 = 2;
    pub const SECLABEL_OBJSUBID: i16 = 3;
    pub const SECLABEL_PROVIDER: i16 = 4;
    pub const SECLABEL_LABEL: i16 = 5;
    pub const DEPEND_CLASSID: i16 = 1;
    pub const DEPEND_OBJID: i16 = 2;
    pub const DEPEND_OBJSUBID: i16 = 3;
    pub const DEPEND_REFCLASSID: i16 = 4;
    pub const DEPEND_REFOBJID: i16 = 5;
    pub const DEPEND_REFOBJSUBID: i16 = 6;
    pub const REWRITE_OID: i16 = 1;
    pub const REWRITE_RULENAME: i16 = 2;
    pub const REWRITE_EV_CLASS: i16 = 3;
    pub const INHERITS_INHRELID: i16 = 1;
    pub const INHERITS_INHPARENT: i16 = 2;
    pub const ATTRDEF_OID: i16 = 1;
    pub const ATTRDEF_ADRELID: i16 = 2;
    pub const ATTRDEF_ADNUM: i16 = 3;
}

/// One equality condition of a scan.
pub struct Key {
    column: i16,
    proc: u32,
    value: Datum,
}

impl Key {
    pub fn oid(column: i16, value: Oid) -> Key {
        Key {
            column,
            proc: pg_sys::F_OIDEQ,
            value: Datum::from(value),
        }
    }

    pub fn int4(column: i16, value: i32) -> Key {
        Key {
            column,
            proc: pg_sys::F_INT4EQ,
            value: Datum::from(value),
        }
    }
}

/// A catalog tuple during a [`scan`].
pub struct Tuple {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Tuple {
    fn datum(&self, column: i16) -> Option<Datum> {
        let mut isnull = false;
        let d = unsafe { pg_sys::heap_getattr(self.tuple, column as i32, self.desc, &mut isnull) };
        (!isnull).then_some(d)
    }

    pub fn oid(&self, column: i16) -> Oid {
        self.datum(column)
            .map(|d| Oid::from(d.value() as u32))
            .unwrap_or(pg_sys::InvalidOid)
    }

    pub fn int8(&self, column: i16) -> Option<i64> {
        self.datum(column).map(|d| d.value() as i64)
    }

    pub fn int4(&self, column: i16) -> i32 {
        self.datum(column).map_or(0, |d| d.value() as i32)
    }

    pub fn int2(&self, column: i16) -> i16 {
        self.datum(column).map_or(0, |d| d.value() as i16)
    }

    /// A `text` column (detoasted).
    pub fn text(&self, column: i16) -> Option<String> {
        let d = self.datum(column)?;
        unsafe {
            let p = pg_sys::text_to_cstring(d.cast_mut_ptr());
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            pg_sys::pfree(p.cast());
            Some(s)
        }
    }

    /// A `bytea` column (detoasted).
    pub fn bytea(&self, column: i16) -> Option<Vec<u8>> {
        let d = self.datum(column)?;
        unsafe {
            let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
            Some(pgrx::varlena::varlena_to_byte_slice(v).to_vec())
        }
    }

    /// The tuple's location (for deleting it).
    pub fn tid(&self) -> pg_sys::ItemPointerData {
        unsafe { (*self.tuple).t_self }
    }

    /// An `int2[]` column (NULL elements skipped).
    pub fn int2_array(&self, column: i16) -> Vec<i16> {
        let Some(d) = self.datum(column) else {
            return vec![];
        };
        unsafe {
            let arr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::ArrayType;
            let mut elems: *mut Datum = std::ptr::null_mut();
            let mut nulls: *mut bool = std::ptr::null_mut();
            let mut n: i32 = 0;
            pg_sys::deconstruct_array(
                arr,
                pg_sys::INT2OID,
                2,
                true,
                pg_sys::TYPALIGN_SHORT as std::ffi::c_char,
                &mut elems,
                &mut nulls,
                &mut n,
            );
            (0..n as usize)
                .filter(|i| !*nulls.add(*i))
                .map(|i| (*elems.add(i)).value() as i16)
                .collect()
        }
    }

    /// A `name` column.
    pub fn name(&self, column: i16) -> Option<String> {
        let d = self.datum(column)?;
        unsafe {
            let n = d.cast_mut_ptr::<pg_sys::NameData>();
            Some(
                CStr::from_ptr((*n).data.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    }
}

/// The snapshot for scanning `relid`: PostgreSQL's catalog snapshot for a
/// system catalog; for one of agent_guard's own tables, `SnapshotSelf`
/// (committed rows as of the scan, and the transaction's own): an MVCC
/// snapshot would make the scan take a predicate lock on the whole table in
/// the user's SERIALIZABLE transaction (visible in `pg_locks`, and a source
/// of serialization failures the user's statements never asked for).
fn own_table_snapshot(relid: Oid) -> pg_sys::Snapshot {
    if relid.to_u32() < pg_sys::FirstNormalObjectId {
        std::ptr::null_mut()
    } else {
        &raw mut pg_sys::SnapshotSelfData
    }
}

/// Visit every tuple of `catalog` matching `keys` (equality on heap column
/// numbers), through `index` when given (its leading columns must be the
/// keys' columns, in order), with [`own_table_snapshot`].
pub fn scan(catalog: u32, index: Option<u32>, keys: &[Key], mut each: impl FnMut(&Tuple)) {
    unsafe {
        let rel = pg_sys::table_open(Oid::from(catalog), pg_sys::AccessShareLock as i32);
        let mut entries: Vec<pg_sys::ScanKeyData> = keys
            .iter()
            .map(|k| {
                let mut entry = pg_sys::ScanKeyData::default();
                pg_sys::ScanKeyInit(
                    &mut entry,
                    k.column,
                    pg_sys::BTEqualStrategyNumber as u16,
                    Oid::from(k.proc),
                    k.value,
                );
                entry
            })
            .collect();
        let scan = pg_sys::systable_beginscan(
            rel,
            index.map_or(pg_sys::InvalidOid, Oid::from),
            index.is_some(),
            own_table_snapshot(Oid::from(catalog)),
            entries.len() as i32,
            if entries.is_empty() {
                std::ptr::null_mut()
            } else {
                entries.as_mut_ptr()
            },
        );
        let desc = (*rel).rd_att;
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            each(&Tuple { tuple, desc });
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    }
}

/// Visit every row of one of agent_guard's own small tables (`relid`), for
/// metadata the per-backend caches need (`agent_guard.agent_registry`),
/// without a query, with [`own_table_snapshot`]: committed rows as of now,
/// whatever the transaction's isolation level, no predicate lock, and the
/// transaction's own snapshot is not set. Never
/// waits for a lock: false (nothing visited) when someone holds the table
/// exclusively (DROP EXTENSION or TRUNCATE in an open transaction) or it is gone.
pub fn try_scan_table(relid: Oid, mut each: impl FnMut(&Tuple)) -> bool {
    unsafe {
        let lock = pg_sys::AccessShareLock as i32;
        if !pg_sys::ConditionalLockRelationOid(relid, lock) {
            return false;
        }
        let rel = pg_sys::try_table_open(relid, pg_sys::NoLock as i32);
        if rel.is_null() {
            pg_sys::UnlockRelationOid(relid, lock);
            return false;
        }
        // SnapshotSelf (committed rows and the transaction's own, not an MVCC
        // snapshot): a SERIALIZABLE transaction gets no predicate lock on
        // agent_guard's table from this read (pg_locks stays as without it).
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            own_table_snapshot(relid),
            0,
            std::ptr::null_mut(),
        );
        let desc = (*rel).rd_att;
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            each(&Tuple { tuple, desc });
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, lock);
        true
    }
}

/// Direct inheritance children (partitions included) of `relid`.
pub fn children(relid: Oid) -> Vec<Oid> {
    let mut out = vec![];
    scan(
        INHERITS,
        Some(INHERITS_PARENT_INDEX),
        &[Key::oid(col::INHERITS_INHPARENT, relid)],
        |t| out.push(t.oid(col::INHERITS_INHRELID)),
    );
    out
}

/// Direct inheritance parents of `relid`.
pub fn parents(relid: Oid) -> Vec<Oid> {
    let mut out = vec![];
    scan(
        INHERITS,
        Some(INHERITS_RELID_SEQNO_INDEX),
        &[Key::oid(col::INHERITS_INHRELID, relid)],
        |t| out.push(t.oid(col::INHERITS_INHPARENT)),
    );
    out
}

/// `relid` and all its inheritance descendants (as `find_all_inheritors`).
pub fn with_descendants(relid: Oid) -> Vec<Oid> {
    let mut out = vec![relid];
    let mut i = 0;
    while i < out.len() {
        for c in children(out[i]) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// The objects that depend on `(class, object[, sub])`: (classid, objid, objsubid).
/// `sub`: None for every column and the whole object.
pub fn dependents(class: Oid, object: Oid, sub: Option<i32>) -> Vec<(Oid, Oid, i32)> {
    let mut keys = vec![
        Key::oid(col::DEPEND_REFCLASSID, class),
        Key::oid(col::DEPEND_REFOBJID, object),
    ];
    if let Some(s) = sub {
        keys.push(Key::int4(col::DEPEND_REFOBJSUBID, s));
    }
    let mut out = vec![];
    scan(DEPEND, Some(DEPEND_REFERENCE_INDEX), &keys, |t| {
        out.push((
            t.oid(col::DEPEND_CLASSID),
            t.oid(col::DEPEND_OBJID),
            t.int4(col::DEPEND_OBJSUBID),
        ))
    });
    out
}

/// What `(class, object)` depends on: (refclassid, refobjid, refobjsubid).
pub fn dependencies(class: Oid, object: Oid) -> Vec<(Oid, Oid, i32)> {
    let mut out = vec![];
    scan(
        DEPEND,
        Some(DEPEND_DEPENDER_INDEX),
        &[
            Key::oid(col::DEPEND_CLASSID, class),
            Key::oid(col::DEPEND_OBJID, object),
        ],
        |t| {
            out.push((
                t.oid(col::DEPEND_REFCLASSID),
                t.oid(col::DEPEND_REFOBJID),
                t.int4(col::DEPEND_REFOBJSUBID),
            ))
        },
    );
    out
}

/// A rewrite rule's relation and name, by the rule's oid.
pub fn rule(rule: Oid) -> Option<(Oid, String)> {
    let mut out = None;
    scan(
        REWRITE,
        Some(REWRITE_OID_INDEX),
        &[Key::oid(col::REWRITE_OID, rule)],
        |t| {
            out = Some((
                t.oid(col::REWRITE_EV_CLASS),
                t.name(col::REWRITE_RULENAME).unwrap_or_default(),
            ))
        },
    );
    out
}

/// The views and materialized views whose `_RETURN` rule depends on
/// `(relid[, attnum])`, other than `relid` itself.
pub fn reading_views(relid: Oid, attnum: Option<i16>) -> Vec<Oid> {
    let mut out = vec![];
    for (class, object, _) in dependents(pg_sys::RelationRelationId, relid, attnum.map(i32::from)) {
        if class != Oid::from(REWRITE) {
            continue;
        }
        if let Some((ev_class, name)) = rule(object) {
            if name == "_RETURN" && ev_class != relid && !out.contains(&ev_class) {
                out.push(ev_class);
            }
        }
    }
    out
}

/// The attribute defaults (and generation expressions) of `relid`: (pg_attrdef oid, adnum).
pub fn attribute_defaults(relid: Oid) -> Vec<(Oid, i16)> {
    let mut out = vec![];
    scan(
        ATTRDEF,
        Some(ATTRDEF_INDEX),
        &[Key::oid(col::ATTRDEF_ADRELID, relid)],
        |t| out.push((t.oid(col::ATTRDEF_OID), t.int2(col::ATTRDEF_ADNUM))),
    );
    out
}

/// A live (not dropped) attribute's name, type, typmod and `attgenerated`, from the syscache.
pub struct Attribute {
    pub name: String,
    pub type_oid: Oid,
    pub typmod: i32,
    pub generated: bool,
}

pub fn attribute(relid: Oid, attnum: i16) -> Option<Attribute> {
    unsafe {
        let tup = pg_sys::SearchSysCache2(
            pg_sys::SysCacheIdentifier::ATTNUM as i32,
            Datum::from(relid),
            Datum::from(attnum),
        );
        if tup.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_attribute>(tup);
        let a = (!(*form).attisdropped).then(|| Attribute {
            name: CStr::from_ptr((*form).attname.data.as_ptr())
                .to_string_lossy()
                .into_owned(),
            type_oid: (*form).atttypid,
            typmod: (*form).atttypmod,
            generated: (*form).attgenerated != 0,
        });
        pg_sys::ReleaseSysCache(tup);
        a
    }
}

/// The type a domain is defined over (one level; `None` for a type that is
/// not a domain), from the syscache.
pub fn domain_base_type(type_oid: Oid) -> Option<Oid> {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::TYPEOID as i32,
            Datum::from(type_oid),
        );
        if tup.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup);
        let base = ((*form).typtype as u8 == pg_sys::TYPTYPE_DOMAIN).then_some((*form).typbasetype);
        pg_sys::ReleaseSysCache(tup);
        base
    }
}

/// Whether a relation has (or had) triggers (`pg_class.relhastriggers`), from the syscache.
pub fn has_triggers(relid: Oid) -> bool {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            Datum::from(relid),
        );
        if tup.is_null() {
            return false;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tup);
        let has = (*form).relhastriggers;
        pg_sys::ReleaseSysCache(tup);
        has
    }
}

/// A relation's TOAST table, from the syscache.
pub fn toast_relation(relid: Oid) -> Option<Oid> {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            Datum::from(relid),
        );
        if tup.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tup);
        let toast = (*form).reltoastrelid;
        pg_sys::ReleaseSysCache(tup);
        (toast != pg_sys::InvalidOid).then_some(toast)
    }
}

fn cstring(p: *const std::ffi::c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A relation's name as `regclass` prints it: qualified only when the
/// search path would not find it.
pub fn regclass_name(relid: Oid) -> String {
    unsafe {
        let Some(name) = cstring(pg_sys::get_rel_name(relid)) else {
            return relid.to_u32().to_string();
        };
        let c = std::ffi::CString::new(name).unwrap_or_default();
        let p = if pg_sys::RelationIsVisible(relid) {
            pg_sys::quote_identifier(c.as_ptr())
        } else {
            let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
            pg_sys::quote_qualified_identifier(nsp, c.as_ptr())
        };
        cstring(p).unwrap_or_default()
    }
}

/// A type's name as `format_type(type, typmod)` prints it.
pub fn format_type(type_oid: Oid, typmod: i32) -> String {
    cstring(unsafe { pg_sys::format_type_with_typemod(type_oid, typmod) }).unwrap_or_default()
}
