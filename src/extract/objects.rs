//! Naming the objects of utility statements from their parse nodes.
//!
//! DROP, COMMENT, SECURITY LABEL and ALTER … RENAME / OWNER TO / SET SCHEMA
//! carry their object in a shape that depends on its object type (see
//! PostgreSQL's gram.y and `get_object_address()`):
//!
//! | shape | object types |
//! |---|---|
//! | `String` | schemas, databases, roles, tablespaces, extensions, languages, access methods, event triggers, foreign-data wrappers, servers, publications, subscriptions |
//! | `List` of `String` | relations, columns, collations, conversions, statistics, text-search objects; `table.name` for triggers, rules, policies and table constraints; operator classes and families start with the access method |
//! | `TypeName` | types and domains |
//! | `List` of two `TypeName`s | casts |
//! | `List` of `TypeName` and `String` | transforms (type, language), domain constraints (domain, constraint) |
//! | `ObjectWithArgs` | functions, procedures, routines, aggregates, operators |
//! | `Integer` or `Float` | large objects |
//!
//! Everything here is a pure formatter over those nodes: it reads no catalog
//! (relations are looked up by [`super`], without raising), never raises,
//! and answers `None` for a shape it does not know, so that extraction is
//! invisible for every valid statement — for a human session above all.
//! Names are written as PostgreSQL's `NameListToString` writes them
//! (dot-separated, unquoted), so that `agent_guard.x` is recognisable
//! whatever the object type.

use pgrx::pg_sys::{self, NodeTag};
use pgrx::{is_a, PgList};
use std::ffi::{c_char, CStr};

fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// The nodes of a List (empty for NULL and for anything that is not a List).
unsafe fn list_nodes(node: *mut pg_sys::Node) -> Vec<*mut pg_sys::Node> {
    unsafe {
        if node.is_null() || !is_a(node, NodeTag::T_List) {
            return vec![];
        }
        PgList::<pg_sys::Node>::from_pg(node as *mut pg_sys::List)
            .iter_ptr()
            .collect()
    }
}

/// The Strings of a List of Strings, or None if any element is something else.
pub(super) unsafe fn string_list(list: *mut pg_sys::List) -> Option<Vec<String>> {
    unsafe {
        list_nodes(list as *mut pg_sys::Node)
            .into_iter()
            .map(|n| {
                if !n.is_null() && is_a(n, NodeTag::T_String) {
                    cstr((*(n as *mut pg_sys::String)).sval)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// A type as written: `schema.name`, `name%TYPE`, `name[]`, `SETOF name`.
unsafe fn type_name(t: *mut pg_sys::TypeName) -> String {
    unsafe {
        let names = list_nodes((*t).names as *mut pg_sys::Node);
        let mut s = if names.is_empty() {
            // only made internally, from an OID; name it without a catalog lookup
            format!("type {}", (*t).typeOid.to_u32())
        } else {
            names
                .into_iter()
                .map(|n| node_text(n).unwrap_or_else(|| "?".into()))
                .collect::<Vec<_>>()
                .join(".")
        };
        if (*t).pct_type {
            s.push_str("%TYPE");
        }
        for _ in 0..list_nodes((*t).arrayBounds as *mut pg_sys::Node).len() {
            s.push_str("[]");
        }
        if (*t).setof {
            s = format!("SETOF {s}");
        }
        s
    }
}

/// `name(argtype, ...)`; an operator's missing operand is `NONE`; without
/// an argument list (`DROP FUNCTION f`), just the name.
unsafe fn object_with_args(o: *mut pg_sys::ObjectWithArgs) -> String {
    unsafe {
        let name = node_text((*o).objname as *mut pg_sys::Node).unwrap_or_else(|| "?".into());
        if (*o).args_unspecified {
            return name;
        }
        let args: Vec<String> = list_nodes((*o).objargs as *mut pg_sys::Node)
            .into_iter()
            .map(|a| {
                if a.is_null() {
                    "NONE".to_string()
                } else {
                    node_text(a).unwrap_or_else(|| "?".into())
                }
            })
            .collect();
        format!("{name}({})", args.join(", "))
    }
}

/// The text of a name-like node of any shape PostgreSQL uses for object
/// names; None for anything else.
pub(super) unsafe fn node_text(node: *mut pg_sys::Node) -> Option<String> {
    if node.is_null() {
        return None;
    }
    unsafe {
        match (*node).type_ {
            NodeTag::T_String => cstr((*(node as *mut pg_sys::String)).sval),
            NodeTag::T_Integer => Some((*(node as *mut pg_sys::Integer)).ival.to_string()),
            NodeTag::T_Float => cstr((*(node as *mut pg_sys::Float)).fval),
            NodeTag::T_TypeName => Some(type_name(node as *mut pg_sys::TypeName)),
            NodeTag::T_ObjectWithArgs => {
                Some(object_with_args(node as *mut pg_sys::ObjectWithArgs))
            }
            NodeTag::T_List => {
                let parts: Option<Vec<String>> =
                    list_nodes(node).into_iter().map(|n| node_text(n)).collect();
                parts.filter(|p| !p.is_empty()).map(|p| p.join("."))
            }
            _ => None,
        }
    }
}

/// The name of the object of a DROP, COMMENT, SECURITY LABEL or ALTER …
/// RENAME / OWNER TO / SET SCHEMA of object type `t`; None when the node has
/// a shape not listed in the module docs (the caller then names the object
/// by its type only).
///
/// # Safety
/// `node` must be NULL or a valid parse node.
pub unsafe fn object_text(t: pg_sys::ObjectType::Type, node: *mut pg_sys::Node) -> Option<String> {
    use pg_sys::ObjectType::*;
    if node.is_null() {
        return None;
    }
    unsafe {
        let parts = list_nodes(node);
        match t {
            // (source AS target)
            OBJECT_CAST if parts.len() == 2 => Some(format!(
                "({} AS {})",
                node_text(parts[0])?,
                node_text(parts[1])?
            )),
            // FOR type LANGUAGE language
            OBJECT_TRANSFORM if parts.len() == 2 => Some(format!(
                "FOR {} LANGUAGE {}",
                node_text(parts[0])?,
                node_text(parts[1])?
            )),
            // domain.constraint, as table constraints are named
            OBJECT_DOMCONSTRAINT if parts.len() == 2 => {
                Some(format!("{}.{}", node_text(parts[0])?, node_text(parts[1])?))
            }
            // the access method comes first: name USING method
            OBJECT_OPCLASS | OBJECT_OPFAMILY if parts.len() >= 2 => {
                let method = node_text(parts[0])?;
                let name: Option<Vec<String>> = parts[1..].iter().map(|n| node_text(*n)).collect();
                Some(format!("{} USING {method}", name?.join(".")))
            }
            _ => node_text(node),
        }
    }
}
