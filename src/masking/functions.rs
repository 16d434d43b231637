//! agent_guard's mask functions in Rust (the date and number ones are SQL,
//! in sql/masking.sql, so the planner can inline them). None is SECURITY
//! DEFINER: they run as whoever runs the query.
//!
//! The keyed hash needs a secret that agents must never read. It lives in
//! `agent_guard.masking_key`, a table no role but its owner may read (a
//! superuser agent is masked there too: the key column is a built-in masked
//! column). `hash()` itself runs with the caller's privileges; only the
//! loading of the key — a fixed query of agent_guard's own, run as the
//! table's owner — is privileged, and the key stays in backend memory (it is
//! re-read when the generation counter moves, e.g. after
//! `agent_guard.rotate_masking_key()`). The key is never returned: only
//! HMAC-SHA-256 values computed with it.

use agent_guard_core::mask;
use pgrx::prelude::*;
use std::cell::RefCell;

// The text masks run once per row and masked column, so they are lean
// version-1 C functions (declared in sql/masking.sql: STRICT, IMMUTABLE,
// PARALLEL SAFE) rather than #[pg_extern] wrappers, and without the pgrx
// error guard: every call into PostgreSQL (detoasting the arguments,
// allocating the result) happens before any Rust value that needs dropping
// exists, exactly as in C, and what follows cannot fail — the mask writes
// into the result text, whose size is bounded in advance
// (`mask::max_output`), and the writer truncates rather than overflow.

/// Writes into a palloc'd text of known capacity.
struct TextOut {
    data: *mut u8,
    cap: usize,
    len: usize,
}

impl mask::Sink for TextOut {
    fn push_str(&mut self, s: &str) {
        let n = s.len().min(self.cap - self.len);
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), self.data.add(self.len), n) };
        self.len += n;
    }
    #[inline]
    fn push_ascii(&mut self, b: u8) {
        if self.len < self.cap {
            unsafe { *self.data.add(self.len) = b };
            self.len += 1;
        }
    }
    #[inline]
    fn push_repeat(&mut self, b: u8, n: usize) {
        let n = n.min(self.cap - self.len);
        unsafe { std::ptr::write_bytes(self.data.add(self.len), b, n) };
        self.len += n;
    }
}

/// PostgreSQL functions called directly (pg_sys's bindings wrap every call
/// in an error guard — a setjmp per call, too slow for a per-row function).
mod raw {
    unsafe extern "C" {
        pub fn palloc(size: usize) -> *mut std::ffi::c_void;
        pub fn pg_detoast_datum_packed(
            datum: *mut pgrx::pg_sys::varlena,
        ) -> *mut pgrx::pg_sys::varlena;
    }
}

/// Argument `n` (a text) as bytes, detoasted only when compressed or stored out of line.
#[inline(always)]
unsafe fn bytes_arg<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> &'a [u8] {
    use pgrx::varlena::{varatt_is_1b_e, varatt_is_4b_c};
    unsafe {
        let mut v = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n).cast_mut_ptr::<pg_sys::varlena>();
        if varatt_is_1b_e(v) || varatt_is_4b_c(v) {
            v = raw::pg_detoast_datum_packed(v);
        }
        pgrx::varlena::varlena_to_byte_slice(v)
    }
}

unsafe fn int_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> i32 {
    unsafe { pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n).value() as i32 }
}

/// A new text of `cap` bytes, filled by `f`.
#[inline(always)]
unsafe fn masked(cap: usize, f: impl FnOnce(&mut TextOut)) -> pg_sys::Datum {
    unsafe {
        let text = raw::palloc(pg_sys::VARHDRSZ + cap) as *mut pg_sys::varlena;
        let mut out = TextOut {
            data: (text as *mut u8).add(pg_sys::VARHDRSZ),
            cap,
            len: 0,
        };
        f(&mut out);
        pgrx::varlena::set_varsize_4b(text, (pg_sys::VARHDRSZ + out.len) as i32);
        pg_sys::Datum::from(text)
    }
}

/// 1: the database encoding is UTF-8, 2: it is not, 0: not known yet.
static mut UTF8_DATABASE: u8 = 0;

/// Text of a UTF-8 database is valid UTF-8 (PostgreSQL checks it on input);
/// other encodings are read leniently.
#[inline(always)]
fn as_str(b: &[u8]) -> std::borrow::Cow<'_, str> {
    let utf8 = unsafe {
        if UTF8_DATABASE == 0 {
            UTF8_DATABASE = if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 {
                1
            } else {
                2
            };
        }
        UTF8_DATABASE == 1
    };
    if utf8 {
        return std::borrow::Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(b) });
    }
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

macro_rules! v1_info {
    ($($info:ident),*) => {$(
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $info() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    )*};
}
v1_info!(
    pg_finfo_agent_guard_redact,
    pg_finfo_agent_guard_partial,
    pg_finfo_agent_guard_email,
    pg_finfo_agent_guard_card_number
);

/// `agent_guard.redact(text)`: every letter and digit replaced by `*`, separators kept (`***-**-****`).
///
/// # Safety
/// Called by PostgreSQL's function manager with one non-null text argument.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_guard_redact(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let v = bytes_arg(fcinfo, 0);
        masked(mask::max_output(v.len(), 0), |o| {
            mask::redact_into(&as_str(v), o)
        })
    }
}

/// `agent_guard.partial(text, prefix int, padding text, suffix int)`: the first
/// `prefix` and last `suffix` characters with `padding` between, e.g.
/// `partial(ssn, 0, '***-**-', 4)` gives `***-**-6789`.
///
/// # Safety
/// Called by PostgreSQL's function manager with four non-null arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_guard_partial(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let v = bytes_arg(fcinfo, 0);
        let prefix = int_arg(fcinfo, 1);
        let padding = bytes_arg(fcinfo, 2);
        let suffix = int_arg(fcinfo, 3);
        masked(mask::max_output(v.len(), padding.len()), |o| {
            mask::partial_into(&as_str(v), prefix, &as_str(padding), suffix, o)
        })
    }
}

/// `agent_guard.email(text)`: the mailbox hidden, the domain kept (`***@example.com`).
///
/// # Safety
/// Called by PostgreSQL's function manager with one non-null text argument.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_guard_email(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let v = bytes_arg(fcinfo, 0);
        masked(mask::max_output(v.len(), 0), |o| {
            mask::email_into(&as_str(v), o)
        })
    }
}

/// `agent_guard.card_number(text)`: every digit but the last four hidden,
/// length and separators kept (`**** **** **** 1111`).
///
/// # Safety
/// Called by PostgreSQL's function manager with one non-null text argument.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_guard_card_number(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let v = bytes_arg(fcinfo, 0);
        masked(mask::max_output(v.len(), 0), |o| {
            mask::card_number_into(&as_str(v), o)
        })
    }
}

thread_local! {
    static KEY: RefCell<Option<(u64, Vec<u8>)>> = const { RefCell::new(None) };
}

/// The key, read from agent_guard.masking_key by a scan with the catalog
/// snapshot: a mask function runs inside the user's query, and a query of its
/// own would show up there (pgaudit, pg_stat_statements) as the user's.
fn load_key() -> Vec<u8> {
    let Some(table) = super::relation_oid(agent_guard_core::GUARD_SCHEMA, "masking_key") else {
        error!("agent_guard.masking_key does not exist");
    };
    let mut key: Option<Vec<u8>> = None;
    let column = {
        let name = c"key";
        unsafe { pg_sys::get_attnum(table, name.as_ptr()) }
    };
    if column > 0 {
        crate::catalog::scan(table.to_u32(), None, &[], |t| {
            if key.is_none() {
                key = t.bytea(column);
            }
        });
    }
    key.unwrap_or_else(|| error!("agent_guard.masking_key holds no key"))
}

fn with_key<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let generation = crate::shmem::generation();
    let fresh = KEY.with(|k| matches!(&*k.borrow(), Some((g, _)) if *g == generation));
    if !fresh {
        crate::shmem::catch_up();
        let key = load_key();
        KEY.with(|k| *k.borrow_mut() = Some((generation, key)));
    }
    KEY.with(|k| f(&k.borrow().as_ref().unwrap().1))
}

/// A keyed hash (HMAC-SHA-256, 32 hex digits): equal values give equal
/// hashes, so joins and GROUP BY still work, but nobody without the key can
/// compute one — agents cannot read the key.
#[pg_extern(stable, strict, parallel_restricted)]
fn hash(value: &str) -> String {
    with_key(|key| mask::keyed_hash(key, value.as_bytes()))
}

/// Tell every backend that masking state changed (at commit).
#[pg_extern(name = "_masking_changed", volatile)]
fn masking_changed() {
    crate::shmem::bump_at_commit();
}
