//! sqlcommenter-style request ids in statement comments.
//!
//! Text-level work only: it finds `request_id='…'` and `traceparent='…'` in
//! comments to attribute a statement; it never decides allow or deny.

/// Correlation values found in a statement's comments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Correlation {
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
}

/// Scan `sql` for comments (skipping string literals, quoted identifiers and
/// dollar quotes) and collect sqlcommenter keys.
pub fn from_comments(sql: &str) -> Correlation {
    let mut out = Correlation::default();
    for body in comments(sql) {
        for (key, value) in sqlcommenter_pairs(body) {
            match key.as_str() {
                "request_id" | "request-id" | "requestid" if out.request_id.is_none() => {
                    out.request_id = Some(value)
                }
                "traceparent" if out.traceparent.is_none() => out.traceparent = Some(value),
                _ => {}
            }
        }
    }
    out
}

/// The bodies of all `/* … */` (nesting as PostgreSQL does) and `-- …` comments.
fn comments(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => i = skip_quoted(b, i, b'\''),
            b'"' => i = skip_quoted(b, i, b'"'),
            b'$' => i = skip_dollar(sql, i),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(b.len(), |n| i + n);
                out.push(&sql[i + 2..end]);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i + 2;
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                let end = if depth == 0 { i - 2 } else { b.len() };
                out.push(&sql[start..end]);
            }
            _ => i += 1,
        }
    }
    out
}

fn skip_quoted(b: &[u8], start: usize, quote: u8) -> usize {
    let escapes = quote == b'\'' && start > 0 && matches!(b[start - 1], b'e' | b'E');
    let mut i = start + 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn skip_dollar(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count();
    if rest.as_bytes().get(tag_len) != Some(&b'$')
        || rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
    {
        return start + 1;
    }
    let tag = &sql[start..start + tag_len + 2];
    match sql[start + tag.len()..].find(tag) {
        Some(n) => start + tag.len() + n + tag.len(),
        None => sql.len(),
    }
}

/// `key='value'` pairs separated by commas; values URL-decoded.
fn sqlcommenter_pairs(body: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = body.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        // the key is the last word before '=' (free text may precede the pairs)
        let key = rest[..eq]
            .rsplit(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let after = rest[eq + 1..].trim_start();
        if !after.starts_with('\'') {
            // not a sqlcommenter pair: skip to the next comma
            match after.find(',') {
                Some(n) => rest = &after[n + 1..],
                None => break,
            }
            continue;
        }
        let Some(close) = after[1..].find('\'') else {
            break;
        };
        let value = &after[1..1 + close];
        out.push((key, url_decode(value)));
        rest = after[close + 2..].trim_start().trim_start_matches(',');
    }
    out
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_request_id_in_block_comment() {
        let c = from_comments("SELECT 1 /* request_id='ci-4711' */");
        assert_eq!(c.request_id.as_deref(), Some("ci-4711"));
    }

    #[test]
    fn finds_sqlcommenter_pairs_with_traceparent() {
        let c = from_comments(
            "SELECT * FROM t /*application='bot',request_id='r%2F1',traceparent='00-abc-def-01'*/",
        );
        assert_eq!(c.request_id.as_deref(), Some("r/1"));
        assert_eq!(c.traceparent.as_deref(), Some("00-abc-def-01"));
    }

    #[test]
    fn leading_and_line_comments_count() {
        assert_eq!(
            from_comments("/* request_id='a' */ SELECT 1")
                .request_id
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            from_comments("SELECT 1 -- request_id='b'\n")
                .request_id
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn ignores_look_alikes_inside_literals() {
        assert_eq!(
            from_comments("SELECT '/* request_id=''x'' */'").request_id,
            None
        );
        assert_eq!(
            from_comments("SELECT $$ /* request_id='x' */ $$").request_id,
            None
        );
        assert_eq!(
            from_comments("SELECT $t$ -- request_id='x' $t$").request_id,
            None
        );
        assert_eq!(
            from_comments("SELECT \"/* request_id='x' */\" FROM t").request_id,
            None
        );
        assert_eq!(
            from_comments("SELECT E'\\' /* request_id=''x'' */'").request_id,
            None
        );
    }

    #[test]
    fn nested_comments_are_one_comment() {
        let c = from_comments("SELECT 1 /* outer /* inner */ request_id='n' */");
        assert_eq!(c.request_id.as_deref(), Some("n"));
    }

    #[test]
    fn no_comment_no_id() {
        assert_eq!(
            from_comments("SELECT request_id FROM t WHERE x = 'request_id=1'"),
            Correlation::default()
        );
    }

    #[test]
    fn positional_params_are_not_dollar_quotes() {
        assert_eq!(
            from_comments("SELECT $1 /* request_id='p' */")
                .request_id
                .as_deref(),
            Some("p")
        );
    }
}
