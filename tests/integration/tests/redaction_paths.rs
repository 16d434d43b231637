//! Regulated values stay out of the audit trail, its export and the server
//! log, wherever they sit (inside longer text, spaced or dashed, spelled with
//! `U&''` or `E''` escapes) and whichever way they arrive: in a statement's
//! literals, an extended-protocol parameter, or an error message PostgreSQL
//! builds from them (a failed cast quotes its input).

use agent_guard_integration::*;
use std::time::{Duration, Instant};

/// A Luhn-valid 16-digit card number unique to this run.
fn card_number() -> String {
    let seed = format!(
        "4{:014}",
        (std::process::id() as u64 * 7919 + 1_000_003) % 100_000_000_000_000
    );
    let digits: Vec<u32> = seed.chars().map(|c| c.to_digit(10).unwrap()).collect();
    // the check digit makes the sum of the doubled-every-second digits a multiple of 10
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    format!("{seed}{}", (10 - sum % 10) % 10)
}

/// An SSN-shaped value unique to this run: (area, group, serial).
fn ssn() -> (String, String, String) {
    let n = std::process::id() % 9000 + 1000;
    ("318".into(), "27".into(), n.to_string())
}

/// Every value a row of this backend's trail holds in text form, once `min` rows are there.
fn trail_of(pid: i32, min: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut a = admin();
    loop {
        let rows = a
            .query(
                "SELECT coalesce(statement_text, '') || ' | ' || coalesce(parameters::text, '') || ' | ' ||
                        coalesce(error_message, '') || ' | ' || coalesce(reason, ''),
                        error_message IS NOT NULL
                   FROM agent_guard.audit_log WHERE backend_pid = $1 ORDER BY id",
                &[&pid],
            )
            .unwrap();
        let ended = rows.iter().filter(|r| r.get::<_, bool>(1)).count();
        if (rows.len() >= min && ended > 0) || Instant::now() > deadline {
            return rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exported documents of this backend's rows.
fn export_of(pid: i32) -> String {
    admin()
        .query(
            "SELECT e::text FROM agent_guard.audit_export(now() - interval '1 hour') e
              WHERE (e->>'backend_pid')::int = $1",
            &[&pid],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_raw(what: &str, text: &str, raw: &[&str]) {
    for r in raw {
        assert!(!text.contains(r), "{what} holds the raw value {r}:\n{text}");
    }
}

#[test]
fn error_messages_of_agents_are_redacted_in_the_trail_the_export_and_the_log() {
    let sponsor = create_login_role("red_sp", "");
    let agent = create_login_role("red_ag", "");
    admin()
        .batch_execute(&format!(
            "SELECT agent_guard.register_agent('{agent}', '{sponsor}')"
        ))
        .unwrap();
    let (area, group, serial) = ssn();
    let ssn_dashed = format!("{area}-{group}-{serial}");
    let card = card_number();
    let card_spaced = format!(
        "{} {} {} {}",
        &card[..4],
        &card[4..8],
        &card[8..12],
        &card[12..]
    );
    let log_from = server_log_len();
    let mut c = connect(&agent);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let attempts = [
        format!("SELECT '{ssn_dashed}'::int"),
        format!("SELECT 'my card {card_spaced} please'::int"),
        format!("SELECT U&'{area}\\002d{group}\\002d{serial}'::int"),
        format!("SELECT E'{area}\\055{group}\\055{serial}'::int"),
        format!("SELECT '{area} {group} {serial}'::numeric"),
        format!("DO $$ BEGIN RAISE EXCEPTION 'card %', '{card_spaced}'; END $$"),
    ];
    for sql in &attempts {
        let e = c.batch_execute(sql).expect_err(sql);
        let msg = describe(&e);
        // the client's message is redacted too
        assert_no_raw(
            "the client's message",
            &msg,
            &[&ssn_dashed, &card_spaced, &serial],
        );
    }
    // an extended-protocol parameter that holds an SSN inside longer text
    let note = format!("note: {ssn_dashed}");
    let e = c
        .query("SELECT $1::text::int", &[&note])
        .expect_err("cast of a note");
    assert_no_raw("the client's message", &describe(&e), &[&ssn_dashed]);
    drop(c);
    let spaced_tail = format!("{group} {serial}");
    let raw = [
        ssn_dashed.as_str(),
        card_spaced.as_str(),
        card.as_str(),
        spaced_tail.as_str(),
    ];
    let trail = trail_of(pid, attempts.len() + 1);
    assert!(
        trail.contains("<redacted>"),
        "nothing was redacted:\n{trail}"
    );
    assert_no_raw("audit_log", &trail, &raw);
    assert_no_raw("audit_export()", &export_of(pid), &raw);
    assert!(wait_for_log(
        log_from,
        "invalid input syntax",
        Duration::from_secs(10)
    ));
    assert_no_raw("the server log", &server_log_since(log_from), &raw);
    let _ = admin().batch_execute(&format!("DROP ROLE {agent}; DROP ROLE {sponsor};"));
}

#[test]
fn humans_audited_statements_lose_regulated_values_in_every_spelling() {
    let t = unique_name("red_notes");
    let mut a = admin();
    a.batch_execute(&format!(
        "CREATE TABLE {t} (id int, note text); INSERT INTO {t} VALUES (1, 'x')"
    ))
    .unwrap();
    let (area, group, serial) = ssn();
    let ssn_dashed = format!("{area}-{group}-{serial}");
    let card = card_number();
    let card_spaced = format!(
        "{} {} {} {}",
        &card[..4],
        &card[4..8],
        &card[8..12],
        &card[12..]
    );
    let card_dashed = card_spaced.replace(' ', "-");
    let mut h = admin();
    h.batch_execute("SET agent_guard.audit_non_agents = write")
        .unwrap();
    let pid: i32 = h.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let notes = [
        format!("'ssn {ssn_dashed} on file'"),
        format!("'call {card} now'"),
        format!("'my card {card_spaced}'"),
        format!("'card {card_dashed}, thanks'"),
        format!("'{area} {group} {serial}'"),
        format!("U&'{area}\\002d{group}\\002d{serial}'"),
        format!("U&'{area}!002d{group}!002d{serial}' UESCAPE '!'"),
        format!("E'{area}\\x2d{group}\\x2d{serial}'"),
        // string constants separated by a newline are one constant
        format!("'{area}-'\n'{group}-{serial}'"),
    ];
    for n in &notes {
        let sql = format!("UPDATE {t} SET note = {n} WHERE id = 1");
        h.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    }
    // extended protocol: the parameter goes to the trail redacted
    let note = format!("note: {ssn_dashed}");
    h.execute(&format!("UPDATE {t} SET note = $1 WHERE id = 1"), &[&note])
        .unwrap();
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(20);
    let trail = loop {
        let rows = a
            .query(
                "SELECT coalesce(statement_text, '') || ' | ' || coalesce(parameters::text, '')
                   FROM agent_guard.audit_log WHERE backend_pid = $1 AND command = 'UPDATE' ORDER BY id",
                &[&pid],
            )
            .unwrap();
        if rows.len() > notes.len() || Instant::now() > deadline {
            break rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        trail.lines().count() > notes.len(),
        "not every UPDATE was audited:\n{trail}"
    );
    assert_no_raw(
        "a human's audited UPDATE",
        &trail,
        &[
            &ssn_dashed,
            &card,
            &card_spaced,
            &card_dashed,
            &format!("{group} {serial}"),
            &format!("{group}\\002d{serial}"),
            &format!("{group}!002d{serial}"),
            &format!("{group}\\x2d{serial}"),
            &format!("{group}-{serial}"),
        ],
    );
    let _ = a.batch_execute(&format!("DROP TABLE {t}"));
}
