//! Registering agents and their human sponsors.
//!
//! The registration is a security label on the agent's role (shared by every
//! database of the cluster) plus a row of metadata in this database.

use agent_guard_core::label::AgentLabel;
use agent_guard_core::{quote_ident, quote_literal, SponsorStatus};
use pgrx::prelude::*;
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
        sponsor_oid: sponsor.to_u32(),
        sponsor_name: sponsor_name.clone(),
        kind: kind.trim().to_string(),
    };
    set_role_label(&agent_name, Some(&label.render()));
    crate::identity::internal(|| {
        Spi::run_with_args(
            "INSERT INTO agent_guard.agent_registry AS r (agent, agent_name, sponsor, sponsor_name, kind, note) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (agent) DO UPDATE SET agent_name = EXCLUDED.agent_name, sponsor = EXCLUDED.sponsor, \
               sponsor_name = EXCLUDED.sponsor_name, kind = EXCLUDED.kind, note = EXCLUDED.note, \
               registered_by = session_user, registered_at = pg_catalog.now()",
            &[
                agent.into(),
                agent_name.as_str().into(),
                sponsor.into(),
                sponsor_name.as_str().into(),
                kind.trim().into(),
                note.into(),
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
    let registered = crate::identity::agent_of_role(agent).is_some_and(|a| a.agent_oid == agent);
    if !registered {
        error!("role \"{agent_name}\" is not registered as an agent");
    }
    set_role_label(&agent_name, None);
    crate::identity::internal(|| {
        Spi::run_with_args(
            "DELETE FROM agent_guard.agent_registry WHERE agent = $1",
            &[agent.into()],
        )
    })
    .unwrap_or_else(|e| error!("agent_guard: cannot remove the agent registration: {e}"));
    crate::shmem::bump_at_commit();
    true
}

/// Every registration of the cluster, parsed from the role labels.
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
    let rows = crate::identity::role_labels();
    TableIterator::new(rows.into_iter().filter_map(|(oid, label)| {
        let l = agent_guard_core::label::parse_agent_label(&label).ok()?;
        Some((
            oid,
            pg_sys::Oid::from(l.sponsor_oid),
            l.sponsor_name,
            l.kind,
        ))
    }))
}
