//! One audit row: built from a statement's events, with the exact text its
//! hashes cover. Shared by backends (which send finished asynchronous
//! statements as complete rows) and the writer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// How a statement ended; `S` holds its strings (see [`Record`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct EndOf<S> {
    /// End time, PostgreSQL-epoch microseconds.
    pub ts: i64,
    pub rows: Option<u64>,
    /// `ok`, `error` or (for refusals) `denied`.
    pub out: S,
    pub state: Option<S>,
    pub msg: Option<S>,
}

/// How a statement's transaction ended; `S` holds its strings (see [`Record`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct XactEndOf<S> {
    /// `committed`, `rolled back` or `rolled back to savepoint`.
    pub out: S,
    pub xid: Option<u64>,
}

/// One audited statement: what the backend knows when it starts, plus its
/// end and its transaction's end once known. Serialized with short keys, as
/// the statement events of the queue carry it. `S` is how it holds its
/// strings: owned ([`Stmt`]: built by backends, decoded from JSON events)
/// or borrowed ([`Row`]: decoded from a queue record without copies, or
/// lent by a `Stmt`), which is what the writer hashes and inserts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Record<S> {
    pub sk: S,
    pub n: u64,
    pub x: u64,
    pub sx: u32,
    pub parent: Option<u64>,
    pub lvl: i32,
    /// Start time, PostgreSQL-epoch microseconds.
    pub ts: i64,
    pub su: Option<S>,
    pub cu: Option<S>,
    pub agent: Option<S>,
    pub login: Option<S>,
    pub sponsor: Option<S>,
    pub app: Option<S>,
    pub addr: Option<S>,
    pub pid: i32,
    pub db: Option<S>,
    pub rid: Option<S>,
    pub tp: Option<S>,
    pub cmd: Option<S>,
    pub risk: Option<S>,
    pub obj: Vec<S>,
    pub dec: S,
    pub why: Option<S>,
    pub grant: Option<i64>,
    pub text: Option<S>,
    pub params: Option<Vec<Option<S>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndOf<S>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xo: Option<XactEndOf<S>>,
}

pub type End = EndOf<String>;
pub type XactEnd = XactEndOf<String>;
pub type Stmt = Record<String>;
pub type Row<'a> = Record<&'a str>;

impl<S: AsRef<str>> Record<S> {
    /// Unique per statement: session key and statement number.
    pub fn event_key(&self) -> String {
        let mut out = String::with_capacity(self.sk.as_ref().len() + 21);
        self.write_event_key(&mut out);
        out
    }

    /// Append the event key to `out`.
    pub fn write_event_key(&self, out: &mut String) {
        out.push_str(self.sk.as_ref());
        out.push(':');
        push_int(out, self.n as i128);
    }
}

impl Stmt {
    /// Record the transaction's end (a savepoint rollback already recorded stays).
    pub fn set_transaction(&mut self, xo: &XactEnd) {
        match &mut self.xo {
            Some(mine) => mine.xid = xo.xid,
            None => self.xo = Some(xo.clone()),
        }
    }

    /// The statement event as the queue carries it (`{"k":"stmt",…}`).
    pub fn event_json(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        let mut out = Vec::with_capacity(body.len() + 11);
        out.extend_from_slice(b"{\"k\":\"stmt\"");
        if body.len() > 2 {
            out.push(b',');
        }
        out.extend_from_slice(&body[1..]);
        out
    }

    /// The statement as a [`Row`] borrowing its strings.
    pub fn row(&self) -> Row<'_> {
        Record {
            sk: &self.sk,
            n: self.n,
            x: self.x,
            sx: self.sx,
            parent: self.parent,
            lvl: self.lvl,
            ts: self.ts,
            su: self.su.as_deref(),
            cu: self.cu.as_deref(),
            agent: self.agent.as_deref(),
            login: self.login.as_deref(),
            sponsor: self.sponsor.as_deref(),
            app: self.app.as_deref(),
            addr: self.addr.as_deref(),
            pid: self.pid,
            db: self.db.as_deref(),
            rid: self.rid.as_deref(),
            tp: self.tp.as_deref(),
            cmd: self.cmd.as_deref(),
            risk: self.risk.as_deref(),
            obj: self.obj.iter().map(String::as_str).collect(),
            dec: &self.dec,
            why: self.why.as_deref(),
            grant: self.grant,
            text: self.text.as_deref(),
            params: self
                .params
                .as_ref()
                .map(|ps| ps.iter().map(Option::as_deref).collect()),
            end: self.end.as_ref().map(|e| EndOf {
                ts: e.ts,
                rows: e.rows,
                out: e.out.as_str(),
                state: e.state.as_deref(),
                msg: e.msg.as_deref(),
            }),
            xo: self.xo.as_ref().map(|x| XactEndOf {
                out: x.out.as_str(),
                xid: x.xid,
            }),
        }
    }
}

impl<'a> Row<'a> {
    /// How the statement ended: its end, or for a refusal the refusal itself.
    pub fn outcome(&self) -> Option<EndOf<&'a str>> {
        match self.end {
            Some(e) => Some(e),
            None if self.dec == "denied" => Some(EndOf {
                ts: self.ts,
                rows: None,
                out: "denied",
                state: Some("42501"),
                msg: None,
            }),
            None => None,
        }
    }

    /// Whether the row already knows how it ended (then its outcome is sealed at insert).
    pub fn has_outcome(&self) -> bool {
        self.outcome().is_some() || self.xo.is_some()
    }
}

/// Append the decimal digits of `v` (as `{v}` would print it, without the formatting machinery).
fn push_int(out: &mut String, v: i128) {
    let mut buf = [0u8; 40];
    let mut i = buf.len();
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// PostgreSQL's jsonb text of a string (as `jsonb_build_array(...)::text` prints it).
fn pg_json_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        // only ASCII bytes are escaped, so slicing here keeps characters whole
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            use std::fmt::Write;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// A JSON array as PostgreSQL's jsonb prints it: `[a, b, …]`, appended to a buffer.
struct PgArray<'o> {
    out: &'o mut String,
    first: bool,
}

impl<'o> PgArray<'o> {
    fn new(out: &'o mut String) -> Self {
        out.push('[');
        PgArray { out, first: true }
    }
    fn sep(&mut self) -> &mut String {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push_str(", ");
        }
        self.out
    }
    fn str(&mut self, v: Option<&str>) {
        let out = self.sep();
        match v {
            Some(s) => pg_json_str(s, out),
            None => out.push_str("null"),
        }
    }
    fn num(&mut self, v: Option<impl Into<i128>>) {
        let out = self.sep();
        match v {
            Some(n) => push_int(out, n.into()),
            None => out.push_str("null"),
        }
    }
    fn strs<'a>(&mut self, v: Option<impl IntoIterator<Item = Option<&'a str>>>) {
        let out = self.sep();
        match v {
            None => out.push_str("null"),
            Some(items) => {
                out.push('[');
                for (i, item) in items.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match item {
                        Some(s) => pg_json_str(s, out),
                        None => out.push_str("null"),
                    }
                }
                out.push(']');
            }
        }
    }
    fn finish(self) {
        self.out.push(']');
    }
}

/// Unix microseconds of a PostgreSQL-epoch timestamp (as `EXTRACT(epoch …) * 1e6` gives them).
fn unix_us(pg_us: i64) -> i64 {
    pg_us + 946_684_800_000_000
}

/// A session's context as `agent_guard.audit_sessions` stores it once per
/// session (and again whenever it changes: `SET application_name`, `SET
/// SESSION AUTHORIZATION`, a new sponsor).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionCtx {
    pub sk: String,
    pub su: Option<String>,
    pub login: Option<String>,
    pub sponsor: Option<String>,
    pub app: Option<String>,
    pub addr: Option<String>,
    pub db: Option<String>,
}

impl Row<'_> {
    /// Whether `c` is this row's session context.
    pub fn has_ctx(&self, c: &SessionCtx) -> bool {
        self.sk == c.sk
            && self.su == c.su.as_deref()
            && self.login == c.login.as_deref()
            && self.sponsor == c.sponsor.as_deref()
            && self.app == c.app.as_deref()
            && self.addr == c.addr.as_deref()
            && self.db == c.db.as_deref()
    }

    /// This row's session context.
    pub fn ctx(&self) -> SessionCtx {
        let own = |v: Option<&str>| v.map(str::to_string);
        SessionCtx {
            sk: self.sk.to_string(),
            su: own(self.su),
            login: own(self.login),
            sponsor: own(self.sponsor),
            app: own(self.app),
            addr: own(self.addr),
            db: own(self.db),
        }
    }
}

/// Append the hashed content of row `id`, whose session context is row
/// `session_id` of `agent_guard.audit_sessions`, to `out`; equals SQL
/// `agent_guard._row_content(row, session)`. The session's context is part
/// of every row's hash, so rewriting a session row breaks the chain at the
/// first row that refers to it.
pub fn write_row_content(id: i64, session_id: i64, s: &Row, out: &mut String) {
    let mut a = PgArray::new(out);
    a.num(Some(id));
    a.str(Some(s.sk));
    a.num(Some(s.n));
    a.num(Some(s.x));
    a.num(Some(s.sx));
    a.num(s.parent);
    a.num(Some(s.lvl));
    a.num(Some(unix_us(s.ts)));
    for v in [s.su, s.cu, s.agent, s.login, s.sponsor, s.app, s.addr] {
        a.str(v);
    }
    a.num(Some(s.pid));
    for v in [s.db, s.rid, s.tp, s.cmd, s.risk] {
        a.str(v);
    }
    a.strs(Some(s.obj.iter().map(|o| Some(*o))));
    a.str(Some(s.dec));
    a.str(s.why);
    a.num(s.grant);
    a.str(s.text);
    a.strs(s.params.as_ref().map(|ps| ps.iter().copied()));
    a.num(Some(session_id));
    a.str(Some(s.sk));
    a.finish();
}

/// Append the hashed outcome of a row to `out`; equals SQL `agent_guard._outcome_content(row)`.
pub fn write_outcome_content(s: &Row, out: &mut String) {
    let end = s.outcome();
    let mut a = PgArray::new(out);
    a.num(end.map(|e| unix_us(e.ts)));
    a.num(end.and_then(|e| e.rows));
    a.str(end.map(|e| e.out));
    a.str(end.and_then(|e| e.state));
    a.str(end.and_then(|e| e.msg));
    a.num(s.xo.and_then(|x| x.xid));
    a.str(s.xo.map(|x| x.out));
    a.finish();
}

/// The hashed content of row `id` (see [`write_row_content`]).
#[cfg(test)]
fn row_content(id: i64, s: &Row) -> String {
    let mut out = String::with_capacity(256 + s.text.map_or(0, str::len));
    write_row_content(id, 5, s, &mut out);
    out
}

/// The hashed outcome of a row (see [`write_outcome_content`]).
#[cfg(test)]
fn outcome_content(s: &Row) -> String {
    let mut out = String::with_capacity(128);
    write_outcome_content(s, &mut out);
    out
}

/// A finished statement as one queue record: `R` and the statement with its
/// end and transaction end in a compact binary form (fields in a fixed
/// order, strings length-prefixed; backends and writer are the same build).
pub fn complete_record(s: &Stmt) -> Vec<u8> {
    let mut w = Wire(Vec::with_capacity(
        256 + s.text.as_ref().map_or(0, String::len),
    ));
    w.0.push(b'R');
    w.str(Some(&s.sk));
    for n in [s.n, s.x, s.sx as u64] {
        w.u64(n);
    }
    w.opt_u64(s.parent);
    w.u64(s.lvl as i64 as u64);
    w.u64(s.ts as u64);
    for v in [
        &s.su, &s.cu, &s.agent, &s.login, &s.sponsor, &s.app, &s.addr,
    ] {
        w.str(v.as_deref());
    }
    w.u64(s.pid as i64 as u64);
    for v in [&s.db, &s.rid, &s.tp, &s.cmd, &s.risk] {
        w.str(v.as_deref());
    }
    w.u64(s.obj.len() as u64);
    for o in &s.obj {
        w.str(Some(o));
    }
    w.str(Some(&s.dec));
    w.str(s.why.as_deref());
    w.opt_u64(s.grant.map(|g| g as u64));
    w.str(s.text.as_deref());
    match &s.params {
        None => w.opt_u64(None),
        Some(ps) => {
            w.opt_u64(Some(ps.len() as u64));
            for p in ps {
                w.str(p.as_deref());
            }
        }
    }
    match &s.end {
        None => w.0.push(0),
        Some(e) => {
            w.0.push(1);
            w.u64(e.ts as u64);
            w.opt_u64(e.rows);
            w.str(Some(&e.out));
            w.str(e.state.as_deref());
            w.str(e.msg.as_deref());
        }
    }
    match &s.xo {
        None => w.0.push(0),
        Some(x) => {
            w.0.push(1);
            w.str(Some(&x.out));
            w.opt_u64(x.xid);
        }
    }
    w.0
}

/// The longest error message a record carries, in bytes (longer ones are
/// cut at a character boundary): the records a statement reserves queue
/// space for when it starts must have a known upper size.
pub const MSG_MAX: usize = 1000;

/// Cut `msg` to at most [`MSG_MAX`] bytes and replace control characters
/// other than newline and tab by spaces (so that its JSON form is at most
/// twice as long).
pub fn bounded_message(msg: &str) -> String {
    let mut end = msg.len().min(MSG_MAX);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    msg[..end]
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Length of `Wire::str` of `v`.
fn wire_str_len(v: Option<&str>) -> usize {
    4 + v.map_or(0, str::len)
}

/// The exact length of [`complete_record`] of `s` without its end and
/// transaction end, plus room for the longest end ([`MSG_MAX`]) and
/// transaction end: the bytes a statement reserves for its complete record.
pub fn complete_record_bound(s: &Stmt) -> usize {
    let o = |v: &Option<String>| wire_str_len(v.as_deref());
    let opt = |v: bool| if v { 9 } else { 1 };
    let mut n = 1 + wire_str_len(Some(&s.sk)) + 3 * 8 + opt(s.parent.is_some()) + 8 + 8;
    n += [
        &s.su, &s.cu, &s.agent, &s.login, &s.sponsor, &s.app, &s.addr,
    ]
    .iter()
    .map(|v| o(v))
    .sum::<usize>();
    n += 8;
    n += [&s.db, &s.rid, &s.tp, &s.cmd, &s.risk]
        .iter()
        .map(|v| o(v))
        .sum::<usize>();
    n += 8 + s.obj.iter().map(|x| wire_str_len(Some(x))).sum::<usize>();
    n += wire_str_len(Some(&s.dec)) + o(&s.why) + opt(s.grant.is_some()) + o(&s.text);
    n += match &s.params {
        None => 1,
        Some(ps) => 1 + 8 + ps.iter().map(|p| wire_str_len(p.as_deref())).sum::<usize>(),
    };
    // end: flag, ts, rows, out ("error"), state (5), msg
    n += 1 + 8 + (1 + 8) + wire_str_len(Some("error")) + wire_str_len(Some("XXXXX")) + 4 + MSG_MAX;
    // transaction end: flag, out, xid
    n += 1 + wire_str_len(Some("rolled back to savepoint")) + (1 + 8);
    n
}

/// Upper size of a JSON event of a statement or transaction of session
/// `sk` (end, transaction end, savepoint rollback), with an error message
/// of at most [`MSG_MAX`] bytes in the end event.
pub fn event_bound(sk: &str, with_message: bool) -> usize {
    // keys, punctuation, five 20-digit numbers, "rolled back to savepoint", a SQLSTATE
    256 + 2 * sk.len() + if with_message { 2 * MSG_MAX } else { 0 }
}

/// The row of a complete record, borrowing its strings from `p` (None if it
/// is not one, or is malformed).
pub fn parse_complete_record(p: &[u8]) -> Option<Row<'_>> {
    if p.first() != Some(&b'R') {
        return None;
    }
    let mut r = Reader { buf: p, pos: 1 };
    let sk = r.str()??;
    let (n, x, sx) = (r.u64()?, r.u64()?, r.u64()? as u32);
    let parent = r.opt_u64()?;
    let lvl = r.u64()? as i64 as i32;
    let ts = r.u64()? as i64;
    let (su, cu, agent, login) = (r.str()?, r.str()?, r.str()?, r.str()?);
    let (sponsor, app, addr) = (r.str()?, r.str()?, r.str()?);
    let pid = r.u64()? as i64 as i32;
    let (db, rid, tp, cmd, risk) = (r.str()?, r.str()?, r.str()?, r.str()?, r.str()?);
    let nobj = r.u64()? as usize;
    let obj = (0..nobj)
        .map(|_| r.str().flatten())
        .collect::<Option<Vec<_>>>()?;
    let dec = r.str()??;
    let why = r.str()?;
    let grant = r.opt_u64()?.map(|g| g as i64);
    let text = r.str()?;
    let params = match r.opt_u64()? {
        None => None,
        Some(n) => Some((0..n).map(|_| r.str()).collect::<Option<Vec<_>>>()?),
    };
    let end = match r.byte()? {
        1 => Some(EndOf {
            ts: r.u64()? as i64,
            rows: r.opt_u64()?,
            out: r.str()??,
            state: r.str()?,
            msg: r.str()?,
        }),
        _ => None,
    };
    let xo = match r.byte()? {
        1 => Some(XactEndOf {
            out: r.str()??,
            xid: r.opt_u64()?,
        }),
        _ => None,
    };
    (r.pos == p.len()).then_some(Record {
        sk,
        n,
        x,
        sx,
        parent,
        lvl,
        ts,
        su,
        cu,
        agent,
        login,
        sponsor,
        app,
        addr,
        pid,
        db,
        rid,
        tp,
        cmd,
        risk,
        obj,
        dec,
        why,
        grant,
        text,
        params,
        end,
        xo,
    })
}

struct Wire(Vec<u8>);

impl Wire {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                self.u64(v);
            }
        }
    }
    /// A string as its byte length plus one (0 = NULL) and its bytes.
    fn str(&mut self, v: Option<&str>) {
        match v {
            None => self.0.extend_from_slice(&0u32.to_le_bytes()),
            Some(s) => {
                self.0
                    .extend_from_slice(&(s.len() as u32 + 1).to_le_bytes());
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.byte()? {
            0 => Some(None),
            _ => Some(Some(self.u64()?)),
        }
    }
    /// Outer None: malformed; inner None: NULL.
    fn str(&mut self) -> Option<Option<&'a str>> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        if n == 0 {
            return Some(None);
        }
        let b = self.take(n - 1)?;
        Some(Some(std::str::from_utf8(b).ok()?))
    }
}

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
        let mut out = String::from("x");
        let mut a = PgArray::new(&mut out);
        a.str(Some("a\"b\\c\n\u{1}é"));
        a.str(None);
        a.num(Some(5));
        a.num(Some(-1_234_567_890_123i64));
        a.num(Some(u64::MAX));
        a.num(Some(0u32));
        a.num(None::<i64>);
        a.strs(Some(std::iter::empty()));
        a.finish();
        assert_eq!(
            out,
            "x[\"a\\\"b\\\\c\\n\\u0001é\", null, 5, -1234567890123, 18446744073709551615, 0, null, []]"
        );
    }

    #[test]
    fn event_keys_of_rows_and_statements_agree() {
        let s = Stmt {
            sk: "9-\"q\"".into(),
            n: 42,
            ..sample()
        };
        let row = s.row();
        assert_eq!(row.event_key(), s.event_key());
        assert_eq!(row.event_key(), "9-\"q\":42");
    }

    #[test]
    fn the_session_context_is_hashed_with_its_session_row() {
        let s = Stmt {
            app: Some("app".into()),
            sponsor: Some("alice".into()),
            ..sample()
        };
        let row = s.row();
        let c = row.ctx();
        assert!(row.has_ctx(&c));
        let other = SessionCtx {
            sponsor: Some("bob".into()),
            ..c.clone()
        };
        assert!(!row.has_ctx(&other));
        assert!(row_content(7, &row).ends_with(", 5, \"1-2\"]"));
        assert!(row_content(7, &row).contains("\"alice\", \"app\""));
    }

    fn sample() -> Stmt {
        Stmt {
            sk: "1-2".into(),
            n: 3,
            sx: 1,
            ts: 10,
            dec: "allowed".into(),
            text: Some("SELECT 1".into()),
            end: Some(End {
                ts: 20,
                rows: Some(1),
                out: "ok".into(),
                state: None,
                msg: None,
            }),
            xo: Some(XactEnd {
                out: "committed".into(),
                xid: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn complete_record_bounds_hold_the_longest_end() {
        let mut s = sample();
        s.end = None;
        s.xo = None;
        let bound = complete_record_bound(&s);
        assert!(complete_record(&s).len() <= bound);
        s.end = Some(End {
            ts: i64::MAX,
            rows: Some(u64::MAX),
            out: "error".into(),
            state: Some("XX000".into()),
            msg: Some(bounded_message(&"x".repeat(5000))),
        });
        s.xo = Some(XactEnd {
            out: "rolled back to savepoint".into(),
            xid: Some(u64::MAX),
        });
        assert_eq!(complete_record(&s).len(), bound);
        let msg = bounded_message(&"é\u{1}".repeat(5000));
        assert!(msg.len() <= MSG_MAX && msg.len() > MSG_MAX - 3 && !msg.contains('\u{1}'));
        let event = serde_json::json!({"k": "end", "sk": s.sk, "n": u64::MAX, "ts": i64::MIN,
            "rows": u64::MAX, "out": "error", "state": "XX000", "msg": "\"".repeat(MSG_MAX)});
        assert!(event.to_string().len() <= event_bound(&s.sk, true));
    }

    #[test]
    fn complete_records_parse_back() {
        let s = sample();
        let rec = complete_record(&s);
        let back = parse_complete_record(&rec).unwrap();
        assert_eq!(row_content(7, &back), row_content(7, &s.row()));
        assert!(
            row_content(7, &s.row()).starts_with("[7, \"1-2\", 3, 0, 1, null, 0, 946684800000010")
        );
        assert_eq!(
            outcome_content(&back),
            "[946684800000020, 1, \"ok\", null, null, null, \"committed\"]"
        );
    }

    #[test]
    fn complete_records_keep_every_field() {
        let s = Stmt {
            parent: Some(2),
            lvl: -1,
            su: Some("ü".into()),
            obj: vec!["public.t".into(), String::new()],
            why: None,
            grant: Some(-5),
            params: Some(vec![None, Some("x".into())]),
            end: Some(End {
                ts: -3,
                rows: None,
                out: "error".into(),
                state: Some("22012".into()),
                msg: Some("m".into()),
            }),
            xo: Some(XactEnd {
                out: "rolled back".into(),
                xid: Some(9),
            }),
            ..sample()
        };
        let rec = complete_record(&s);
        let back = parse_complete_record(&rec).unwrap();
        assert_eq!(back, s.row());
        assert!(parse_complete_record(&rec[..rec.len() - 1]).is_none());
        assert!(parse_complete_record(b"{}").is_none());
    }

    #[test]
    fn refusals_end_when_they_start() {
        let s = Stmt {
            dec: "denied".into(),
            ts: 5,
            ..Default::default()
        };
        assert!(s.row().has_outcome());
        assert_eq!(
            outcome_content(&s.row()),
            "[946684800000005, null, \"denied\", \"42501\", null, null, null]"
        );
        assert!(!Stmt {
            dec: "allowed".into(),
            ..Default::default()
        }
        .row()
        .has_outcome());
    }

    #[test]
    fn statement_events_are_tagged() {
        let v: Value = serde_json::from_slice(&sample().event_json()).unwrap();
        assert_eq!(v["k"], "stmt");
        assert_eq!(v["n"], 3);
        let back: Stmt = serde_json::from_value(v).unwrap();
        assert_eq!(back.event_key(), "1-2:3");
    }
}
