//! What the catalog says about a called function, for the rule of
//! [`agent_guard_core::classify_function`]: its schema, name and language,
//! whether PostgreSQL marks the language trusted, whether PUBLIC could execute
//! it as shipped (`pg_init_privs`) and may now (`pg_proc.proacl`).
//!
//! One path serves both callers: the object-access hook checks every call the
//! executor initialises ([`crate::enforce::check_function`]), and
//! `agent_guard.classify()` checks the calls it finds in a query tree — both
//! through [`call_classification`] and [`facts`].
//!
//! Catalog state comes from the syscache (`PROCOID`, `LANGOID`) and one index
//! scan of `pg_init_privs` (which has no syscache) for the few functions with
//! a non-default ACL — never SPI. Results are kept per backend and forgotten
//! when `pg_proc` or `pg_language` change (syscache invalidation), so an
//! agent's statement pays a hash lookup per call after the first.

use agent_guard_core::{CallContext, Classification, FunctionFacts};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

/// `pg_init_privs` and its index on (objoid, classoid, objsubid) (catalog OIDs, stable).
const INIT_PRIVS_RELATION: u32 = 3394;
const INIT_PRIVS_OBJ_INDEX: u32 = 3395;
/// `aclitem`, as deconstruct_array needs it.
const ACLITEM_TYPE: u32 = 1033;

/// A function's facts and its owner (for [`CallContext::from_guard_code`]).
pub struct Function {
    pub facts: FunctionFacts,
    pub owner: pg_sys::Oid,
}

thread_local! {
    static CACHE: RefCell<HashMap<u32, Rc<Function>>> = RefCell::new(HashMap::new());
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    CACHE.with(|c| c.borrow_mut().clear());
}

fn register_invalidation() {
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::PROCOID,
            pg_sys::SysCacheIdentifier::LANGOID,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(forget),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// Whether an ACL (a detoasted `aclitem[]` datum) grants EXECUTE to PUBLIC.
unsafe fn public_may_execute(acl: pg_sys::Datum) -> bool {
    unsafe {
        let array = pg_sys::pg_detoast_datum(acl.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let mut elems: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n = 0;
        pg_sys::deconstruct_array(
            array,
            pg_sys::Oid::from(ACLITEM_TYPE),
            std::mem::size_of::<pg_sys::AclItem>() as i32,
            false,
            b'i' as std::ffi::c_char,
            &mut elems,
            &mut nulls,
            &mut n,
        );
        (0..n as usize).any(|i| {
            let item = (*elems.add(i)).cast_mut_ptr::<pg_sys::AclItem>();
            !item.is_null()
                && (*item).ai_grantee == pg_sys::Oid::from(pg_sys::ACL_ID_PUBLIC)
                && (*item).ai_privs & pg_sys::ACL_EXECUTE as pg_sys::AclMode != 0
        })
    }
}

/// The initial privileges of function `oid` (initdb's or its extension's), if recorded:
/// whether they let PUBLIC execute it.
unsafe fn initial_public_execute(oid: pg_sys::Oid) -> Option<bool> {
    unsafe {
        let rel = pg_sys::table_open(
            pg_sys::Oid::from(INIT_PRIVS_RELATION),
            pg_sys::AccessShareLock as i32,
        );
        let mut keys: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            1, // objoid
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(oid),
        );
        pg_sys::ScanKeyInit(
            &mut keys[1],
            2, // classoid
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(pg_sys::ProcedureRelationId),
        );
        pg_sys::ScanKeyInit(
            &mut keys[2],
            3, // objsubid
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_INT4EQ),
            pg_sys::Datum::from(0i32),
        );
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::Oid::from(INIT_PRIVS_OBJ_INDEX),
            true,
            std::ptr::null_mut(),
            3,
            keys.as_mut_ptr(),
        );
        let tup = pg_sys::systable_getnext(scan);
        let result = if tup.is_null() {
            None
        } else {
            let mut isnull = false;
            let acl = pg_sys::heap_getattr(tup, 5, (*rel).rd_att, &mut isnull); // initprivs
            Some(!isnull && public_may_execute(acl))
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        result
    }
}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The language's name and `lanpltrusted`.
unsafe fn language(oid: pg_sys::Oid) -> (String, bool) {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::LANGOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tup.is_null() {
            return (String::new(), false);
        }
        let mut isnull = false;
        let name = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::LANGOID as i32,
            tup,
            2i16, // lanname
            &mut isnull,
        );
        let name = if isnull {
            String::new()
        } else {
            cstr(name.cast_mut_ptr::<std::ffi::c_char>())
        };
        let trusted = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::LANGOID as i32,
            tup,
            5i16, // lanpltrusted
            &mut isnull,
        );
        let trusted = !isnull && trusted.value() != 0;
        pg_sys::ReleaseSysCache(tup);
        (name, trusted)
    }
}

unsafe fn lookup(oid: pg_sys::Oid) -> Option<Function> {
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tup.is_null() {
            return None;
        }
        let form = pg_sys::GETSTRUCT(tup) as pg_sys::Form_pg_proc;
        let name = pg_sys::name_data_to_str(&(*form).proname).to_string();
        let (namespace, lang, owner) = ((*form).pronamespace, (*form).prolang, (*form).proowner);
        let mut isnull = false;
        let acl = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            tup,
            pg_sys::Anum_pg_proc_proacl as i16,
            &mut isnull,
        );
        // NULL: the default ACL, which lets PUBLIC execute (and nothing was
        // recorded in pg_init_privs, which keeps only non-default ones)
        let (public_now, initial) = if isnull {
            (true, None)
        } else {
            (public_may_execute(acl), initial_public_execute(oid))
        };
        pg_sys::ReleaseSysCache(tup);
        let schema = cstr(pg_sys::get_namespace_name(namespace));
        let (language, language_trusted) = language(lang);
        let catalog = namespace == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE);
        Some(Function {
            facts: FunctionFacts {
                oid: oid.to_u32(),
                schema,
                name,
                language,
                language_trusted,
                shipped: catalog || initial.is_some(),
                public_as_shipped: initial.unwrap_or(true),
                public_now,
                first_argument: None,
            },
            owner,
        })
    }
}

/// The catalog's facts about function `oid` (cached); `None` if it does not exist.
pub fn facts(oid: pg_sys::Oid) -> Option<Rc<Function>> {
    if let Some(f) = CACHE.with(|c| c.borrow().get(&oid.to_u32()).cloned()) {
        return Some(f);
    }
    if !unsafe { pg_sys::IsTransactionState() } {
        return None;
    }
    register_invalidation();
    let f = Rc::new(unsafe { lookup(oid) }?);
    CACHE.with(|c| c.borrow_mut().insert(oid.to_u32(), f.clone()));
    Some(f)
}

/// Who is calling right now: the current user's superuser status, and whether
/// agent_guard's own SECURITY DEFINER code makes the call — the current user
/// is the called function's owner after a SECURITY DEFINER switch, and not
/// the agent's login role or agent role.
pub fn current_context(f: &Function) -> CallContext {
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec) };
    let definer = sec & pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 != 0;
    let from_guard_code = f.facts.schema == agent_guard_core::GUARD_SCHEMA
        && definer
        && user == f.owner
        && user != unsafe { pg_sys::GetSessionUserId() }
        && crate::identity::cached_agent().is_none_or(|a| a.agent_oid != user);
    CallContext {
        superuser: unsafe { pg_sys::superuser_arg(user) },
        from_guard_code,
    }
}

/// What calling `oid` now means for the session (None: an ordinary call).
pub fn call_classification(oid: pg_sys::Oid) -> Option<Classification> {
    let f = facts(oid)?;
    agent_guard_core::classify_function(&f.facts, current_context(&f))
}

/// Whether a call of `oid` needs the function rule's check at every call
/// (through the fmgr hook) in an agent session: a user-defined function
/// outside agent_guard's schema that the rule restricts (an untrusted
/// language, for instance). PostgreSQL calls trigger and event-trigger
/// functions without the executor's execute check, so the object-access hook
/// never sees them; agent_guard's own event-trigger functions are its own
/// code. Built-in functions are judged where the executor calls them.
pub fn restricted_implicit_call(oid: pg_sys::Oid) -> bool {
    if oid.to_u32() < pg_sys::FirstNormalObjectId {
        return false;
    }
    let Some(f) = facts(oid) else {
        return false;
    };
    f.facts.schema != agent_guard_core::GUARD_SCHEMA
        && agent_guard_core::classify_function(&f.facts, current_context(&f)).is_some()
}

/// The catalog's facts of the functions a tree (an analysed query or an
/// expression) calls, each with its constant text first argument if it has
/// one — as `classify()` and the checks of utility statements' queries see them.
///
/// # Safety
/// `node` must be a valid analysed `Query` or expression tree.
pub unsafe fn call_facts(node: *mut pg_sys::Node) -> Vec<FunctionFacts> {
    unsafe { crate::extract::called_functions(node) }
        .into_iter()
        .filter_map(|(oid, first)| {
            let f = facts(oid)?;
            let mut facts = f.facts.clone();
            facts.first_argument = first;
            Some(facts)
        })
        .collect()
}
