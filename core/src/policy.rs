//! Who + what → allow or refuse, with the words a refusal carries.

use crate::classify::Classification;
use crate::risk::Risk;
use std::fmt;

/// Can the human behind an agent still log in?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SponsorStatus {
    Active,
    /// The role exists but has NOLOGIN.
    NoLogin,
    /// VALID UNTIL lies in the past.
    Expired,
    /// The role no longer exists.
    Dropped,
}

impl SponsorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SponsorStatus::Active => "active",
            SponsorStatus::NoLogin => "nologin",
            SponsorStatus::Expired => "expired",
            SponsorStatus::Dropped => "dropped",
        }
    }

    fn why(self) -> &'static str {
        match self {
            SponsorStatus::Active => "is active",
            SponsorStatus::NoLogin => "can no longer log in (NOLOGIN)",
            SponsorStatus::Expired => "can no longer log in (VALID UNTIL has passed)",
            SponsorStatus::Dropped => "no longer exists (the role was dropped)",
        }
    }
}

impl fmt::Display for SponsorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent behind a session, as far as policy needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The registered agent role (may be a group the login role belongs to).
    pub agent: String,
    /// The login role of the session.
    pub login: String,
    pub sponsor: String,
    pub sponsor_status: SponsorStatus,
    /// Set when the session counts as an agent only because this database's
    /// agent registry names it and no role label confirms it (see
    /// [`crate::registry`]): why, for the refusal. Such sessions fail closed.
    pub unverified: Option<String>,
}

/// Session facts that bear on every statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    /// agent_guard's extension exists in the session's database.
    pub guard_installed: bool,
    /// The database name, for messages.
    pub database: String,
    /// SET ROLE or set_config('role'/'session_authorization') moved the session away from its login role.
    pub role_switched: bool,
    /// session_replication_role is not 'origin' (triggers and rules are bypassed).
    pub replication_role_changed: bool,
    /// The server is a hot standby (in recovery): agent_guard cannot write
    /// the audit trail here, so agents' statements are refused, unless
    /// [`SessionState::standby_forwarding`].
    pub on_standby: bool,
    /// On a hot standby, agents' records are forwarded to the primary's
    /// trail (`agent_guard.standby_audit = forward`): reads are judged as on
    /// the primary; writes and schema changes are refused (read-only).
    pub standby_forwarding: bool,
}

/// A grant that covers a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantUse {
    pub grant_id: i64,
}

/// Where just-in-time grants come from; the grants module implements it.
pub trait GrantSource {
    /// A live grant of `actor` covering `statement`, if any.
    fn covering(&self, actor: &Actor, statement: &Classification) -> Option<GrantUse>;

    /// Like [`GrantSource::covering`], but when nothing covers the statement
    /// also says why live grants fall short and which request to suggest.
    fn lookup(&self, actor: &Actor, statement: &Classification) -> Result<GrantUse, NotCovered> {
        self.covering(actor, statement).ok_or_default()
    }
}

/// Why no grant covers a statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotCovered {
    /// Sentences on live grants that fall short, for the refusal's DETAIL.
    pub why: Vec<String>,
    /// The request to suggest; default: one built from the statement alone.
    pub suggestion: Option<crate::grants::Suggestion>,
}

trait OkOrDefault<T> {
    fn ok_or_default(self) -> Result<T, NotCovered>;
}

impl<T> OkOrDefault<T> for Option<T> {
    fn ok_or_default(self) -> Result<T, NotCovered> {
        self.ok_or_else(NotCovered::default)
    }
}

/// No grants at all.
pub struct NoGrants;

impl GrantSource for NoGrants {
    fn covering(&self, _: &Actor, _: &Classification) -> Option<GrantUse> {
        None
    }
}

/// A refusal, rendered once into SQLSTATE 42501 by the extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub detail: String,
    pub hint: String,
    /// Short machine-readable reason, e.g. `no_grant`, `orphaned`.
    pub code: &'static str,
}

/// The outcome of policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not an agent session: agent_guard does not interfere.
    NotEnforced,
    Allow {
        reason: String,
        grant: Option<GrantUse>,
    },
    Deny(Refusal),
}

impl Decision {
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::NotEnforced => "not_enforced",
            Decision::Allow { .. } => "allowed",
            Decision::Deny(_) => "denied",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Decision::NotEnforced => "not an agent session".into(),
            Decision::Allow { reason, .. } => reason.clone(),
            Decision::Deny(r) => r.message.clone(),
        }
    }
}

fn detail(actor: &Actor, c: &Classification) -> String {
    let objects = if c.objects.is_empty() {
        String::new()
    } else {
        format!(" on {}", c.objects.join(", "))
    };
    let via = if actor.login != actor.agent {
        format!(" (login role \"{}\")", actor.login)
    } else {
        String::new()
    };
    format!(
        "Statement classified as {} ({}{}): {}. Agent \"{}\"{}, sponsor \"{}\" ({}).",
        c.risk, c.command, objects, c.reason, actor.agent, via, actor.sponsor, actor.sponsor_status
    )
}

/// Whether `c` may run in an agent session whose `standard_conforming_strings`
/// is off or `backslash_quote` is on — string literals are then read otherwise
/// than an approver or the trail's reader reads them: only session
/// housekeeping that puts the settings back, not PREPARE (its text would run
/// later, read under these settings). Needs no catalog access.
pub fn allowed_under_nonstandard_strings(c: &Classification) -> bool {
    c.is_housekeeping() && !c.touches_guard && c.command != "PREPARE"
}

/// The refusal of a statement [`allowed_under_nonstandard_strings`] keeps out.
pub fn nonstandard_strings_refusal(actor: &Actor, c: &Classification) -> Decision {
    Decision::Deny(Refusal {
        message: format!(
            "agent \"{}\" may not run statements while standard_conforming_strings is off or backslash_quote is on",
            actor.agent
        ),
        detail: detail(actor, c),
        hint: "Run SET standard_conforming_strings = on and SET backslash_quote = safe_encoding: agent_guard, its approvers and its audit trail read statements as PostgreSQL does by default.".into(),
        code: "nonstandard_strings",
    })
}

/// The refusal of an agent's statement (anything but session housekeeping)
/// while the session's errors are not logged (`log_min_messages` above
/// `error`): agent_guard reads an agent's errors as they are logged, for the
/// trail (outcome, SQLSTATE, message) and to redact them; without that a
/// failed statement would leave no record.
pub fn unlogged_errors_refusal(actor: &Actor, c: &Classification) -> Option<Decision> {
    if c.is_housekeeping() && !c.touches_guard {
        return None;
    }
    Some(Decision::Deny(Refusal {
        message: format!(
            "agent \"{}\" may not run statements while log_min_messages keeps errors out of the server log",
            actor.agent
        ),
        detail: detail(actor, c),
        hint: "Connect with log_min_messages at error or lower (do not set it in PGOPTIONS, ALTER ROLE/DATABASE ... SET or postgresql.conf above error): agent_guard records and redacts agents' errors as they are logged.".into(),
        code: "errors_unlogged",
    }))
}

/// Decide whether `actor` may run a statement classified as `c`.
pub fn decide(
    actor: Option<&Actor>,
    session: &SessionState,
    c: &Classification,
    grants: &dyn GrantSource,
) -> Decision {
    let Some(actor) = actor else {
        return Decision::NotEnforced;
    };
    let deny = |code: &'static str, message: String, hint: &str| {
        Decision::Deny(Refusal {
            message,
            detail: detail(actor, c),
            hint: hint.to_string(),
            code,
        })
    };
    let agent = &actor.agent;

    if c.is_housekeeping() && !c.touches_guard {
        return Decision::Allow {
            reason: "session housekeeping".into(),
            grant: None,
        };
    }
    if !session.guard_installed {
        return deny(
            "guard_not_installed",
            format!(
                "agent \"{agent}\" may not run statements in database \"{}\": agent_guard is not installed there",
                session.database
            ),
            "Agents can work only in databases where CREATE EXTENSION agent_guard has been run.",
        );
    }
    if let Some(why) = &actor.unverified {
        return deny(
            "unverified_registration",
            format!("role \"{}\" may not run statements here: {why}", actor.login),
            "A superuser or member of agent_guard_admin must settle the registration: register the agent again with agent_guard.register_agent(), or, if the row is left over, remove it with agent_guard.repair_registry(forget_unmatched => true). agent_guard.registry_check() shows every such row.",
        );
    }
    if actor.sponsor_status != SponsorStatus::Active {
        return deny(
            "orphaned",
            format!(
                "agent \"{agent}\" is orphaned: its sponsor \"{}\" {}",
                actor.sponsor,
                actor.sponsor_status.why()
            ),
            "An administrator must register an active human sponsor with agent_guard.register_agent() before the agent can work again.",
        );
    }
    if session.on_standby && session.standby_forwarding {
        if c.risk >= Risk::Write {
            return deny(
                "standby_read_only",
                format!(
                    "agent \"{agent}\" may not run {} on a hot standby: a standby is read-only",
                    c.command
                ),
                "Connect to the primary for writes and schema changes (and request a grant there if one is needed). Reads work here; their records go to the primary's audit trail.",
            );
        }
    } else if session.on_standby {
        return deny(
            "standby",
            format!(
                "agent \"{agent}\" may not run {} on a hot standby: agent_guard cannot record it in the audit trail here",
                c.command
            ),
            "Connect to the primary: agent_guard records every agent statement in the primary's audit trail, and a standby cannot write it (writes need the primary anyway). Session housekeeping (SET, SHOW, BEGIN, COMMIT) still works here.",
        );
    }
    if session.role_switched {
        return deny(
            "role_switched",
            format!("agent \"{agent}\" may not act under another role (SET ROLE, SET SESSION AUTHORIZATION or set_config)"),
            "Run RESET ROLE (or RESET SESSION AUTHORIZATION) to continue as the agent's own role.",
        );
    }
    if session.replication_role_changed {
        return deny(
            "replication_role",
            format!("agent \"{agent}\" may not run statements while session_replication_role bypasses triggers"),
            "Run RESET session_replication_role.",
        );
    }
    if c.touches_guard {
        return deny(
            "guard_protected",
            format!("agent \"{agent}\" may not change agent_guard itself ({})", c.command),
            "agent_guard's schema, extension and settings are managed by humans; only agent_guard.request_id may be set by agents.",
        );
    }
    match c.risk {
        Risk::Session | Risk::Read | Risk::SensitiveRead => Decision::Allow {
            reason: format!("{} is allowed for agents", c.risk),
            grant: None,
        },
        Risk::Write | Risk::Ddl => match grants.lookup(actor, c) {
            Ok(grant) => Decision::Allow {
                reason: format!("covered by grant {}", grant.grant_id),
                grant: Some(grant),
            },
            Err(not_covered) => {
                let what = if c.risk == Risk::Write { "write to" } else { "change the schema of" };
                let objects = if c.objects.is_empty() {
                    "the database".to_string()
                } else {
                    c.objects.join(", ")
                };
                let suggestion = not_covered
                    .suggestion
                    .unwrap_or_else(|| crate::grants::Suggestion::for_statement(c));
                let mut detail = detail(actor, c);
                for why in &not_covered.why {
                    detail.push(' ');
                    detail.push_str(why);
                }
                Decision::Deny(Refusal {
                    message: format!(
                        "agent \"{agent}\" may not {what} {objects} ({}) without an approved grant",
                        c.command
                    ),
                    detail,
                    hint: suggestion.hint(),
                    code: "no_grant",
                })
            }
        },
        Risk::Privilege => deny(
            "never_allowed",
            format!("agent \"{agent}\" may not run {}: privilege operations are never allowed to agents", c.command),
            "A human administrator must make privilege changes.",
        ),
        Risk::Admin => deny(
            "never_allowed",
            format!("agent \"{agent}\" may not run {}: administrative operations are never allowed to agents", c.command),
            "A human administrator must run administrative commands.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::facts::{Facts, Operation, PlanFacts, Relation, UtilityFacts};

    fn actor(status: SponsorStatus) -> Actor {
        Actor {
            agent: "ci_bot".into(),
            login: "ci_bot".into(),
            sponsor: "alice".into(),
            sponsor_status: status,
            unverified: None,
        }
    }

    fn session() -> SessionState {
        SessionState {
            guard_installed: true,
            database: "app".into(),
            ..Default::default()
        }
    }

    fn delete() -> Classification {
        let mut p = PlanFacts {
            operation: Operation::Delete,
            ..PlanFacts::select()
        };
        p.written = vec![Relation::new(1, "public", "orders")];
        classify(&Facts::Plan(p))
    }

    fn read() -> Classification {
        classify(&Facts::Plan(PlanFacts::select()))
    }

    fn util(node: &str) -> Classification {
        classify(&Facts::Utility(UtilityFacts {
            node: node.into(),
            command: node.into(),
            ..Default::default()
        }))
    }

    struct Always;
    impl GrantSource for Always {
        fn covering(&self, _: &Actor, _: &Classification) -> Option<GrantUse> {
            Some(GrantUse { grant_id: 7 })
        }
    }

    #[test]
    fn non_agents_are_not_enforced() {
        assert_eq!(
            decide(None, &session(), &delete(), &NoGrants),
            Decision::NotEnforced
        );
    }

    #[test]
    fn agents_read_freely() {
        assert!(matches!(
            decide(
                Some(&actor(SponsorStatus::Active)),
                &session(),
                &read(),
                &NoGrants
            ),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn writes_need_a_grant() {
        let a = actor(SponsorStatus::Active);
        match decide(Some(&a), &session(), &delete(), &NoGrants) {
            Decision::Deny(r) => {
                assert_eq!(r.code, "no_grant");
                assert_eq!(r.message, "agent \"ci_bot\" may not write to public.orders (DELETE) without an approved grant");
                assert!(r.detail.contains("sponsor \"alice\" (active)"));
                assert!(r.hint.contains("agent_guard_approver"));
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(Some(&a), &session(), &delete(), &Always),
            Decision::Allow { grant: Some(_), .. }
        ));
    }

    #[test]
    fn privilege_and_admin_are_never_granted() {
        let a = actor(SponsorStatus::Active);
        for node in ["GrantStmt", "AlterSystemStmt"] {
            assert!(
                matches!(
                    decide(Some(&a), &session(), &util(node), &Always),
                    Decision::Deny(_)
                ),
                "{node}"
            );
        }
    }

    #[test]
    fn unverified_registrations_keep_only_housekeeping() {
        let mut a = actor(SponsorStatus::Active);
        a.unverified =
            Some("this database's agent registry lists role \"ci_bot\" as an agent".into());
        match decide(Some(&a), &session(), &read(), &NoGrants) {
            Decision::Deny(r) => {
                assert_eq!(r.code, "unverified_registration");
                assert!(
                    r.message
                        .starts_with("role \"ci_bot\" may not run statements here: "),
                    "{}",
                    r.message
                );
                assert!(r.hint.contains("register_agent"), "{}", r.hint);
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(Some(&a), &session(), &util("TransactionStmt"), &NoGrants),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn on_a_standby_agents_keep_only_housekeeping() {
        let a = actor(SponsorStatus::Active);
        let standby = SessionState {
            on_standby: true,
            ..session()
        };
        match decide(Some(&a), &standby, &read(), &NoGrants) {
            Decision::Deny(r) => {
                assert_eq!(r.code, "standby");
                assert!(r.message.contains("on a hot standby"), "{}", r.message);
                assert!(r.hint.starts_with("Connect to the primary"), "{}", r.hint);
                assert!(
                    r.detail.starts_with("Statement classified as read"),
                    "{}",
                    r.detail
                );
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(Some(&a), &standby, &util("TransactionStmt"), &NoGrants),
            Decision::Allow { .. }
        ));
        // the sponsor rule keeps its own, more precise reason
        match decide(
            Some(&actor(SponsorStatus::NoLogin)),
            &standby,
            &read(),
            &NoGrants,
        ) {
            Decision::Deny(r) => assert_eq!(r.code, "orphaned"),
            d => panic!("{d:?}"),
        }
        // nobody else is affected
        assert_eq!(
            decide(None, &standby, &read(), &NoGrants),
            Decision::NotEnforced
        );
    }

    #[test]
    fn on_a_forwarding_standby_agents_read_and_never_write() {
        let a = actor(SponsorStatus::Active);
        let standby = SessionState {
            on_standby: true,
            standby_forwarding: true,
            ..session()
        };
        assert!(matches!(
            decide(Some(&a), &standby, &read(), &NoGrants),
            Decision::Allow { .. }
        ));
        match decide(Some(&a), &standby, &delete(), &NoGrants) {
            Decision::Deny(r) => {
                assert_eq!(r.code, "standby_read_only");
                assert!(
                    r.message
                        .contains("on a hot standby: a standby is read-only"),
                    "{}",
                    r.message
                );
                assert!(
                    r.hint.starts_with("Connect to the primary for writes"),
                    "{}",
                    r.hint
                );
            }
            d => panic!("{d:?}"),
        }
        // the sponsor rule holds here too
        match decide(
            Some(&actor(SponsorStatus::NoLogin)),
            &standby,
            &read(),
            &NoGrants,
        ) {
            Decision::Deny(r) => assert_eq!(r.code, "orphaned"),
            d => panic!("{d:?}"),
        }
        // agent_guard itself stays out of reach
        let mut set = util("VariableSetStmt");
        set.touches_guard = true;
        assert!(matches!(
            decide(Some(&a), &standby, &set, &NoGrants),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn unlogged_errors_refuse_everything_but_housekeeping() {
        let a = actor(SponsorStatus::Active);
        for c in [read(), delete()] {
            match unlogged_errors_refusal(&a, &c) {
                Some(Decision::Deny(r)) => {
                    assert_eq!(r.code, "errors_unlogged");
                    assert!(r.hint.contains("log_min_messages"), "{}", r.hint);
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(unlogged_errors_refusal(&a, &util("VariableSetStmt")), None);
        assert_eq!(unlogged_errors_refusal(&a, &util("TransactionStmt")), None);
    }

    #[test]
    fn nonstandard_strings_refuse_everything_but_housekeeping() {
        let a = actor(SponsorStatus::Active);
        for c in [read(), delete()] {
            assert!(!allowed_under_nonstandard_strings(&c));
            match nonstandard_strings_refusal(&a, &c) {
                Decision::Deny(r) => {
                    assert_eq!(r.code, "nonstandard_strings");
                    assert!(
                        r.hint.contains("standard_conforming_strings = on"),
                        "{}",
                        r.hint
                    );
                }
                d => panic!("{d:?}"),
            }
        }
        // SET/RESET and transaction control put things back
        assert!(allowed_under_nonstandard_strings(&util("VariableSetStmt")));
        assert!(allowed_under_nonstandard_strings(&util("TransactionStmt")));
        // PREPARE would keep the text to run later
        let prepare = classify(&Facts::Utility(UtilityFacts {
            node: "PrepareStmt".into(),
            command: "PREPARE".into(),
            ..Default::default()
        }));
        assert!(!allowed_under_nonstandard_strings(&prepare));
    }

    #[test]
    fn orphaned_agents_keep_only_housekeeping() {
        for status in [
            SponsorStatus::NoLogin,
            SponsorStatus::Expired,
            SponsorStatus::Dropped,
        ] {
            let a = actor(status);
            match decide(Some(&a), &session(), &read(), &NoGrants) {
                Decision::Deny(r) => {
                    assert_eq!(r.code, "orphaned");
                    assert!(r.message.contains("\"alice\""), "{}", r.message);
                }
                d => panic!("{d:?}"),
            }
            assert!(matches!(
                decide(Some(&a), &session(), &util("TransactionStmt"), &NoGrants),
                Decision::Allow { .. }
            ));
        }
    }

    #[test]
    fn databases_without_the_guard_refuse_agents() {
        let s = SessionState {
            guard_installed: false,
            database: "other".into(),
            ..Default::default()
        };
        let a = actor(SponsorStatus::Active);
        assert!(matches!(
            decide(Some(&a), &s, &read(), &NoGrants),
            Decision::Deny(Refusal {
                code: "guard_not_installed",
                ..
            })
        ));
        assert!(matches!(
            decide(Some(&a), &s, &util("TransactionStmt"), &NoGrants),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn switched_role_is_refused() {
        let s = SessionState {
            role_switched: true,
            ..session()
        };
        let a = actor(SponsorStatus::Active);
        assert!(matches!(
            decide(Some(&a), &s, &read(), &NoGrants),
            Decision::Deny(Refusal {
                code: "role_switched",
                ..
            })
        ));
    }

    #[test]
    fn guard_objects_are_protected_even_with_a_grant() {
        let mut p = PlanFacts {
            operation: Operation::Update,
            ..PlanFacts::select()
        };
        p.written = vec![Relation::new(1, "agent_guard", "agent_registry")];
        let c = classify(&Facts::Plan(p));
        let a = actor(SponsorStatus::Active);
        assert!(matches!(
            decide(Some(&a), &session(), &c, &Always),
            Decision::Deny(Refusal {
                code: "guard_protected",
                ..
            })
        ));
    }
}
