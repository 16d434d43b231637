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
///
/// The sponsor is named, so that a label restored into another cluster
/// (`pg_dumpall --roles-only`, where every role has a new OID) still finds
/// it; the OID it had when the label was written, with the system identifier
/// of that cluster, makes it exact inside that cluster (a renamed sponsor is
/// still the sponsor, a dropped one stays dropped even if a new role takes
/// its name). See [`resolve_sponsor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLabel {
    pub sponsor_name: String,
    pub kind: String,
    /// The sponsor's OID when the label was written, if recorded.
    pub sponsor_oid: Option<u32>,
    /// The system identifier of the cluster that OID belongs to (labels of
    /// agent_guard 0.x before restore support recorded an OID without it).
    pub cluster: Option<u64>,
}

impl AgentLabel {
    /// The label text stored in `pg_shseclabel`:
    /// `AGENT SPONSOR "<name>" KIND <kind> [OID <oid> CLUSTER <system identifier>]`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "AGENT SPONSOR {} KIND {}",
            quote_always(&self.sponsor_name),
            quote_ident(&self.kind)
        );
        if let (Some(oid), Some(cluster)) = (self.sponsor_oid, self.cluster) {
            s.push_str(&format!(" OID {oid} CLUSTER {cluster}"));
        }
        s
    }
}

/// Which role is an agent label's sponsor in this cluster (`this_cluster`:
/// its system identifier), given lookups of roles by OID and by name.
///
/// - The label was written in this cluster: the recorded OID, whatever the
///   role is called now; None if that role was dropped (a role created later
///   with the same name is not the sponsor).
/// - Written elsewhere (restored from another cluster's dump), or an older
///   label without a cluster: the recorded OID if that role still has the
///   recorded name, else the role of that name, else None.
pub fn resolve_sponsor(
    label: &AgentLabel,
    this_cluster: u64,
    name_of: impl Fn(u32) -> Option<String>,
    oid_of: impl Fn(&str) -> Option<u32>,
) -> Option<u32> {
    if let (Some(oid), Some(cluster)) = (label.sponsor_oid, label.cluster) {
        if cluster == this_cluster {
            return name_of(oid).map(|_| oid);
        }
    }
    if let Some(oid) = label.sponsor_oid {
        if name_of(oid).as_deref() == Some(label.sponsor_name.as_str()) {
            return Some(oid);
        }
    }
    oid_of(&label.sponsor_name)
}

fn quote_always(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Split into words, where `"…"` (with `""` for a quote) is one word; the
/// flag says whether the word was quoted.
fn words(s: &str) -> Result<Vec<(String, bool)>, String> {
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
            out.push((w, true));
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push((w, false));
        }
    }
    Ok(out)
}

/// Parse a role label: `AGENT SPONSOR "<name>" KIND <kind> [OID <oid> CLUSTER <id>]`,
/// or the older `AGENT SPONSOR <oid> "<name>" KIND <kind>`.
pub fn parse_agent_label(label: &str) -> Result<AgentLabel, String> {
    let bad = || {
        format!(
            "\"{label}\" is not a valid agent_guard role label; use agent_guard.register_agent() \
             (or, restoring a dump: AGENT SPONSOR \"<sponsor role>\" KIND <kind>)"
        )
    };
    let w = words(label).map_err(|_| bad())?;
    let kw = |i: usize, k: &str| {
        w.get(i)
            .is_some_and(|(x, q)| !q && x.eq_ignore_ascii_case(k))
    };
    if !(kw(0, "agent") && kw(1, "sponsor")) {
        return Err(bad());
    }
    let positive = |s: &str| s.parse::<u32>().ok().filter(|o| *o != 0);
    // the older form: AGENT SPONSOR <oid> "<name>" KIND <kind>
    if w.len() == 6 && !w[2].1 && w[3].1 && kw(4, "kind") {
        let sponsor_oid = positive(&w[2].0).ok_or_else(bad)?;
        if w[3].0.is_empty() || w[5].0.is_empty() {
            return Err(bad());
        }
        return Ok(AgentLabel {
            sponsor_name: w[3].0.clone(),
            kind: w[5].0.clone(),
            sponsor_oid: Some(sponsor_oid),
            cluster: None,
        });
    }
    if !(w.len() == 5 || w.len() == 9) || !kw(3, "kind") || w[2].0.is_empty() || w[4].0.is_empty() {
        return Err(bad());
    }
    let mut l = AgentLabel {
        sponsor_name: w[2].0.clone(),
        kind: w[4].0.clone(),
        sponsor_oid: None,
        cluster: None,
    };
    if w.len() == 9 {
        if !(kw(5, "oid") && kw(7, "cluster")) || w[6].1 || w[8].1 {
            return Err(bad());
        }
        l.sponsor_oid = Some(positive(&w[6].0).ok_or_else(bad)?);
        l.cluster = Some(w[8].0.parse::<u64>().map_err(|_| bad())?);
    }
    Ok(l)
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

    fn label(oid: Option<u32>, cluster: Option<u64>) -> AgentLabel {
        AgentLabel {
            sponsor_name: "alice".into(),
            kind: "agent".into(),
            sponsor_oid: oid,
            cluster,
        }
    }

    #[test]
    fn agent_labels_round_trip() {
        let l = AgentLabel {
            sponsor_name: "Alice \"Al\" Smith".into(),
            kind: "agent".into(),
            sponsor_oid: Some(16384),
            cluster: Some(7301234567890123456),
        };
        let text = l.render();
        assert_eq!(
            text,
            "AGENT SPONSOR \"Alice \"\"Al\"\" Smith\" KIND agent OID 16384 CLUSTER 7301234567890123456"
        );
        assert_eq!(parse_agent_label(&text), Ok(l));
        // by name only: what a DBA writes by hand when restoring
        let by_name = parse_agent_label("AGENT SPONSOR \"alice\" KIND agent").unwrap();
        assert_eq!(by_name, label(None, None));
        assert_eq!(by_name.render(), "AGENT SPONSOR \"alice\" KIND agent");
        // the older form (in dumps of earlier versions)
        assert_eq!(
            parse_agent_label("AGENT SPONSOR 16384 \"alice\" KIND agent"),
            Ok(label(Some(16384), None))
        );
        assert_eq!(
            parse_agent_label("agent sponsor \"alice\" kind agent oid 16384 cluster 9"),
            Ok(label(Some(16384), Some(9)))
        );
    }

    #[test]
    fn sponsors_resolve_by_oid_in_their_cluster_and_by_name_elsewhere() {
        let roles = |oid: u32| match oid {
            16384 => Some("alice".to_string()),
            16390 => Some("mallory".to_string()),
            16400 => Some("alice_renamed".to_string()),
            _ => None,
        };
        let by_name = |n: &str| match n {
            "alice" => Some(16384),
            _ => None,
        };
        let here = 42;
        // written here: the OID decides, renamed or not; a dropped sponsor stays dropped
        assert_eq!(
            resolve_sponsor(&label(Some(16400), Some(here)), here, roles, by_name),
            Some(16400)
        );
        assert_eq!(
            resolve_sponsor(&label(Some(16500), Some(here)), here, roles, by_name),
            None
        );
        // restored from another cluster: its OIDs mean nothing here (16390 is someone else)
        assert_eq!(
            resolve_sponsor(&label(Some(16390), Some(7)), here, roles, by_name),
            Some(16384)
        );
        assert_eq!(
            resolve_sponsor(&label(None, None), here, roles, by_name),
            Some(16384)
        );
        // older labels: the OID when it still has the name, else the name
        assert_eq!(
            resolve_sponsor(&label(Some(16384), None), here, roles, by_name),
            Some(16384)
        );
        assert_eq!(
            resolve_sponsor(&label(Some(16390), None), here, roles, by_name),
            Some(16384)
        );
        let nobody = |_: &str| None;
        assert_eq!(
            resolve_sponsor(&label(Some(16390), Some(7)), here, roles, nobody),
            None
        );
    }

    #[test]
    fn malformed_agent_labels_are_rejected() {
        for bad in [
            "AGENT",
            "AGENT SPONSOR x \"a\" KIND agent",
            "AGENT SPONSOR 0 \"a\" KIND agent",
            "SENSITIVE",
            "AGENT SPONSOR 1 \"a KIND agent",
            "AGENT SPONSOR \"\" KIND agent",
            "AGENT SPONSOR \"a\" KIND",
            "AGENT SPONSOR \"a\" KIND agent OID 5",
            "AGENT SPONSOR \"a\" KIND agent OID 0 CLUSTER 1",
            "AGENT SPONSOR \"a\" KIND agent OID x CLUSTER 1",
            "AGENT SPONSOR \"a\" KIND agent CLUSTER 1 OID 5",
            "AGENT SPONSOR \"a\" \"KIND\" agent",
        ] {
            assert!(parse_agent_label(bad).is_err(), "{bad}");
        }
    }
}
