//! Masking, as plain Rust: the grammar of masking labels, the rules a mask
//! expression must follow, the mask algorithms behind agent_guard's SQL mask
//! functions, and the name and content tests of sensitive-data discovery.
//!
//! The extension parses a mask expression with PostgreSQL's own raw parser
//! and hands this module a simplified tree ([`Expr`]); nothing here looks at
//! SQL text beyond splitting off the label's leading keywords.

use crate::quote_ident;
use crate::quote_literal;
use crate::redact::{looks_like_card_number, looks_like_email, looks_like_ssn};

/// What a masking label asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaskRule {
    /// `SENSITIVE`: the default mask of the column's type.
    Default,
    /// `MASKED WITH FUNCTION <expression>`: the expression's text.
    Function(String),
    /// `MASKED WITH VALUE <constant>` (or `NULL`): the constant's text.
    Value(String),
}

/// The message for a label that is not one of the accepted forms.
pub fn label_error(label: &str) -> String {
    format!(
        "\"{label}\" is not a valid agent_guard column label; accepted: 'SENSITIVE', \
         'MASKED WITH FUNCTION schema.function(column, ...)', 'MASKED WITH VALUE NULL' \
         or 'MASKED WITH VALUE <constant>'"
    )
}

/// Split off `n` leading whitespace-separated words; the rest keeps its text.
fn leading_words(s: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut words = vec![];
    let mut rest = s.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace)?;
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    Some((words, rest.trim_end()))
}

/// Parse a column label into a masking rule. The expression of a FUNCTION or
/// VALUE rule is validated separately, from PostgreSQL's parse tree.
pub fn parse_rule(label: &str) -> Result<MaskRule, String> {
    let trimmed = label.trim();
    if trimmed.eq_ignore_ascii_case("sensitive") {
        return Ok(MaskRule::Default);
    }
    if let Some((words, rest)) = leading_words(trimmed, 3) {
        let is = |i: usize, w: &str| words[i].eq_ignore_ascii_case(w);
        if is(0, "masked") && is(1, "with") && !rest.is_empty() {
            if is(2, "function") {
                return Ok(MaskRule::Function(rest.to_string()));
            }
            if is(2, "value") {
                return Ok(MaskRule::Value(rest.to_string()));
            }
        }
    }
    Err(label_error(label))
}

/// A mask expression as PostgreSQL's raw parser sees it, simplified to what
/// the rules below need. The extension builds it from the raw parse tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// A function call; `plain` is false for aggregates, window calls,
    /// `VARIADIC`, `*`, named arguments, `DISTINCT`, `ORDER BY` or `FILTER`.
    Call {
        schema: Option<String>,
        name: String,
        args: Vec<Expr>,
        plain: bool,
    },
    /// A column reference, by its name parts.
    Column(Vec<String>),
    /// A literal (number, string, bit string, boolean).
    Const,
    /// The `NULL` literal.
    Null,
    /// `expr::type`, with the type's schema as PostgreSQL resolved it.
    Cast {
        arg: Box<Expr>,
        type_schema: String,
        type_name: String,
    },
    /// Anything else (operators, subqueries, CASE, parameters, ...): never allowed.
    Other(String),
}

/// agent_guard's own mask functions (schema `agent_guard`).
pub const GUARD_MASK_FUNCTIONS: &[&str] = &[
    "redact",
    "partial",
    "email",
    "card_number",
    "hash",
    "generalize_date",
    "bucket",
];

/// pg_catalog functions a mask may use: pure functions of their arguments
/// that neither read tables nor reach outside the database.
pub const CATALOG_MASK_FUNCTIONS: &[&str] = &[
    "left",
    "right",
    "substr",
    "substring",
    "upper",
    "lower",
    "initcap",
    "length",
    "char_length",
    "lpad",
    "rpad",
    "repeat",
    "replace",
    "translate",
    "overlay",
    "btrim",
    "ltrim",
    "rtrim",
    "split_part",
    "concat",
    "concat_ws",
    "textcat",
    "regexp_replace",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "date_trunc",
    "date_part",
    "extract",
    "make_date",
    "round",
    "trunc",
    "floor",
    "ceil",
    "ceiling",
    "abs",
    "to_char",
];

/// Whether `schema.name` may be called by a mask.
pub fn trusted_function(schema: &str, name: &str) -> bool {
    match schema {
        crate::GUARD_SCHEMA => GUARD_MASK_FUNCTIONS.contains(&name),
        "pg_catalog" => CATALOG_MASK_FUNCTIONS.contains(&name),
        _ => false,
    }
}

fn trusted_list() -> String {
    "agent_guard's mask functions (agent_guard.redact, partial, email, card_number, hash, \
     generalize_date, bucket) and selected pg_catalog functions"
        .to_string()
}

fn check(e: &Expr, column: Option<&str>) -> Result<(), String> {
    match e {
        Expr::Call {
            schema,
            name,
            args,
            plain,
        } => {
            let Some(schema) = schema else {
                return Err(format!(
                    "function {name}() in a mask must be schema-qualified (e.g. agent_guard.partial, pg_catalog.left)"
                ));
            };
            if !trusted_function(schema, name) {
                return Err(format!(
                    "function {}.{}() is not a trusted mask function; allowed: {}",
                    quote_ident(schema),
                    quote_ident(name),
                    trusted_list()
                ));
            }
            if !plain {
                return Err(format!(
                    "{schema}.{name}() must be a plain call in a mask (no aggregate, window, VARIADIC, named or * arguments)"
                ));
            }
            args.iter().try_for_each(|a| check(a, column))
        }
        Expr::Column(parts) => {
            if parts.len() == 1 && column.is_none_or(|c| parts[0] == c) {
                Ok(())
            } else {
                Err(format!(
                    "a mask may refer only to the masked column itself ({}), not to {}",
                    quote_ident(column.unwrap_or("?")),
                    parts
                        .iter()
                        .map(|p| quote_ident(p))
                        .collect::<Vec<_>>()
                        .join(".")
                ))
            }
        }
        Expr::Const | Expr::Null => Ok(()),
        Expr::Cast {
            arg,
            type_schema,
            type_name,
        } => {
            builtin_type(type_schema, type_name)?;
            check(arg, column)
        }
        Expr::Other(kind) => Err(format!("{kind} is not allowed in a mask expression")),
    }
}

/// Masks may cast only to built-in types.
fn builtin_type(type_schema: &str, type_name: &str) -> Result<(), String> {
    if type_schema == "pg_catalog" {
        Ok(())
    } else {
        Err(format!(
            "a mask may cast only to built-in types, not to {}.{}",
            quote_ident(type_schema),
            quote_ident(type_name)
        ))
    }
}

/// Validate the expression of `MASKED WITH FUNCTION`: a schema-qualified call
/// of a trusted function whose arguments are constants, casts of constants,
/// the masked column itself, or further trusted calls. `column`: the column's
/// name when the label is written; `None` later, when a rename may have made
/// the label's text stale (a column reference always means the masked column).
pub fn validate_function(e: &Expr, column: Option<&str>) -> Result<(), String> {
    if !matches!(e, Expr::Call { .. }) {
        return Err(
            "MASKED WITH FUNCTION needs a function call, e.g. agent_guard.partial(col, 0, '***', 4)"
                .into(),
        );
    }
    check(e, column)
}

/// Validate the expression of `MASKED WITH VALUE`: NULL or a constant,
/// possibly cast to a built-in type.
pub fn validate_value(e: &Expr) -> Result<(), String> {
    match e {
        Expr::Const | Expr::Null => Ok(()),
        Expr::Cast {
            arg,
            type_schema,
            type_name,
        } => {
            builtin_type(type_schema, type_name)?;
            validate_value(arg)
        }
        Expr::Call { .. } | Expr::Column(_) => Err(
            "MASKED WITH VALUE takes NULL or a constant; use MASKED WITH FUNCTION for expressions"
                .into(),
        ),
        Expr::Other(kind) => Err(format!("{kind} is not allowed in a mask expression")),
    }
}

/// The mask a `SENSITIVE` column gets, from its type category
/// (`pg_type.typcategory`) and type name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultMask {
    /// `agent_guard.redact(col)`: every letter and digit replaced by `*`.
    Redact,
    /// Zero of the column's type.
    Zero,
    /// `agent_guard.generalize_date(col, 'year')`.
    Year,
    /// NULL of the column's type.
    Null,
}

/// The default mask for a column of the given type.
pub fn default_mask(category: char, type_name: &str) -> DefaultMask {
    match category {
        'S' => DefaultMask::Redact,
        'N' if !type_name.starts_with("reg") && type_name != "oid" => DefaultMask::Zero,
        'D' if matches!(
            type_name,
            "date" | "timestamp without time zone" | "timestamp with time zone"
        ) =>
        {
            DefaultMask::Year
        }
        _ => DefaultMask::Null,
    }
}

// ---- the mask algorithms -----------------------------------------------------

// Each mask writes into a [`Sink`]: a `String`, or (in the extension) the
// palloc'd result text itself, so a row costs no allocation of its own.

/// Where a mask writes its output.
pub trait Sink {
    fn push_str(&mut self, s: &str);
    fn push(&mut self, c: char) {
        let mut b = [0u8; 4];
        self.push_str(c.encode_utf8(&mut b));
    }
    /// One ASCII byte (callers never pass anything else).
    fn push_ascii(&mut self, b: u8) {
        self.push(b as char)
    }
    /// `n` times the ASCII byte `b`.
    fn push_repeat(&mut self, b: u8, n: usize) {
        for _ in 0..n {
            self.push_ascii(b);
        }
    }
}

impl Sink for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s)
    }
    fn push(&mut self, c: char) {
        String::push(self, c)
    }
}

/// How many bytes a mask's output can take at most, for a value of
/// `len` bytes (and `padding` bytes of padding for [`partial_into`]).
#[inline]
pub fn max_output(len: usize, padding: usize) -> usize {
    len + padding.max(4)
}

/// Every letter and digit becomes `*`; separators stay, so the shape shows.
pub fn redact_into(value: &str, out: &mut impl Sink) {
    if value.is_ascii() {
        for &b in value.as_bytes() {
            out.push_ascii(if b.is_ascii_alphanumeric() { b'*' } else { b });
        }
    } else {
        for c in value.chars() {
            out.push(if c.is_alphanumeric() { '*' } else { c });
        }
    }
}

/// See [`redact_into`].
pub fn redact(value: &str) -> String {
    let mut out = String::new();
    redact_into(value, &mut out);
    out
}

/// Byte offset of the `n`-th character of `value` (its length when `n` is past the end).
fn char_offset(value: &str, ascii: bool, n: usize) -> usize {
    if ascii {
        return n.min(value.len());
    }
    value.char_indices().nth(n).map_or(value.len(), |(i, _)| i)
}

/// The first `prefix` and last `suffix` characters, `padding` in between. A
/// value too short to hide anything between them becomes just `padding`.
pub fn partial_into(value: &str, prefix: i32, padding: &str, suffix: i32, out: &mut impl Sink) {
    let ascii = value.is_ascii();
    let len = if ascii {
        value.len()
    } else {
        value.chars().count()
    };
    let prefix = prefix.max(0) as usize;
    let suffix = suffix.max(0) as usize;
    if prefix.saturating_add(suffix) >= len {
        out.push_str(padding);
        return;
    }
    out.push_str(&value[..char_offset(value, ascii, prefix)]);
    out.push_str(padding);
    out.push_str(&value[char_offset(value, ascii, len - suffix)..]);
}

/// See [`partial_into`].
pub fn partial(value: &str, prefix: i32, padding: &str, suffix: i32) -> String {
    let mut out = String::new();
    partial_into(value, prefix, padding, suffix, &mut out);
    out
}

/// `***@domain`: the mailbox hidden, the domain kept.
pub fn email_into(value: &str, out: &mut impl Sink) {
    match value.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => {
            out.push_str("***@");
            out.push_str(domain);
        }
        _ => redact_into(value, out),
    }
}

/// See [`email_into`].
pub fn email(value: &str) -> String {
    let mut out = String::new();
    email_into(value, &mut out);
    out
}

/// A card number with every digit but the last four replaced by `*`; length
/// and separators are kept, so the value still looks like a card number.
pub fn card_number_into(value: &str, out: &mut impl Sink) {
    let b = value.as_bytes();
    // (a plain loop: short values are counted faster without vector code)
    let all_digits = b.iter().all(u8::is_ascii_digit);
    let digits = if all_digits {
        b.len()
    } else {
        b.iter().fold(0, |n, c| n + c.is_ascii_digit() as usize)
    };
    if digits < 8 {
        return redact_into(value, out);
    }
    if all_digits {
        // digits only, the usual case: stars, then the last four
        out.push_repeat(b'*', digits - 4);
        out.push_str(&value[digits - 4..]);
        return;
    }
    if value.is_ascii() {
        let mut hidden = digits - 4;
        for &c in b {
            out.push_ascii(if c.is_ascii_digit() {
                if hidden > 0 {
                    hidden -= 1;
                    b'*'
                } else {
                    c
                }
            } else if c.is_ascii_alphanumeric() {
                b'*'
            } else {
                c
            });
        }
        return;
    }
    // the byte where the last four digits begin
    let mut seen = 0;
    let mut keep_from = b.len();
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            seen += 1;
            if seen == digits - 3 {
                keep_from = i;
                break;
            }
        }
    }
    redact_into(&value[..keep_from], out);
    out.push_str(&value[keep_from..]);
}

/// See [`card_number_into`].
pub fn card_number(value: &str) -> String {
    let mut out = String::new();
    card_number_into(value, &mut out);
    out
}

/// HMAC-SHA-256 of `value` under `key`, as 32 hex digits (128 bits):
/// deterministic, so equal values stay equal (joins, GROUP BY), but not
/// computable without the key.
pub fn keyed_hash(key: &[u8], value: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(value);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mac = outer.finalize();
    mac[..16].iter().map(|b| format!("{b:02x}")).collect()
}

// ---- discovery -------------------------------------------------------------------

/// What kind of regulated data a column seems to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ssn,
    Card,
    Email,
    Phone,
    Iban,
    Birth,
    Passport,
    TaxId,
    Salary,
    NationalId,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Ssn => "a social security number",
            Kind::Card => "a payment card number",
            Kind::Email => "an e-mail address",
            Kind::Phone => "a phone number",
            Kind::Iban => "a bank account (IBAN)",
            Kind::Birth => "a date of birth",
            Kind::Passport => "a passport number",
            Kind::TaxId => "a tax id",
            Kind::Salary => "a salary",
            Kind::NationalId => "a national id or licence number",
        }
    }
}

/// The words of an identifier: split at non-alphanumerics and lower/upper case changes.
fn name_tokens(name: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether a column name suggests regulated data.
pub fn kind_by_name(column: &str) -> Option<Kind> {
    let t = name_tokens(column);
    let joined = t.join("_");
    let has = |w: &str| t.iter().any(|x| x == w);
    let starts = |w: &str| t.iter().any(|x| x.starts_with(w));
    let phrase = |p: &str| joined.contains(p);
    if has("ssn") || phrase("social_security") || phrase("socialsecurity") {
        Some(Kind::Ssn)
    } else if has("card")
        || has("pan")
        || has("cc")
        || has("ccn")
        || t.iter().any(|x| {
            x.starts_with("creditcard")
                || x == "cardnumber"
                || x == "cardnum"
                || x == "cardno"
                || x == "ccnumber"
        })
        || phrase("credit_card")
    {
        Some(Kind::Card)
    } else if has("iban") {
        Some(Kind::Iban)
    } else if starts("email") || has("mail") || phrase("e_mail") {
        Some(Kind::Email)
    } else if starts("phone") || has("mobile") || has("tel") || has("msisdn") {
        Some(Kind::Phone)
    } else if has("dob") || starts("birth") || phrase("date_of_birth") {
        Some(Kind::Birth)
    } else if starts("passport") {
        Some(Kind::Passport)
    } else if phrase("tax_id") || has("taxid") || has("tin") || has("vat") {
        Some(Kind::TaxId)
    } else if starts("salar") || has("wage") || has("wages") || has("income") {
        Some(Kind::Salary)
    } else if phrase("national_id") || starts("licen") {
        Some(Kind::NationalId)
    } else {
        None
    }
}

/// A phone number: an optional leading `+`, digits with spaces, dashes, dots
/// or parentheses, 10 to 15 digits, written with a `+` or some separator
/// (a bare run of digits is more likely an id).
pub fn looks_like_phone(v: &str) -> bool {
    let v = v.trim();
    let body = v.strip_prefix('+').unwrap_or(v);
    if body.is_empty()
        || !body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
    {
        return false;
    }
    let digits = body.chars().filter(char::is_ascii_digit).count();
    let separated = v.starts_with('+') || body.chars().any(|c| !c.is_ascii_digit());
    (10..=15).contains(&digits) && separated && !looks_like_card_number(v)
}

/// What kind of regulated data one value looks like.
pub fn kind_by_value(v: &str) -> Option<Kind> {
    if looks_like_card_number(v) {
        Some(Kind::Card)
    } else if looks_like_ssn(v) {
        Some(Kind::Ssn)
    } else if looks_like_email(v) {
        Some(Kind::Email)
    } else if looks_like_phone(v) {
        Some(Kind::Phone)
    } else {
        None
    }
}

/// The kind most sampled values look like, when at least half of the
/// non-null sample does: `(kind, matching, sampled)`.
pub fn kind_by_content<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Option<(Kind, usize, usize)> {
    let mut counts: Vec<(Kind, usize)> = vec![];
    let mut n = 0;
    for v in values {
        n += 1;
        if let Some(k) = kind_by_value(v) {
            match counts.iter_mut().find(|(kk, _)| *kk == k) {
                Some((_, c)) => *c += 1,
                None => counts.push((k, 1)),
            }
        }
    }
    let (kind, c) = counts.into_iter().max_by_key(|(_, c)| *c)?;
    (c * 2 >= n && c > 0).then_some((kind, c, n))
}

/// The label agent_guard suggests for a column of `kind` whose type has the
/// given category (`pg_type.typcategory`).
pub fn suggested_label(kind: Kind, column: &str, category: char) -> String {
    let col = quote_ident(column);
    let text = category == 'S';
    match kind {
        Kind::Ssn if text => {
            format!("MASKED WITH FUNCTION agent_guard.partial({col}, 0, '***-**-', 4)")
        }
        Kind::Card if text => format!("MASKED WITH FUNCTION agent_guard.card_number({col})"),
        Kind::Email if text => format!("MASKED WITH FUNCTION agent_guard.email({col})"),
        Kind::Phone if text => {
            format!("MASKED WITH FUNCTION agent_guard.partial({col}, 0, '***-***-', 4)")
        }
        Kind::Birth if category == 'D' => {
            format!("MASKED WITH FUNCTION agent_guard.generalize_date({col}, 'year')")
        }
        Kind::Salary if category == 'N' => {
            format!("MASKED WITH FUNCTION agent_guard.bucket({col}, 10000)")
        }
        _ => "SENSITIVE".to_string(),
    }
}

/// A ready-to-run `SECURITY LABEL` statement.
pub fn label_statement(schema: &str, table: &str, column: &str, label: &str) -> String {
    format!(
        "SECURITY LABEL FOR agent_guard ON COLUMN {}.{}.{} IS {};",
        quote_ident(schema),
        quote_ident(table),
        quote_ident(column),
        quote_literal(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(schema: Option<&str>, name: &str, args: Vec<Expr>) -> Expr {
        Expr::Call {
            schema: schema.map(str::to_string),
            name: name.into(),
            args,
            plain: true,
        }
    }
    fn col(n: &str) -> Expr {
        Expr::Column(vec![n.into()])
    }

    #[test]
    fn label_forms() {
        assert_eq!(parse_rule("SENSITIVE"), Ok(MaskRule::Default));
        assert_eq!(parse_rule(" sensitive "), Ok(MaskRule::Default));
        assert_eq!(
            parse_rule("MASKED WITH FUNCTION agent_guard.partial(c, 0, '***-**-', 4)"),
            Ok(MaskRule::Function(
                "agent_guard.partial(c, 0, '***-**-', 4)".into()
            ))
        );
        assert_eq!(
            parse_rule("masked  with\nvalue NULL"),
            Ok(MaskRule::Value("NULL".into()))
        );
        assert_eq!(
            parse_rule("MASKED WITH VALUE 'n/a'"),
            Ok(MaskRule::Value("'n/a'".into()))
        );
        for bad in [
            "",
            "SECRET",
            "SENSITIVE please",
            "MASKED WITH FUNCTION",
            "MASKED WITH",
            "MASKED BY FUNCTION f(c)",
            "MASKED WITH SOMETHING x",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trusted_calls_of_the_column_and_constants_are_accepted() {
        let e = call(
            Some("agent_guard"),
            "partial",
            vec![col("ssn"), Expr::Const, Expr::Const, Expr::Const],
        );
        assert_eq!(validate_function(&e, Some("ssn")), Ok(()));
        let nested = call(
            Some("pg_catalog"),
            "upper",
            vec![call(Some("agent_guard"), "email", vec![col("mail")])],
        );
        assert_eq!(validate_function(&nested, Some("mail")), Ok(()));
        let cast = call(
            Some("agent_guard"),
            "bucket",
            vec![
                col("salary"),
                Expr::Cast {
                    arg: Box::new(Expr::Const),
                    type_schema: "pg_catalog".into(),
                    type_name: "numeric".into(),
                },
            ],
        );
        assert_eq!(validate_function(&cast, Some("salary")), Ok(()));
    }

    #[test]
    fn untrusted_unqualified_and_subqueries_are_rejected() {
        let untrusted = call(Some("public"), "leak", vec![col("ssn")]);
        assert!(validate_function(&untrusted, Some("ssn"))
            .unwrap_err()
            .contains("not a trusted mask function"));
        let guard_but_not_a_mask = call(Some("agent_guard"), "approve", vec![Expr::Const]);
        assert!(validate_function(&guard_but_not_a_mask, Some("ssn")).is_err());
        let unqualified = call(None, "partial", vec![col("ssn")]);
        assert!(validate_function(&unqualified, Some("ssn"))
            .unwrap_err()
            .contains("schema-qualified"));
        let subquery = call(
            Some("agent_guard"),
            "redact",
            vec![Expr::Other("a subquery".into())],
        );
        assert_eq!(
            validate_function(&subquery, Some("ssn")),
            Err("a subquery is not allowed in a mask expression".into())
        );
        let other_column = call(Some("agent_guard"), "redact", vec![col("name")]);
        assert!(validate_function(&other_column, Some("ssn")).is_err());
        let qualified_column = call(
            Some("agent_guard"),
            "redact",
            vec![Expr::Column(vec!["t".into(), "ssn".into()])],
        );
        assert!(validate_function(&qualified_column, Some("ssn")).is_err());
        let not_plain = Expr::Call {
            schema: Some("pg_catalog".into()),
            name: "upper".into(),
            args: vec![col("ssn")],
            plain: false,
        };
        assert!(validate_function(&not_plain, Some("ssn")).is_err());
        let user_type = call(
            Some("agent_guard"),
            "redact",
            vec![Expr::Cast {
                arg: Box::new(Expr::Const),
                type_schema: "public".into(),
                type_name: "evil".into(),
            }],
        );
        assert!(validate_function(&user_type, Some("ssn")).is_err());
        assert!(
            validate_function(&col("ssn"), Some("ssn")).is_err(),
            "not a call"
        );
    }

    #[test]
    fn values_are_constants() {
        assert_eq!(validate_value(&Expr::Null), Ok(()));
        assert_eq!(validate_value(&Expr::Const), Ok(()));
        assert!(validate_value(&col("ssn")).is_err());
        assert!(validate_value(&call(Some("agent_guard"), "redact", vec![])).is_err());
        assert!(validate_value(&Expr::Other("an operator".into())).is_err());
    }

    #[test]
    fn default_masks_by_type() {
        assert_eq!(default_mask('S', "text"), DefaultMask::Redact);
        assert_eq!(default_mask('N', "integer"), DefaultMask::Zero);
        assert_eq!(default_mask('N', "regclass"), DefaultMask::Null);
        assert_eq!(default_mask('D', "date"), DefaultMask::Year);
        assert_eq!(default_mask('D', "interval"), DefaultMask::Null);
        assert_eq!(default_mask('U', "uuid"), DefaultMask::Null);
    }

    #[test]
    fn mask_algorithms() {
        assert_eq!(redact("214-13-5506"), "***-**-****");
        assert_eq!(redact("Zoë O'Neil"), "*** *'****");
        assert_eq!(partial("214-13-5506", 0, "***-**-", 4), "***-**-5506");
        assert_eq!(partial("Maria", 1, "***", 0), "M***");
        assert_eq!(
            partial("ab", 1, "***", 1),
            "***",
            "too short to hide anything"
        );
        assert_eq!(partial("abc", -3, "*", -1), "*");
        assert_eq!(email("maria.hoffmann@example.com"), "***@example.com");
        assert_eq!(email("not-an-email"), "***-**-*****");
        assert_eq!(card_number("4111111111111111"), "************1111");
        assert_eq!(card_number("4111 1111 1111 1111"), "**** **** **** 1111");
        assert_eq!(card_number("3782-822463-10005"), "****-******-*0005");
        assert_eq!(card_number("12"), "**");
        assert_eq!(
            card_number("4111-1111-1111-111X"),
            "****-****-***1-111*",
            "the last four digits"
        );
        assert_eq!(
            card_number("Kärtchen 4111 1111 1111 1111"),
            "******** **** **** **** 1111"
        );
        let a = keyed_hash(b"key", b"214-13-5506");
        assert_eq!(a, keyed_hash(b"key", b"214-13-5506"), "deterministic");
        assert_ne!(a, keyed_hash(b"other key", b"214-13-5506"), "keyed");
        assert_eq!(a.len(), 32);
        // RFC 4231 test case 2 (first 128 bits)
        assert_eq!(
            keyed_hash(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn names_that_look_sensitive() {
        for (name, kind) in [
            ("ssn", Kind::Ssn),
            ("customer_ssn", Kind::Ssn),
            ("social_security_number", Kind::Ssn),
            ("card_number", Kind::Card),
            ("cardNumber", Kind::Card),
            ("cc", Kind::Card),
            ("pan", Kind::Card),
            ("creditcard", Kind::Card),
            ("iban", Kind::Iban),
            ("email", Kind::Email),
            ("email_address", Kind::Email),
            ("phone", Kind::Phone),
            ("mobile", Kind::Phone),
            ("dob", Kind::Birth),
            ("birth_date", Kind::Birth),
            ("date_of_birth", Kind::Birth),
            ("passport_no", Kind::Passport),
            ("tax_id", Kind::TaxId),
            ("salary", Kind::Salary),
            ("national_id", Kind::NationalId),
        ] {
            assert_eq!(kind_by_name(name), Some(kind), "{name}");
        }
        for name in [
            "id",
            "name",
            "company",
            "cardinality",
            "discard",
            "amount",
            "created_at",
            "note",
            "ref",
        ] {
            assert_eq!(kind_by_name(name), None, "{name}");
        }
    }

    #[test]
    fn content_that_looks_sensitive() {
        assert!(looks_like_phone("+1 415 555 0100"));
        assert!(looks_like_phone("(415) 555-0100"));
        assert!(!looks_like_phone("4155550100"), "bare digits are ids");
        assert!(!looks_like_phone("2024-01-15"));
        let cards = [
            "4111111111111111",
            "5555555555554444",
            "hello",
            "4012888888881881",
        ];
        assert_eq!(kind_by_content(cards), Some((Kind::Card, 3, 4)));
        assert_eq!(kind_by_content(["a", "b", "123-45-6789"]), None);
        assert_eq!(kind_by_content(Vec::<&str>::new()), None);
    }

    #[test]
    fn suggestions_are_ready_to_run() {
        let l = suggested_label(Kind::Ssn, "ssn", 'S');
        assert_eq!(
            l,
            "MASKED WITH FUNCTION agent_guard.partial(ssn, 0, '***-**-', 4)"
        );
        assert_eq!(
            label_statement("public", "Customers", "ssn", &l),
            "SECURITY LABEL FOR agent_guard ON COLUMN public.\"Customers\".ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';"
        );
        assert_eq!(
            suggested_label(Kind::Card, "Ref No", 'S'),
            "MASKED WITH FUNCTION agent_guard.card_number(\"Ref No\")"
        );
        assert_eq!(suggested_label(Kind::Card, "pan", 'N'), "SENSITIVE");
        assert_eq!(
            suggested_label(Kind::Birth, "dob", 'D'),
            "MASKED WITH FUNCTION agent_guard.generalize_date(dob, 'year')"
        );
    }
}
