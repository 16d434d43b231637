//! The grammar of agent_guard's security labels.
//!
//! Columns: `SENSITIVE` (masked with the default mask of the column's type),
//! `MASKED WITH FUNCTION …` and `MASKED WITH VALUE …` (see [`crate::mask`]).
//! Roles:   `AGENT SPONSOR <oid> "<sponsor name>" KIND <kind>`, written only by
//! `agent_guard.register_agent()`. Role labels live in the shared catalog
//! `pg_shseclabel`, so every database of the cluster sees who is an agent.

use crate::mask::MaskRule;
use crate::quote_ident;

/// What a column label asks for. Every form makes the column sensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnLabel {
    /// `SENSITIVE`: the default mask of the column's type.
    Sensitive,
    /// `MASKED WITH FUNCTION …` / `MASKED WITH VALUE …`.
    Masked(MaskRule),
}

impl ColumnLabel {
    /// The masking rule the label asks for.
    pub fn rule(&self) -> MaskRule {
        match self {
            ColumnLabel::Sensitive => MaskRule::Default,
            ColumnLabel::Masked(r) => r.clone(),
        }
    }
}

/// Parse a column label; the error says what is accepted. (The expression of
/// a `MASKED WITH …` label is checked from PostgreSQL's parse tree by the
/// extension, with [`crate::mask::validate_function`] / [`crate::mask::validate_value`].)
pub fn parse_column_label(label: &str) -> Result<ColumnLabel, String> {
    match crate::mask::parse_rule(label)? {
        MaskRule::Default => Ok(ColumnLabel::Sensitive),
        rule => Ok(ColumnLabel::Masked(rule)),
    }
}

/// What a role label records about an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLabel {
    pub sponsor_oid: u32,
    pub sponsor_name: String,
    pub kind: String,
}

impl AgentLabel {
    /// The label text stored in `pg_shseclabel`.
    pub fn render(&self) -> String {
        format!(
            "AGENT SPONSOR {} {} KIND {}",
            self.sponsor_oid,
            quote_always(&self.sponsor_name),
            quote_ident(&self.kind)
        )
    }
}

fn quote_always(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Split into words, where `"…"` (with `""` for a quote) is one word.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        w.push('"');
                    }
                    Some('"') => break,
                    Some(ch) => w.push(ch),
                    None => return Err("unterminated quoted name".into()),
                }
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

/// Parse a role label.
pub fn parse_agent_label(label: &str) -> Result<AgentLabel, String> {
    let bad = || {
        format!(
            "\"{label}\" is not a valid agent_guard role label; use agent_guard.register_agent()"
        )
    };
    let w = words(label).map_err(|_| bad())?;
    match w.as_slice() {
        [agent, sponsor_kw, oid, name, kind_kw, kind]
            if agent.eq_ignore_ascii_case("agent")
                && sponsor_kw.eq_ignore_ascii_case("sponsor")
                && kind_kw.eq_ignore_ascii_case("kind") =>
        {
            let sponsor_oid = oid.parse::<u32>().map_err(|_| bad())?;
            if sponsor_oid == 0 || kind.is_empty() {
                return Err(bad());
            }
            Ok(AgentLabel {
                sponsor_oid,
                sponsor_name: name.clone(),
                kind: kind.clone(),
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_labels() {
        assert_eq!(parse_column_label("SENSITIVE"), Ok(ColumnLabel::Sensitive));
        assert_eq!(
            parse_column_label("  sensitive "),
            Ok(ColumnLabel::Sensitive)
        );
        assert!(parse_column_label("SECRET").is_err());
        assert!(parse_column_label("").is_err());
        assert!(parse_column_label("SENSITIVE please").is_err());
        assert_eq!(
            parse_column_label("MASKED WITH VALUE NULL"),
            Ok(ColumnLabel::Masked(MaskRule::Value("NULL".into())))
        );
        assert_eq!(
            parse_column_label("MASKED WITH FUNCTION agent_guard.email(e)")
                .unwrap()
                .rule(),
            MaskRule::Function("agent_guard.email(e)".into())
        );
    }

    #[test]
    fn agent_labels_round_trip() {
        let l = AgentLabel {
            sponsor_oid: 16384,
            sponsor_name: "Alice \"Al\" Smith".into(),
            kind: "agent".into(),
        };
        let text = l.render();
        assert_eq!(
            text,
            "AGENT SPONSOR 16384 \"Alice \"\"Al\"\" Smith\" KIND agent"
        );
        assert_eq!(parse_agent_label(&text), Ok(l));
    }

    #[test]
    fn malformed_agent_labels_are_rejected() {
        for bad in [
            "AGENT",
            "AGENT SPONSOR x \"a\" KIND agent",
            "AGENT SPONSOR 0 \"a\" KIND agent",
            "SENSITIVE",
            "AGENT SPONSOR 1 \"a KIND agent",
        ] {
            assert!(parse_agent_label(bad).is_err(), "{bad}");
        }
    }
}
