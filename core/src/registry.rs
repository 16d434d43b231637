//! Whether a database's `agent_guard.agent_registry` rows still match the
//! cluster's role labels.
//!
//! Who is an agent is decided by the role's security label (cluster-wide);
//! the registry table keeps per-database metadata keyed by the agent role's
//! OID. A dump carries both, but differently: `pg_dumpall --roles-only`
//! restores labels by role name (every role gets a new OID), `pg_dump`
//! restores the registry rows with the OIDs of the old cluster. A row can then
//! name a role that lost its label (restored without labels, or with
//! `--no-security-labels`), or carry an OID that now belongs to another role.
//! Such a row never leaves an agent unguarded: the roles it may mean are
//! treated as agents whose registration cannot be verified (refused), until
//! an administrator registers them again or removes the row
//! (`agent_guard.repair_registry()`), and it is the access review's top finding.

/// One row of `agent_guard.agent_registry`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRow {
    pub agent_oid: u32,
    pub agent_name: String,
    pub sponsor_name: String,
    pub kind: String,
    /// The system identifier of the cluster `agent_oid` belongs to (None:
    /// rows written before agent_guard recorded it).
    pub cluster: Option<u64>,
}

/// How a registry row relates to the cluster's roles and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowState {
    /// The role with the row's OID has the row's name and a label.
    Ok,
    /// The row's role is labelled but now has another name: the row's name
    /// is out of date (the agent was renamed).
    Renamed { now: String },
    /// The row comes from another cluster (a restored dump) and the role of
    /// its name is labelled here: the registration moved with the role; the
    /// row still carries the other cluster's OID.
    Moved { to: u32 },
    /// No label confirms the row: those roles (`suspects`: OID and name) are
    /// treated as agents whose registration cannot be verified.
    Unmatched { suspects: Vec<(u32, String)> },
    /// The row's role no longer exists (dropped): harmless, left over.
    Gone,
}

impl RowState {
    pub fn code(&self) -> &'static str {
        match self {
            RowState::Ok => "ok",
            RowState::Renamed { .. } => "renamed",
            RowState::Moved { .. } => "moved",
            RowState::Unmatched { .. } => "unmatched",
            RowState::Gone => "gone",
        }
    }
}

/// Judge one row in the cluster whose system identifier is `this_cluster`.
/// `name_of`/`oid_of`: the cluster's roles by OID and by name; `labelled`:
/// whether a role carries an agent label.
///
/// - A row written in this cluster means its OID: labelled, it is fine
///   (renamed or not); unlabelled, that role is suspect; dropped, gone.
/// - A row from another cluster means its name (OIDs of another cluster mean
///   nothing here, so whoever has that OID now is not suspected).
/// - A row of an earlier version (no cluster recorded) may mean either: both
///   the role with its OID and the role with its name are judged.
pub fn check_row(
    row: &RegistryRow,
    this_cluster: u64,
    name_of: impl Fn(u32) -> Option<String>,
    oid_of: impl Fn(&str) -> Option<u32>,
    labelled: impl Fn(u32) -> bool,
) -> RowState {
    let by_oid =
        || name_of(row.agent_oid).map(|name| (row.agent_oid, name, labelled(row.agent_oid)));
    let by_name = || oid_of(&row.agent_name).map(|o| (o, row.agent_name.clone(), labelled(o)));
    match row.cluster {
        Some(c) if c == this_cluster => match by_oid() {
            None => RowState::Gone,
            Some((_, name, true)) if name == row.agent_name => RowState::Ok,
            Some((_, name, true)) => RowState::Renamed { now: name },
            Some((o, name, false)) => RowState::Unmatched {
                suspects: vec![(o, name)],
            },
        },
        Some(_) => match by_name() {
            None => RowState::Gone,
            // same OID and name (pg_upgrade keeps role OIDs)
            Some((o, _, true)) if o == row.agent_oid => RowState::Ok,
            Some((o, _, true)) => RowState::Moved { to: o },
            Some((o, name, false)) => RowState::Unmatched {
                suspects: vec![(o, name)],
            },
        },
        None => {
            let at_oid = by_oid();
            let named = by_name();
            match (&at_oid, &named) {
                (Some((_, n, true)), _) if *n == row.agent_name => return RowState::Ok,
                (_, Some((o, _, true))) if *o != row.agent_oid => {
                    return RowState::Moved { to: *o }
                }
                _ => {}
            }
            let mut suspects = vec![];
            let mut renamed = None;
            if let Some((o, n, l)) = at_oid {
                if l {
                    renamed = Some(n);
                } else {
                    suspects.push((o, n));
                }
            }
            if let Some((o, n, false)) = named {
                if o != row.agent_oid {
                    suspects.push((o, n));
                }
            }
            match (suspects.is_empty(), renamed) {
                (false, _) => RowState::Unmatched { suspects },
                (true, Some(now)) => RowState::Renamed { now },
                (true, None) => RowState::Gone,
            }
        }
    }
}

/// Why a role's sessions are refused because of `row` (for refusals and the review).
pub fn unverified_reason(row: &RegistryRow, role: &str) -> String {
    if role == row.agent_name {
        format!(
            "this database's agent registry lists role \"{role}\" as an agent (sponsor \"{}\"), but no agent registration (role security label) confirms it",
            row.sponsor_name
        )
    } else {
        format!(
            "this database's agent registry lists agent \"{}\" (sponsor \"{}\") under OID {}, which is now role \"{role}\", and no agent registration (role security label) confirms either",
            row.agent_name, row.sponsor_name, row.agent_oid
        )
    }
}

/// What an administrator runs to settle an unmatched row.
pub fn unmatched_fix(row: &RegistryRow) -> String {
    format!(
        "SELECT agent_guard.register_agent({}, {}, kind => {}); (if it is the agent) or SELECT * FROM agent_guard.repair_registry(forget_unmatched => true); (if the row is left over)",
        crate::quote_literal(&row.agent_name),
        crate::quote_literal(&row.sponsor_name),
        crate::quote_literal(&row.kind)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: u64 = 42;

    fn row(oid: u32, name: &str, cluster: Option<u64>) -> RegistryRow {
        RegistryRow {
            agent_oid: oid,
            agent_name: name.into(),
            sponsor_name: "alice".into(),
            kind: "agent".into(),
            cluster,
        }
    }

    /// A cluster: (oid, name, labelled).
    fn judge(r: &RegistryRow, roles: &[(u32, &str, bool)]) -> RowState {
        check_row(
            r,
            HERE,
            |o| roles.iter().find(|x| x.0 == o).map(|x| x.1.to_string()),
            |n| roles.iter().find(|x| x.1 == n).map(|x| x.0),
            |o| roles.iter().any(|x| x.0 == o && x.2),
        )
    }

    #[test]
    fn rows_written_here_mean_their_oid() {
        let r = row(100, "bot", Some(HERE));
        assert_eq!(judge(&r, &[(100, "bot", true)]), RowState::Ok);
        assert_eq!(
            judge(&r, &[(100, "bot2", true), (200, "bot", false)]),
            RowState::Renamed { now: "bot2".into() }
        );
        // the label is gone but the role is not: fail closed
        assert_eq!(
            judge(&r, &[(100, "bot", false)]),
            RowState::Unmatched {
                suspects: vec![(100, "bot".into())]
            }
        );
        // dropped; a new role that took the name is not the agent
        assert_eq!(judge(&r, &[(200, "bot", false)]), RowState::Gone);
    }

    #[test]
    fn rows_from_another_cluster_mean_their_name() {
        let r = row(100, "bot", Some(7));
        // pg_dumpall restored the label by name (new OID 300); OID 100 is now carol
        assert_eq!(
            judge(&r, &[(100, "carol", false), (300, "bot", true)]),
            RowState::Moved { to: 300 }
        );
        // the roles were restored without their labels: bot fails closed, carol is not bot
        assert_eq!(
            judge(&r, &[(100, "carol", false), (300, "bot", false)]),
            RowState::Unmatched {
                suspects: vec![(300, "bot".into())]
            }
        );
        assert_eq!(judge(&r, &[(100, "carol", false)]), RowState::Gone);
        // pg_upgrade: a new system identifier, the same role OIDs
        assert_eq!(judge(&r, &[(100, "bot", true)]), RowState::Ok);
    }

    #[test]
    fn rows_of_earlier_versions_suspect_both_roles() {
        let r = row(100, "bot", None);
        assert_eq!(judge(&r, &[(100, "bot", true)]), RowState::Ok);
        assert_eq!(
            judge(&r, &[(100, "carol", false), (300, "bot", true)]),
            RowState::Moved { to: 300 }
        );
        assert_eq!(
            judge(&r, &[(100, "carol", false), (300, "bot", false)]),
            RowState::Unmatched {
                suspects: vec![(100, "carol".into()), (300, "bot".into())]
            }
        );
        assert_eq!(
            judge(&r, &[(100, "other_agent", true), (300, "bot", false)]),
            RowState::Unmatched {
                suspects: vec![(300, "bot".into())]
            }
        );
        assert_eq!(
            judge(&r, &[(100, "bot2", true)]),
            RowState::Renamed { now: "bot2".into() }
        );
        assert_eq!(judge(&r, &[]), RowState::Gone);
    }

    #[test]
    fn reasons_name_the_role_and_the_row() {
        let r = row(100, "bot", None);
        assert!(unverified_reason(&r, "bot").contains("lists role \"bot\" as an agent"));
        assert!(
            unverified_reason(&r, "carol").contains("under OID 100, which is now role \"carol\"")
        );
        assert!(unmatched_fix(&r).contains("register_agent('bot', 'alice', kind => 'agent')"));
    }
}
