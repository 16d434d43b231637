//! Registering agents and their human sponsors, and keeping the registry
//! consistent across dump and restore.
//!
//! The registration is a security label on the agent's role (shared by every
//! database of the cluster; it names the sponsor, and records the sponsor's
//! OID with this cluster's system identifier) plus a row of metadata in this
//! database's `agent_guard.agent_registry` (keyed by the agent's OID, with
//! the system identifier too). `pg_dumpall --roles-only` carries the labels
//! by role name, `pg_dump` the rows with the old cluster's OIDs: rows that no
//! label confirms make their roles fail closed ([`unverified_suspects`],
//! judged by [`agent_guard_core::registry::check_row`]) until
//! [`repair_registry`] or a new registration settles them.

use agent_guard_core::label::AgentLabel;
use agent_guard_core::registry::{check_row, RegistryRow, RowState};
use agent_guard_core::{quote_ident, quote_literal, SponsorStatus};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CStr;

fn role_name(oid: pg_sys::Oid) -> String {
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            error!("role with OID {} does not exist", oid.to_u32());
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Only humans who are superusers or members of agent_guard_admin manage the registry.
fn require_registry_admin() {
    if crate::identity::current_agent().is_some() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "agent sessions may not change the agent registry",
            "The registry is managed by humans: superusers or members of agent_guard_admin."
        );
    }
    unsafe {
        let allowed = crate::identity::is_guard_admin(pg_sys::GetOuterUserId());
        if !allowed {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "permission denied to manage agent_guard's agent registry",
                "Ask a superuser to GRANT agent_guard_admin to you."
            );
        }
    }
}

fn set_role_label(role: &str, label: Option<&str>) {
    let value = label.map_or("NULL".to_string(), quote_literal);
    let stmt = format!(
        "SECURITY LABEL FOR agent_guard ON ROLE {} IS {}",
        quote_ident(role),
        value
    );
    crate::labels::with_registry_write(|| crate::identity::internal(|| Spi::run(&stmt)))
        .unwrap_or_else(|e| error!("agent_guard: cannot write the agent registration: {e}"));
}

#[pg_extern(name = "_register_agent")]
fn register_agent(
    agent: pg_sys::Oid,
    sponsor: pg_sys::Oid,
    kind: &str,
    note: Option<&str>,
) -> bool {
    require_registry_admin();
    let agent_name = role_name(agent);
    let sponsor_name = role_name(sponsor);
    if agent == sponsor {
        error!("an agent cannot sponsor itself");
    }
    if kind.trim().is_empty() {
        error!("agent kind must not be empty");
    }
    if crate::identity::sponsor_status(sponsor) != SponsorStatus::Active {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("sponsor \"{sponsor_name}\" must be a human who can log in"),
            "A sponsor needs LOGIN and an unexpired VALID UNTIL."
        );
    }
    if let Some(a) = crate::identity::agent_of_role(sponsor) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "sponsor \"{sponsor_name}\" is itself an agent (registered as \"{}\")",
                a.agent_name
            ),
            "A sponsor must be a human."
        );
    }
    let label = AgentLabel {
        sponsor_name: sponsor_name.clone(),
        kind: kind.trim().to_string(),
        sponsor_oid: Some(sponsor.to_u32()),
        cluster: Some(crate::identity::system_identifier()),
    };
    set_role_label(&agent_name, Some(&label.render()));
    let cluster = crate::identity::system_identifier().to_string();
    crate::identity::internal(|| {
        // rows of this agent restored from another cluster (other OIDs) are replaced
        Spi::run_with_args(
            "DELETE FROM agent_guard.agent_registry WHERE agent_name = $1 AND agent <> $2",
            &[agent_name.as_str().into(), agent.into()],
        )?;
        Spi::run_with_args(
            "INSERT INTO agent_guard.agent_registry AS r (agent, agent_name, sponsor, sponsor_name, kind, note, system_identifier) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (agent) DO UPDATE SET agent_name = EXCLUDED.agent_name, sponsor = EXCLUDED.sponsor, \
               sponsor_name = EXCLUDED.sponsor_name, kind = EXCLUDED.kind, note = EXCLUDED.note, \
               system_identifier = EXCLUDED.system_identifier, \
               registered_by = session_user, registered_at = pg_catalog.now()",
            &[
                agent.into(),
                agent_name.as_str().into(),
                sponsor.into(),
                sponsor_name.as_str().into(),
                kind.trim().into(),
                note.into(),
                cluster.as_str().into(),
            ],
        )
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot record the agent registration: {e}"));
    crate::shmem::bump_at_commit();
    true
}

#[pg_extern(name = "_unregister_agent")]
fn unregister_agent(agent: pg_sys::Oid) -> bool {
    require_registry_admin();
    let agent_name = role_name(agent);
    let labelled = crate::identity::read_agent_labels()
        .iter()
        .any(|(oid, _)| *oid == agent);
    if labelled {
        set_role_label(&agent_name, None);
    }
    // the role's rows: its own, and rows restored from another cluster under its name
    let removed = crate::identity::internal(|| {
        Spi::get_one_with_args::<i64>(
            "WITH d AS (DELETE FROM agent_guard.agent_registry WHERE agent = $1 \
                 OR (agent_name = $2 AND system_identifier IS DISTINCT FROM $3) RETURNING 1) \
             SELECT count(*) FROM d",
            &[
                agent.into(),
                agent_name.as_str().into(),
                crate::identity::system_identifier().to_string().into(),
            ],
        )
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot remove the agent registration: {e}"))
    .unwrap_or(0);
    if !labelled && removed == 0 {
        error!("role \"{agent_name}\" is not registered as an agent");
    }
    crate::shmem::bump_at_commit();
    true
}

/// Every registration of the cluster, parsed from the role labels, with the
/// sponsor role it means here (InvalidOid when none: dropped).
#[pg_extern(name = "_registered_agents")]
#[allow(clippy::type_complexity)]
fn registered_agents() -> TableIterator<
    'static,
    (
        name!(agent, pg_sys::Oid),
        name!(sponsor, pg_sys::Oid),
        name!(sponsor_name, String),
        name!(kind, String),
    ),
> {
    let rows = crate::identity::read_agent_labels();
    TableIterator::new(rows.into_iter().map(|(oid, l)| {
        let sponsor = crate::identity::resolve_sponsor(&l);
        (oid, sponsor, l.sponsor_name, l.kind)
    }))
}

// ---- the registry rows and the labels: consistency -------------------------------

thread_local! {
    /// The registry rows this backend (bound to one database) read last, for
    /// when the table cannot be read without waiting.
    static LAST_ROWS: RefCell<Vec<RegistryRow>> = const { RefCell::new(Vec::new()) };
}

/// The rows of this database's `agent_guard.agent_registry`, read without a
/// query (see [`crate::catalog::try_scan_table`]); none where agent_guard
/// is not installed. When the table is held exclusively (DROP EXTENSION in
/// progress), the rows this backend read last.
pub fn rows() -> Vec<RegistryRow> {
    let relid = unsafe {
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        if ns == pg_sys::InvalidOid || !crate::identity::extension_installed() {
            return vec![];
        }
        pg_sys::get_relname_relid(c"agent_registry".as_ptr(), ns)
    };
    if relid == pg_sys::InvalidOid {
        return vec![];
    }
    let att = |name: &CStr| unsafe { pg_sys::get_attnum(relid, name.as_ptr()) };
    let (a_agent, a_name, a_sponsor_name, a_kind, a_cluster) = (
        att(c"agent"),
        att(c"agent_name"),
        att(c"sponsor_name"),
        att(c"kind"),
        att(c"system_identifier"),
    );
    let mut out = vec![];
    let read = crate::catalog::try_scan_table(relid, |t| {
        out.push(RegistryRow {
            agent_oid: t.oid(a_agent).to_u32(),
            agent_name: t.name(a_name).unwrap_or_default(),
            sponsor_name: t.name(a_sponsor_name).unwrap_or_default(),
            kind: t.text(a_kind).unwrap_or_default(),
            cluster: if a_cluster > 0 {
                t.text(a_cluster).and_then(|c| c.parse().ok())
            } else {
                None
            },
        })
    });
    if read {
        LAST_ROWS.with(|l| *l.borrow_mut() = out.clone());
        out
    } else {
        LAST_ROWS.with(|l| l.borrow().clone())
    }
}

/// Judge every registry row of this database against the cluster's labels.
fn states(labels: &[(pg_sys::Oid, AgentLabel)]) -> Vec<(RegistryRow, RowState)> {
    let labelled = |o: u32| labels.iter().any(|(l, _)| l.to_u32() == o);
    let this = crate::identity::system_identifier();
    rows()
        .into_iter()
        .map(|r| {
            let st = check_row(
                &r,
                this,
                crate::identity::role_name_opt,
                crate::identity::role_oid_opt,
                labelled,
            );
            (r, st)
        })
        .collect()
}

/// Roles that rows of this database's registry name as agents without a
/// label to confirm it: (role, the row). Their sessions fail closed.
pub fn unverified_suspects(
    labels: &[(pg_sys::Oid, AgentLabel)],
) -> Vec<(pg_sys::Oid, RegistryRow)> {
    let mut out = vec![];
    for (row, st) in states(labels) {
        if let RowState::Unmatched { suspects } = st {
            for (oid, _) in suspects {
                out.push((pg_sys::Oid::from(oid), row.clone()));
            }
        }
    }
    out
}

/// Every registry row of this database and whether the cluster's labels
/// confirm it; one row per role concerned. For people, the access review and
/// repair_registry().
#[pg_extern(name = "registry_check")]
#[allow(clippy::type_complexity)]
fn registry_check() -> TableIterator<
    'static,
    (
        name!(agent_name, String),
        name!(registered_oid, pg_sys::Oid),
        name!(state, String),
        name!(role_oid, Option<pg_sys::Oid>),
        name!(role_name, Option<String>),
        name!(sponsor_name, String),
        name!(kind, String),
        name!(detail, String),
    ),
> {
    let labels = crate::identity::read_agent_labels();
    let mut out = vec![];
    for (row, st) in states(&labels) {
        let base = |state: &str, role: Option<u32>, detail: String| {
            (
                row.agent_name.clone(),
                pg_sys::Oid::from(row.agent_oid),
                state.to_string(),
                role.map(pg_sys::Oid::from),
                role.and_then(crate::identity::role_name_opt),
                row.sponsor_name.clone(),
                row.kind.clone(),
                detail,
            )
        };
        match &st {
            RowState::Ok => out.push(base("ok", Some(row.agent_oid), "registered by its role label".into())),
            RowState::Renamed { now } => out.push(base(
                "renamed",
                Some(row.agent_oid),
                format!("the role is now named \"{now}\"; repair_registry() updates the row"),
            )),
            RowState::Moved { to } => out.push(base(
                "moved",
                Some(*to),
                format!(
                    "the row carries OID {} of the cluster it was dumped from; the role is registered here by its label (OID {to}); repair_registry() relinks the row",
                    row.agent_oid
                ),
            )),
            RowState::Unmatched { suspects } => {
                for (oid, name) in suspects {
                    out.push(base(
                        "unmatched",
                        Some(*oid),
                        format!(
                            "{}: its sessions are refused in this database",
                            agent_guard_core::registry::unverified_reason(&row, name)
                        ),
                    ))
                }
            }
            RowState::Gone => out.push(base(
                "gone",
                None,
                "no role has this OID or name any more; repair_registry() removes the row".into(),
            )),
        }
    }
    TableIterator::new(out)
}

/// Bring this database's registry rows in line with the cluster's labels
/// (after a restore), and re-write labels restored from another cluster so
/// that they record this cluster's sponsor OIDs. Rows that no label confirms
/// are kept (their roles stay refused) unless `forget_unmatched`.
#[pg_extern(name = "_repair_registry")]
#[allow(clippy::type_complexity)]
fn repair_registry(
    forget_unmatched: bool,
) -> TableIterator<
    'static,
    (
        name!(agent_name, String),
        name!(registered_oid, Option<pg_sys::Oid>),
        name!(state, String),
        name!(action, String),
    ),
> {
    require_registry_admin();
    let this = crate::identity::system_identifier();
    let mut out: Vec<(String, Option<pg_sys::Oid>, String, String)> = vec![];
    // labels first: once they hold this cluster's OIDs, renames and drops of sponsors count exactly
    for (oid, l) in crate::identity::read_agent_labels() {
        if l.cluster == Some(this) {
            continue;
        }
        let name = role_name(oid);
        let sponsor = crate::identity::resolve_sponsor(&l);
        if sponsor == pg_sys::InvalidOid {
            out.push((
                name,
                None,
                "label".into(),
                format!("kept: its sponsor \"{}\" does not exist in this cluster (the agent is refused as orphaned)", l.sponsor_name),
            ));
            continue;
        }
        let fixed = AgentLabel {
            sponsor_name: role_name(sponsor),
            kind: l.kind.clone(),
            sponsor_oid: Some(sponsor.to_u32()),
            cluster: Some(this),
        };
        set_role_label(&name, Some(&fixed.render()));
        out.push((
            name,
            None,
            "label".into(),
            format!(
                "re-written for this cluster: sponsor \"{}\" (OID {})",
                fixed.sponsor_name,
                sponsor.to_u32()
            ),
        ));
    }
    let labels = crate::identity::read_agent_labels();
    let cluster = this.to_string();
    let run = |sql: &str, args: &[pgrx::datum::DatumWithOid]| {
        crate::identity::internal(std::panic::AssertUnwindSafe(|| {
            Spi::run_with_args(sql, args)
        }))
        .unwrap_or_else(|e| error!("agent_guard: cannot repair the agent registry: {e}"))
    };
    for (row, st) in states(&labels) {
        let a = pg_sys::Oid::from(row.agent_oid);
        let action = match &st {
            RowState::Ok if row.cluster == Some(this) => "kept".to_string(),
            RowState::Ok => {
                run(
                    "UPDATE agent_guard.agent_registry SET system_identifier = $2 WHERE agent = $1",
                    &[a.into(), cluster.as_str().into()],
                );
                "kept; now records this cluster".into()
            }
            RowState::Renamed { now } => {
                run(
                    "UPDATE agent_guard.agent_registry SET agent_name = $2, system_identifier = $3 WHERE agent = $1",
                    &[a.into(), now.as_str().into(), cluster.as_str().into()],
                );
                format!("renamed to \"{now}\"")
            }
            RowState::Moved { to } => {
                let to = pg_sys::Oid::from(*to);
                let taken = Spi::get_one_with_args::<bool>(
                    "SELECT EXISTS (SELECT 1 FROM agent_guard.agent_registry WHERE agent = $1)",
                    &[to.into()],
                )
                .ok()
                .flatten()
                .unwrap_or(false);
                if taken && to != a {
                    run("DELETE FROM agent_guard.agent_registry WHERE agent = $1", &[a.into()]);
                    format!("removed: role \"{}\" (OID {}) has a row of this cluster", row.agent_name, to.to_u32())
                } else {
                    run(
                        "UPDATE agent_guard.agent_registry SET agent = $2, system_identifier = $3 WHERE agent = $1",
                        &[a.into(), to.into(), cluster.as_str().into()],
                    );
                    format!("relinked to role \"{}\" (OID {})", row.agent_name, to.to_u32())
                }
            }
            RowState::Unmatched { .. } if forget_unmatched => {
                run("DELETE FROM agent_guard.agent_registry WHERE agent = $1", &[a.into()]);
                "removed (forget_unmatched)".into()
            }
            RowState::Unmatched { suspects } => format!(
                "kept: no label confirms it, so {} stay refused here; register the agent again (agent_guard.register_agent) or remove the row (forget_unmatched => true)",
                suspects
                    .iter()
                    .map(|(_, n)| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            RowState::Gone => {
                run("DELETE FROM agent_guard.agent_registry WHERE agent = $1", &[a.into()]);
                "removed: the role no longer exists".into()
            }
        };
        out.push((
            row.agent_name.clone(),
            Some(a),
            st.code().to_string(),
            action,
        ));
    }
    crate::shmem::bump_at_commit();
    TableIterator::new(out)
}

/// Moves the registry generation when agent_registry changes (its trigger;
/// pg_restore's COPY too), so that sessions re-read who is an agent.
#[pg_extern(name = "_registry_changed_bump")]
fn registry_changed_bump() -> bool {
    crate::shmem::bump_at_commit();
    let relid = unsafe {
        let ns = pg_sys::get_namespace_oid(c"agent_guard".as_ptr(), true);
        pg_sys::get_relname_relid(c"agent_registry".as_ptr(), ns)
    };
    if relid != pg_sys::InvalidOid {
        crate::shmem::invalidate_replicas(relid);
    }
    true
}
