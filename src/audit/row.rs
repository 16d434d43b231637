//! One audit row: built from a statement's events, with the exact text its
//! hashes cover. Shared by backends (which send finished asynchronous
//! statements as complete rows) and the writer.

use serde_json::{json, Map, Value};

/// PostgreSQL-epoch microseconds as an ISO timestamp in UTC.
pub fn iso_utc(pg_us: i64) -> String {
    let unix_us = pg_us + 946_684_800_000_000;
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}+00",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

pub fn ts(v: &Value) -> Value {
    v.as_i64()
        .map_or(Value::Null, |t| Value::String(iso_utc(t)))
}

pub fn key(sk: &Value, n: &Value) -> String {
    format!("{}:{}", sk.as_str().unwrap_or(""), n)
}

/// Put an end event into a row.
pub fn outcome_of(row: &mut Map<String, Value>, e: &Value) {
    row.insert("ended_at".into(), ts(&e["ts"]));
    row.insert("_ended_us".into(), e["ts"].clone());
    row.insert("rows_affected".into(), e["rows"].clone());
    row.insert("outcome".into(), e["out"].clone());
    row.insert("sqlstate".into(), e["state"].clone());
    row.insert("error_message".into(), e["msg"].clone());
}

/// Put a transaction's outcome into a row.
pub fn transaction_of(row: &mut Map<String, Value>, xo: &Value) {
    if !row.contains_key("transaction_outcome") {
        row.insert("transaction_outcome".into(), xo["out"].clone());
    }
    row.insert("transaction_id".into(), xo["xid"].clone());
}

/// The row of a statement event (and of its end and transaction, when it carries them).
pub fn stmt_row(e: &Value) -> Map<String, Value> {
    let mut r = Map::new();
    let fields = [
        ("session_key", "sk"),
        ("statement_no", "n"),
        ("local_xact", "x"),
        ("subxact", "sx"),
        ("parent_statement", "parent"),
        ("nesting_level", "lvl"),
        ("session_user_name", "su"),
        ("current_user_name", "cu"),
        ("agent", "agent"),
        ("login_role", "login"),
        ("sponsor", "sponsor"),
        ("application_name", "app"),
        ("client_addr", "addr"),
        ("backend_pid", "pid"),
        ("database_name", "db"),
        ("request_id", "rid"),
        ("traceparent", "tp"),
        ("command", "cmd"),
        ("risk", "risk"),
        ("objects", "obj"),
        ("decision", "dec"),
        ("reason", "why"),
        ("grant_id", "grant"),
        ("statement_text", "text"),
        ("parameters", "params"),
    ];
    r.insert("event_key".into(), json!(key(&e["sk"], &e["n"])));
    for (column, field) in fields {
        r.insert(column.into(), e[field].clone());
    }
    r.insert("started_at".into(), ts(&e["ts"]));
    r.insert("_started_us".into(), e["ts"].clone());
    if e["dec"] == "denied" {
        r.insert("ended_at".into(), ts(&e["ts"]));
        r.insert("_ended_us".into(), e["ts"].clone());
        r.insert("outcome".into(), json!("denied"));
        r.insert("sqlstate".into(), json!("42501"));
    }
    r
}

/// PostgreSQL's jsonb text of a JSON value (as `jsonb_build_array(...)::text` prints it).
fn pg_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                pg_json(item, out);
            }
            out.push(']');
        }
        Value::Object(_) => out.push_str(&v.to_string()),
    }
}

/// A JSON array of the row's `fields`, as PostgreSQL prints it; `_unix` fields
/// are the PostgreSQL-epoch microsecond fields of the same name turned into
/// Unix microseconds (as `EXTRACT(epoch …) * 1e6` gives them).
fn pg_json_array(row: &Map<String, Value>, fields: &[&str]) -> String {
    let mut out = String::from("[");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match f.strip_suffix("_unix") {
            Some(base) => {
                let v = row.get(&format!("{base}_us")).and_then(Value::as_i64);
                match v {
                    Some(t) => out.push_str(&(t + 946_684_800_000_000).to_string()),
                    None => out.push_str("null"),
                }
            }
            None => pg_json(row.get(*f).unwrap_or(&Value::Null), &mut out),
        }
    }
    out.push(']');
    out
}

const CONTENT_FIELDS: &[&str] = &[
    "event_key",
    "session_key",
    "statement_no",
    "local_xact",
    "subxact",
    "parent_statement",
    "nesting_level",
    "_started_unix",
    "session_user_name",
    "current_user_name",
    "agent",
    "login_role",
    "sponsor",
    "application_name",
    "client_addr",
    "backend_pid",
    "database_name",
    "request_id",
    "traceparent",
    "command",
    "risk",
    "objects",
    "decision",
    "reason",
    "grant_id",
    "statement_text",
    "parameters",
];

/// The hashed content of a row without its id: `[event_key, …]`.
pub fn content_tail(row: &Map<String, Value>) -> String {
    pg_json_array(row, CONTENT_FIELDS)
}

/// The hashed content of row `id`; equals SQL `agent_guard._row_content(row)`.
pub fn content_with_id(id: i64, tail: &str) -> String {
    format!("[{id}, {}", &tail[1..])
}

/// Whether the row already knows how it ended (then its outcome is sealed at insert).
pub fn has_outcome(row: &Map<String, Value>) -> bool {
    row.contains_key("outcome") || row.contains_key("transaction_outcome")
}

/// The hashed outcome of a row; equals SQL `agent_guard._outcome_content(row)`.
pub fn outcome_content(row: &Map<String, Value>) -> String {
    pg_json_array(
        row,
        &[
            "_ended_unix",
            "rows_affected",
            "outcome",
            "sqlstate",
            "error_message",
            "transaction_id",
            "transaction_outcome",
        ],
    )
}

/// A finished statement as one queue record: `R`, the content tail, the
/// outcome content and the row's JSON, so the writer neither parses nor
/// rebuilds it.
pub fn complete_record(event: &Value) -> Vec<u8> {
    let mut row = stmt_row(event);
    if event["end"].is_object() {
        outcome_of(&mut row, &event["end"]);
    }
    if event["xo"].is_object() {
        transaction_of(&mut row, &event["xo"]);
    }
    let tail = content_tail(&row);
    let outcome = if has_outcome(&row) {
        outcome_content(&row)
    } else {
        String::new()
    };
    let json = Value::Object(row).to_string();
    let mut out = Vec::with_capacity(9 + tail.len() + outcome.len() + json.len());
    out.push(b'R');
    out.extend_from_slice(&(tail.len() as u32).to_le_bytes());
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(&(outcome.len() as u32).to_le_bytes());
    out.extend_from_slice(outcome.as_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

/// The parts of a complete record: (content tail, outcome content or empty, row JSON).
pub fn split_complete_record(p: &[u8]) -> Option<(&str, &str, &str)> {
    if p.first() != Some(&b'R') {
        return None;
    }
    let n1 = u32::from_le_bytes(p.get(1..5)?.try_into().ok()?) as usize;
    let tail = std::str::from_utf8(p.get(5..5 + n1)?).ok()?;
    let o = 5 + n1;
    let n2 = u32::from_le_bytes(p.get(o..o + 4)?.try_into().ok()?) as usize;
    let outcome = std::str::from_utf8(p.get(o + 4..o + 4 + n2)?).ok()?;
    let json = std::str::from_utf8(p.get(o + 4 + n2..)?).ok()?;
    Some((tail, outcome, json))
}

pub const COLUMNS: &str = "id, prev_hash, row_hash, outcome_hash, event_key, session_key, statement_no, local_xact, subxact, parent_statement, \
    nesting_level, started_at, session_user_name, current_user_name, agent, login_role, sponsor, \
    application_name, client_addr, backend_pid, database_name, request_id, traceparent, command, risk, \
    objects, decision, reason, grant_id, statement_text, parameters, ended_at, rows_affected, outcome, \
    sqlstate, error_message, transaction_id, transaction_outcome";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso_utc(0), "2000-01-01 00:00:00.000000+00");
        assert_eq!(
            iso_utc(817_948_800_123_456),
            "2025-12-02 00:00:00.123456+00"
        );
    }

    #[test]
    fn json_text_matches_postgres_escaping() {
        let mut out = String::new();
        pg_json(&json!(["a\"b\\c\n\u{1}é", null, 5, []]), &mut out);
        assert_eq!(out, "[\"a\\\"b\\\\c\\n\\u0001é\", null, 5, []]");
    }

    #[test]
    fn complete_records_split_back() {
        let event = json!({"k": "stmt", "sk": "1-2", "n": 3, "x": 0, "sx": 1, "ts": 10, "dec": "allowed",
                           "text": "SELECT 1", "end": {"ts": 20, "rows": 1, "out": "ok"},
                           "xo": {"out": "committed", "xid": null}});
        let rec = complete_record(&event);
        let (tail, outcome, row) = split_complete_record(&rec).unwrap();
        assert!(tail.starts_with("[\"1-2:3\", \"1-2\", 3, 0, 1"), "{tail}");
        assert_eq!(
            outcome,
            "[946684800000020, 1, \"ok\", null, null, null, \"committed\"]"
        );
        let row: Value = serde_json::from_str(row).unwrap();
        assert_eq!(row["transaction_outcome"], "committed");
        assert_eq!(content_with_id(7, tail), format!("[7, {}", &tail[1..]));
    }
}
