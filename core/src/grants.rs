//! Just-in-time grants: what a grant covers, and what a refusal suggests.
//!
//! The extension looks up the live grants of an agent (approved, not expired,
//! not revoked) for every write or schema change it makes; everything that
//! decides whether one of them covers the statement lives here:
//!
//! - the statement's risk must be within the grant's (`write` < `ddl`: a
//!   `write` grant never covers a schema change, a `ddl` grant covers both);
//! - with objects given, every relation the statement writes must be one of
//!   them or created under the grant; a schema change of something that is
//!   not a relation (a function, a type, …) is not covered by such a grant;
//! - a single-statement grant covers only a statement with the same
//!   fingerprint (PostgreSQL's lexer tokens, see [`canonical_tokens`]);
//! - the grant must not be used up (`max_statements`).
//!
//! Nested statements (triggers, functions) of a top-level statement that
//! already used a grant are checked against the same grant without using it
//! again and without comparing fingerprints: the approved statement is the
//! top-level one, but every relation it writes, at any depth, must be covered.

use crate::classify::Classification;
use crate::quote_literal;
use crate::risk::Risk;

/// Risks an agent may ask for: only `write` and `ddl`.
pub fn check_grantable(risk: Risk) -> Result<(), String> {
    match risk {
        Risk::Write | Risk::Ddl => Ok(()),
        Risk::Privilege | Risk::Admin => Err(format!(
            "{risk} operations are never granted to agents; a human administrator must run them"
        )),
        Risk::Session | Risk::Read | Risk::SensitiveRead => Err(format!(
            "{risk} statements need no grant; request 'write' or 'ddl'"
        )),
    }
}

/// `agent_guard.require_distinct_sponsor`: when the agent's own sponsor may not approve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistinctSponsor {
    /// The sponsor may approve anything.
    Off,
    /// The sponsor may approve writes but not schema changes.
    Ddl,
    /// The sponsor may never approve.
    Always,
}

impl DistinctSponsor {
    pub fn as_str(self) -> &'static str {
        match self {
            DistinctSponsor::Off => "off",
            DistinctSponsor::Ddl => "ddl",
            DistinctSponsor::Always => "always",
        }
    }

    /// Whether the rule forbids the sponsor to approve a request of `risk`.
    pub fn applies(self, risk: Risk) -> bool {
        match self {
            DistinctSponsor::Off => false,
            DistinctSponsor::Ddl => risk >= Risk::Ddl,
            DistinctSponsor::Always => true,
        }
    }
}

/// A live grant, as the extension found it: approved, not expired, not revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    /// `write` or `ddl`.
    pub risk: Risk,
    /// Relation OIDs the grant is limited to; `None`: any relation.
    pub objects: Option<Vec<u32>>,
    /// Relations created under the grant (they are covered too).
    pub created: Vec<u32>,
    /// Names of `objects` and `created`, for messages.
    pub object_names: Vec<String>,
    /// Set for a single-statement grant: the fingerprint of that statement.
    pub fingerprint: Option<String>,
    /// How many statements the grant may cover; `None`: unlimited.
    pub max_statements: Option<i64>,
    /// How many statements it covered so far.
    pub uses: i64,
}

impl Grant {
    fn covers_relation(&self, oid: u32) -> bool {
        match &self.objects {
            None => true,
            Some(objects) => objects.contains(&oid) || self.created.contains(&oid),
        }
    }
}

/// What the statement to be covered brings along.
#[derive(Clone, Copy, Debug)]
pub struct Need<'a> {
    pub statement: &'a Classification,
    /// Fingerprint of the top-level statement (computed only when some grant has one).
    pub fingerprint: Option<&'a str>,
    /// Grants the enclosing top-level statement already used.
    pub used_by_statement: &'a [i64],
}

/// Why a live grant does not cover a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// A `write` grant and a schema change.
    Risk { grant: i64 },
    /// Written relations outside the grant's objects.
    Objects {
        grant: i64,
        missing: Vec<String>,
        covered: Vec<String>,
    },
    /// A schema change of something other than a relation, under a grant limited to relations.
    NotARelation { grant: i64, command: String },
    /// A single-statement grant and a different statement.
    Statement { grant: i64 },
    /// Every statement the grant allows has been run.
    UsedUp { grant: i64, max: i64 },
}

impl Miss {
    /// One sentence for the refusal's DETAIL.
    pub fn describe(&self) -> String {
        match self {
            Miss::Risk { grant } => {
                format!("Grant {grant} allows writes only, not schema changes.")
            }
            Miss::Objects {
                grant,
                missing,
                covered,
            } => format!(
                "Grant {grant} does not cover {} (it covers {}).",
                missing.join(", "),
                if covered.is_empty() {
                    "no relation".to_string()
                } else {
                    covered.join(", ")
                }
            ),
            Miss::NotARelation { grant, command } => format!(
                "Grant {grant} is limited to named relations; {command} changes something else."
            ),
            Miss::Statement { grant } => {
                format!("Grant {grant} is for one specific statement, and this is a different one.")
            }
            Miss::UsedUp { grant, max } => format!(
                "Grant {grant} is used up ({max} statement{} allowed).",
                if *max == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Commands that create a relation (which then becomes covered by the grant).
pub fn creates_relation(command: &str) -> bool {
    matches!(
        command,
        "CREATE TABLE"
            | "CREATE TABLE AS"
            | "SELECT INTO"
            | "CREATE VIEW"
            | "CREATE MATERIALIZED VIEW"
            | "CREATE SEQUENCE"
            | "CREATE INDEX"
            | "CREATE FOREIGN TABLE"
    )
}

/// Does grant `g` cover the statement?
pub fn coverage(g: &Grant, need: &Need) -> Result<(), Miss> {
    let c = need.statement;
    if !matches!(c.risk, Risk::Write | Risk::Ddl) || c.risk > g.risk {
        return Err(Miss::Risk { grant: g.id });
    }
    let already_used = need.used_by_statement.contains(&g.id);
    if !already_used {
        if let Some(max) = g.max_statements {
            if g.uses >= max {
                return Err(Miss::UsedUp { grant: g.id, max });
            }
        }
        if let Some(fp) = &g.fingerprint {
            if need.fingerprint != Some(fp.as_str()) {
                return Err(Miss::Statement { grant: g.id });
            }
        }
    }
    if g.objects.is_some() {
        let missing: Vec<String> = c
            .written
            .iter()
            .filter(|r| !g.covers_relation(r.oid))
            .map(|r| r.qualified())
            .collect();
        if !missing.is_empty() {
            return Err(Miss::Objects {
                grant: g.id,
                missing,
                covered: g.object_names.clone(),
            });
        }
        if c.risk == Risk::Ddl && c.written.is_empty() && !creates_relation(&c.command) {
            return Err(Miss::NotARelation {
                grant: g.id,
                command: c.command.clone(),
            });
        }
    }
    Ok(())
}

/// The grants that cover the statement, best first, and why the others do not.
///
/// Best: a grant the top-level statement already uses (no further use is
/// counted), then single-statement grants (the statement was approved as
/// such), then the others in the order given (the extension sorts by expiry).
pub fn covering<'g>(grants: &'g [Grant], need: &Need) -> (Vec<&'g Grant>, Vec<Miss>) {
    let mut ok = vec![];
    let mut misses = vec![];
    for g in grants {
        match coverage(g, need) {
            Ok(()) => ok.push(g),
            Err(m) => misses.push(m),
        }
    }
    ok.sort_by_key(|g| {
        (
            !need.used_by_statement.contains(&g.id),
            g.fingerprint.is_none(),
        )
    });
    (ok, misses)
}

/// Whether any grant needs the statement's fingerprint to be judged.
pub fn needs_fingerprint(grants: &[Grant], need_used: &[i64]) -> bool {
    grants
        .iter()
        .any(|g| g.fingerprint.is_some() && !need_used.contains(&g.id))
}

/// The request a refused agent could file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    pub risk: Risk,
    /// Existing relations, qualified (they become `regclass` values).
    pub objects: Vec<String>,
    /// The statement to approve, when it is known.
    pub statement: Option<String>,
}

/// Statements longer than this are not repeated in a hint.
pub const MAX_HINT_STATEMENT: usize = 4000;

impl Suggestion {
    /// The request for `c` alone (the extension widens it for nested statements).
    pub fn for_statement(c: &Classification) -> Suggestion {
        Suggestion {
            risk: if c.risk >= Risk::Ddl {
                Risk::Ddl
            } else {
                Risk::Write
            },
            objects: c.written.iter().map(|r| r.qualified()).collect(),
            statement: c.statement.clone(),
        }
    }

    /// A ready-to-run `SELECT agent_guard.request_access(...)`.
    pub fn call(&self) -> String {
        let mut args = vec![quote_literal(self.risk.as_str())];
        if !self.objects.is_empty() {
            let objects: Vec<String> = self.objects.iter().map(|o| quote_literal(o)).collect();
            args.push(format!("ARRAY[{}]::regclass[]", objects.join(", ")));
        }
        args.push("reason => '...'".to_string());
        if let Some(s) = self
            .statement
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if s.len() <= MAX_HINT_STATEMENT {
                args.push(format!("statement => {}", dollar_quote(s)));
            }
        }
        format!("SELECT agent_guard.request_access({});", args.join(", "))
    }

    /// The HINT of a refusal.
    pub fn hint(&self) -> String {
        format!(
            "Writes and schema changes by agents need a just-in-time grant approved by a member of agent_guard_approver. To request one, run: {}",
            self.call()
        )
    }
}

/// Quote `text` with dollar quotes whose tag does not occur in it.
pub fn dollar_quote(text: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = if n == 0 {
            "q".to_string()
        } else {
            format!("q{n}")
        };
        // "$tag" absent from the text means neither "$tag$" inside it nor a
        // text ending that runs into the closing delimiter.
        if !text.contains(&format!("${tag}")) {
            return format!("${tag}${text}${tag}$");
        }
        n += 1;
    }
}

/// One token of PostgreSQL's lexer, as the fingerprint sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The lexer's token code (a character for single-character tokens).
    pub code: i32,
    /// What distinguishes tokens of the same code: the value of a literal,
    /// an identifier (case-folded by the lexer) or an operator; the exact
    /// text of any other multi-character token. `None` for keywords and
    /// punctuation, whose code says everything.
    pub value: Option<Vec<u8>>,
}

/// The bytes a statement fingerprint hashes: token codes and values, each
/// length-prefixed, without leading or trailing semicolons. Whitespace and
/// comments never reach the token stream; keywords and unquoted identifiers
/// arrive case-folded; literals arrive as values (`'a'`, `E'a'` and `$$a$$`
/// are the same string, `007` and `7` the same integer).
pub fn canonical_tokens(tokens: &[Token]) -> Vec<u8> {
    const SEMICOLON: i32 = b';' as i32;
    let start = tokens
        .iter()
        .position(|t| t.code != SEMICOLON)
        .unwrap_or(tokens.len());
    let end = tokens
        .iter()
        .rposition(|t| t.code != SEMICOLON)
        .map_or(start, |i| i + 1);
    let mut out = Vec::new();
    for t in &tokens[start..end] {
        out.extend_from_slice(t.code.to_string().as_bytes());
        match &t.value {
            None => out.push(b';'),
            Some(v) => {
                out.push(b':');
                out.extend_from_slice(v.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(v);
                out.push(b';');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::facts::{Facts, Operation, PlanFacts, Relation, UtilityFacts};

    fn orders() -> Relation {
        Relation::new(100, "public", "orders")
    }
    fn log() -> Relation {
        Relation::new(200, "public", "t_log")
    }

    fn write(rels: Vec<Relation>) -> Classification {
        let mut p = PlanFacts {
            operation: Operation::Delete,
            ..PlanFacts::select()
        };
        p.written = rels;
        classify(&Facts::Plan(p))
    }

    fn ddl(node: &str, command: &str, rels: Vec<Relation>, objects: Vec<&str>) -> Classification {
        classify(&Facts::Utility(UtilityFacts {
            node: node.into(),
            command: command.into(),
            relations: rels,
            objects: objects.into_iter().map(String::from).collect(),
            ..Default::default()
        }))
    }

    fn grant(id: i64, risk: Risk, objects: Option<Vec<u32>>) -> Grant {
        Grant {
            id,
            risk,
            object_names: objects
                .iter()
                .flatten()
                .map(|o| format!("rel{o}"))
                .collect(),
            objects,
            created: vec![],
            fingerprint: None,
            max_statements: None,
            uses: 0,
        }
    }

    fn need(c: &Classification) -> Need<'_> {
        Need {
            statement: c,
            fingerprint: None,
            used_by_statement: &[],
        }
    }

    #[test]
    fn only_write_and_ddl_are_grantable() {
        assert!(check_grantable(Risk::Write).is_ok());
        assert!(check_grantable(Risk::Ddl).is_ok());
        assert!(check_grantable(Risk::Privilege)
            .unwrap_err()
            .contains("never granted"));
        assert!(check_grantable(Risk::Admin)
            .unwrap_err()
            .contains("never granted"));
        assert!(check_grantable(Risk::Read)
            .unwrap_err()
            .contains("need no grant"));
    }

    #[test]
    fn distinct_sponsor_rule() {
        assert!(!DistinctSponsor::Off.applies(Risk::Ddl));
        assert!(!DistinctSponsor::Ddl.applies(Risk::Write));
        assert!(DistinctSponsor::Ddl.applies(Risk::Ddl));
        assert!(DistinctSponsor::Always.applies(Risk::Write));
    }

    #[test]
    fn a_write_grant_covers_writes_but_never_ddl() {
        let g = grant(1, Risk::Write, None);
        assert_eq!(coverage(&g, &need(&write(vec![orders()]))), Ok(()));
        let alter = ddl(
            "AlterTableStmt",
            "ALTER TABLE",
            vec![orders()],
            vec!["public.orders"],
        );
        assert_eq!(coverage(&g, &need(&alter)), Err(Miss::Risk { grant: 1 }));
        let create = ddl("CreateStmt", "CREATE TABLE", vec![], vec!["x"]);
        assert_eq!(coverage(&g, &need(&create)), Err(Miss::Risk { grant: 1 }));
    }

    #[test]
    fn a_ddl_grant_covers_ddl_and_writes() {
        let g = grant(2, Risk::Ddl, None);
        assert_eq!(coverage(&g, &need(&write(vec![orders()]))), Ok(()));
        let alter = ddl(
            "AlterTableStmt",
            "ALTER TABLE",
            vec![orders()],
            vec!["public.orders"],
        );
        assert_eq!(coverage(&g, &need(&alter)), Ok(()));
    }

    #[test]
    fn objects_limit_what_is_covered_and_name_what_is_missing() {
        let g = grant(3, Risk::Write, Some(vec![100]));
        assert_eq!(coverage(&g, &need(&write(vec![orders()]))), Ok(()));
        match coverage(&g, &need(&write(vec![orders(), log()]))) {
            Err(m @ Miss::Objects { .. }) => {
                assert_eq!(
                    m,
                    Miss::Objects {
                        grant: 3,
                        missing: vec!["public.t_log".into()],
                        covered: vec!["rel100".into()]
                    }
                );
                assert!(
                    m.describe().contains("does not cover public.t_log"),
                    "{}",
                    m.describe()
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relations_created_under_a_ddl_grant_become_covered() {
        let mut g = grant(4, Risk::Ddl, Some(vec![100]));
        let create = ddl("CreateStmt", "CREATE TABLE", vec![], vec!["public.new_t"]);
        assert_eq!(
            coverage(&g, &need(&create)),
            Ok(()),
            "creating a relation is what a ddl grant is for"
        );
        let new_t = Relation::new(300, "public", "new_t");
        assert!(matches!(
            coverage(&g, &need(&write(vec![new_t.clone()]))),
            Err(Miss::Objects { .. })
        ));
        g.created.push(300);
        assert_eq!(coverage(&g, &need(&write(vec![new_t.clone()]))), Ok(()));
        let drop = ddl("DropStmt", "DROP TABLE", vec![new_t], vec!["public.new_t"]);
        assert_eq!(coverage(&g, &need(&drop)), Ok(()));
    }

    #[test]
    fn limited_ddl_grants_do_not_cover_other_kinds_of_objects() {
        let g = grant(5, Risk::Ddl, Some(vec![100]));
        let drop_fn = ddl("DropStmt", "DROP FUNCTION", vec![], vec!["public.f"]);
        assert_eq!(
            coverage(&g, &need(&drop_fn)),
            Err(Miss::NotARelation {
                grant: 5,
                command: "DROP FUNCTION".into()
            })
        );
        let create_fn = ddl("CreateFunctionStmt", "CREATE FUNCTION", vec![], vec![]);
        assert_eq!(
            coverage(&g, &need(&create_fn)),
            Err(Miss::NotARelation {
                grant: 5,
                command: "CREATE FUNCTION".into()
            })
        );
        let unlimited = grant(6, Risk::Ddl, None);
        assert_eq!(coverage(&unlimited, &need(&drop_fn)), Ok(()));
        assert_eq!(coverage(&unlimited, &need(&create_fn)), Ok(()));
    }

    #[test]
    fn single_statement_grants_need_the_same_fingerprint_once() {
        let mut g = grant(7, Risk::Write, Some(vec![100]));
        g.fingerprint = Some("abc".into());
        g.max_statements = Some(1);
        let c = write(vec![orders()]);
        let same = Need {
            statement: &c,
            fingerprint: Some("abc"),
            used_by_statement: &[],
        };
        let other = Need {
            statement: &c,
            fingerprint: Some("abd"),
            used_by_statement: &[],
        };
        let unknown = Need {
            statement: &c,
            fingerprint: None,
            used_by_statement: &[],
        };
        assert_eq!(coverage(&g, &same), Ok(()));
        assert_eq!(coverage(&g, &other), Err(Miss::Statement { grant: 7 }));
        assert_eq!(coverage(&g, &unknown), Err(Miss::Statement { grant: 7 }));
        g.uses = 1;
        assert_eq!(coverage(&g, &same), Err(Miss::UsedUp { grant: 7, max: 1 }));
    }

    #[test]
    fn nested_statements_reuse_the_grant_of_their_top_level_statement() {
        let mut g = grant(8, Risk::Write, Some(vec![100, 200]));
        g.fingerprint = Some("top".into());
        g.max_statements = Some(1);
        g.uses = 1; // the top-level statement used it
        let trigger_write = write(vec![log()]);
        let nested = Need {
            statement: &trigger_write,
            fingerprint: Some("other"),
            used_by_statement: &[8],
        };
        assert_eq!(coverage(&g, &nested), Ok(()));
        // but its objects still must be covered
        g.objects = Some(vec![100]);
        assert!(matches!(coverage(&g, &nested), Err(Miss::Objects { .. })));
    }

    #[test]
    fn covering_prefers_grants_in_use_then_single_statement_grants() {
        let broad = grant(1, Risk::Write, None);
        let mut single = grant(2, Risk::Write, None);
        single.fingerprint = Some("fp".into());
        let in_use = grant(3, Risk::Ddl, None);
        let narrow = grant(4, Risk::Write, Some(vec![999]));
        let grants = vec![broad, single, in_use, narrow];
        let c = write(vec![orders()]);
        let n = Need {
            statement: &c,
            fingerprint: Some("fp"),
            used_by_statement: &[3],
        };
        let (ok, misses) = covering(&grants, &n);
        assert_eq!(ok.iter().map(|g| g.id).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(misses.len(), 1);
        assert!(needs_fingerprint(&grants, &[3]));
        assert!(!needs_fingerprint(&grants[..1], &[]));
    }

    #[test]
    fn hints_carry_a_ready_to_run_request() {
        let mut c = write(vec![orders()]);
        c.statement = Some("DELETE FROM orders WHERE amount < 10".into());
        let s = Suggestion::for_statement(&c);
        assert_eq!(
            s.call(),
            "SELECT agent_guard.request_access('write', ARRAY['public.orders']::regclass[], reason => '...', statement => $q$DELETE FROM orders WHERE amount < 10$q$);"
        );
        assert!(s.hint().contains("agent_guard_approver"));
        let create = ddl("CreateStmt", "CREATE TABLE", vec![], vec!["x"]);
        assert_eq!(
            Suggestion::for_statement(&create).call(),
            "SELECT agent_guard.request_access('ddl', reason => '...');"
        );
        let mut quoted = write(vec![Relation::new(1, "public", "it's")]);
        quoted.statement = Some(" ".into());
        assert_eq!(
            Suggestion::for_statement(&quoted).call(),
            "SELECT agent_guard.request_access('write', ARRAY['public.\"it''s\"']::regclass[], reason => '...');"
        );
        let mut huge = write(vec![orders()]);
        huge.statement = Some("x".repeat(MAX_HINT_STATEMENT + 1));
        assert!(!Suggestion::for_statement(&huge)
            .call()
            .contains("statement =>"));
    }

    #[test]
    fn policy_puts_the_reasons_in_the_detail_and_the_suggestion_in_the_hint() {
        use crate::policy::{
            decide, Actor, GrantSource, GrantUse, NotCovered, SessionState, SponsorStatus,
        };
        struct Near;
        impl GrantSource for Near {
            fn covering(&self, _: &Actor, _: &Classification) -> Option<GrantUse> {
                None
            }
            fn lookup(&self, _: &Actor, _: &Classification) -> Result<GrantUse, NotCovered> {
                Err(NotCovered {
                    why: vec![
                        "Grant 3 does not cover public.t_log (it covers public.orders).".into(),
                    ],
                    suggestion: Some(Suggestion {
                        risk: Risk::Write,
                        objects: vec!["public.orders".into(), "public.t_log".into()],
                        statement: Some("INSERT INTO orders VALUES (1)".into()),
                    }),
                })
            }
        }
        let actor = Actor {
            agent: "bot".into(),
            login: "bot".into(),
            sponsor: "alice".into(),
            sponsor_status: SponsorStatus::Active,
            unverified: None,
        };
        let session = SessionState {
            guard_installed: true,
            database: "db".into(),
            ..Default::default()
        };
        match decide(Some(&actor), &session, &write(vec![log()]), &Near) {
            crate::policy::Decision::Deny(r) => {
                assert_eq!(r.code, "no_grant");
                assert!(r.message.contains("public.t_log"), "{}", r.message);
                assert!(
                    r.detail.ends_with(
                        "Grant 3 does not cover public.t_log (it covers public.orders)."
                    ),
                    "{}",
                    r.detail
                );
                assert!(
                    r.hint.ends_with("run: SELECT agent_guard.request_access('write', ARRAY['public.orders', 'public.t_log']::regclass[], reason => '...', statement => $q$INSERT INTO orders VALUES (1)$q$);"),
                    "{}",
                    r.hint
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn dollar_quotes_never_collide_with_the_text() {
        assert_eq!(dollar_quote("a"), "$q$a$q$");
        assert_eq!(dollar_quote("a $q$ b"), "$q1$a $q$ b$q1$");
        assert_eq!(dollar_quote("ends with $q"), "$q1$ends with $q$q1$");
        assert_eq!(dollar_quote("$q $q1"), "$q2$$q $q1$q2$");
        // a text ending in "$" is fine: "$$q$" holds "$q$" only at the end
        assert_eq!(dollar_quote("cost$"), "$q$cost$$q$");
    }

    fn tok(code: i32, value: Option<&str>) -> Token {
        Token {
            code,
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn canonical_tokens_ignore_surrounding_semicolons_but_not_values() {
        let a = vec![
            tok(300, None),
            tok(258, Some("orders")),
            tok(b';' as i32, None),
        ];
        let b = vec![
            tok(b';' as i32, None),
            tok(300, None),
            tok(258, Some("orders")),
        ];
        assert_eq!(canonical_tokens(&a), canonical_tokens(&b));
        let c = vec![tok(300, None), tok(258, Some("order"))];
        assert_ne!(canonical_tokens(&a), canonical_tokens(&c));
        // length prefixes keep values from running into each other
        let d = vec![tok(261, Some("ab")), tok(261, Some("c"))];
        let e = vec![tok(261, Some("a")), tok(261, Some("bc"))];
        assert_ne!(canonical_tokens(&d), canonical_tokens(&e));
        assert_ne!(
            canonical_tokens(&[tok(61, None)]),
            canonical_tokens(&[tok(60, None)])
        );
    }
}
