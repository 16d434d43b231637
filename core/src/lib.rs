//! Pure decision logic of agent_guard, with no PostgreSQL dependency.
//!
//! The extension crate reads PostgreSQL's trees into the plain data of
//! [`facts`]; everything after that — which risk a statement carries
//! ([`classify`]), whether an agent may run it ([`policy`]), which request it
//! belongs to ([`request_id`]) and what a security label means ([`label`]) —
//! lives here, so `cargo test -p agent_guard_core` checks it in milliseconds.

pub mod chain;
pub mod classify;
pub mod facts;
pub mod grants;
pub mod label;
pub mod mask;
pub mod policy;
pub mod query_text;
pub mod redact;
pub mod registry;
pub mod request_id;
pub mod review;
pub mod risk;

pub use classify::{classify, classify_function, Classification};
pub use facts::{CallContext, Facts, FunctionFacts, PlanFacts, Relation, UtilityFacts};
pub use policy::{decide, Actor, Decision, Refusal, SessionState, SponsorStatus};
pub use risk::Risk;

/// The schema, extension name and settings prefix of agent_guard.
pub const GUARD_SCHEMA: &str = "agent_guard";
/// agent_guard's generated masking views.
pub const MASKED_SCHEMA: &str = "agent_guard_masked";
/// The NOTIFY channel on which agent_guard tells approvers about requests and decisions.
pub const NOTIFY_CHANNEL: &str = "agent_guard";
/// The one agent_guard setting agents may change.
pub const REQUEST_ID_SETTING: &str = "agent_guard.request_id";

/// Quote an identifier the way PostgreSQL's `quote_ident` does.
pub fn quote_ident(ident: &str) -> String {
    let plain = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// Quote a string literal the way PostgreSQL's `quote_literal` does.
pub fn quote_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("Orders"), "\"Orders\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("1x"), "\"1x\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
