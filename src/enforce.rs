//! Facts + who → decision, and the one place a refusal becomes an error.

pub use agent_guard_core::policy::SessionState;
use agent_guard_core::{classify, decide, Classification, Decision, Facts, Refusal};
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raise a refusal as SQLSTATE 42501 with message, detail and hint.
pub fn refuse(r: &Refusal) -> ! {
    crate::audit::mark_refusing();
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        r.message.clone(),
        "agent_guard",
    )
    .set_detail(r.detail.clone())
    .set_hint(r.hint.clone())
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Decide on a classified statement for the current session (a use of a grant counts).
pub fn decide_current(c: &Classification) -> Decision {
    decide_current_with(c, true)
}

/// Decide for the current session; `consume`: count the use of a grant
/// (enforcement) or only look (`classify()`).
pub fn decide_current_with(c: &Classification, consume: bool) -> Decision {
    if !crate::gucs::enabled() {
        return Decision::NotEnforced;
    }
    let Some(agent) = crate::identity::current_agent() else {
        return Decision::NotEnforced;
    };
    // However the session came by them (SET, set_config(), a function's SET
    // clause, the startup packet, role or database settings): no agent
    // statement runs while string literals are read otherwise than by default.
    if crate::gucs::nonstandard_lexer()
        && !agent_guard_core::policy::allowed_under_nonstandard_strings(c)
    {
        let actor = crate::identity::actor(&agent);
        return agent_guard_core::policy::nonstandard_strings_refusal(&actor, c);
    }
    // Likewise while its errors would not be logged (the trail reads them there).
    if crate::gucs::errors_unlogged() {
        if let Some(d) =
            agent_guard_core::policy::unlogged_errors_refusal(&crate::identity::actor(&agent), c)
        {
            return d;
        }
    }
    // Housekeeping needs no catalog access: it must work in aborted transactions.
    if c.is_housekeeping() && !c.touches_guard {
        return Decision::Allow {
            reason: "session housekeeping".into(),
            grant: None,
        };
    }
    let actor = crate::identity::actor(&agent);
    let session = crate::identity::session_state();
    decide(
        Some(&actor),
        &session,
        c,
        &crate::grants::PgGrants::session(&agent, consume),
    )
}

/// Classify a statement and decide on it for the current session.
pub fn evaluate(facts: &Facts) -> (Classification, Decision) {
    let c = classify(facts);
    let d = decide_current(&c);
    (c, d)
}

/// Like [`evaluate`] for an agent's statement: grants see its text (fingerprints,
/// the request a refusal suggests) and a top-level statement starts anew.
pub fn evaluate_agent_statement(
    facts: &Facts,
    text: &str,
    key: usize,
) -> (Classification, Decision) {
    let mut c = classify(facts);
    c.statement = (!text.is_empty()).then(|| text.to_string());
    crate::grants::begin_statement(&c, key);
    let d = decide_current(&c);
    (c, d)
}

/// Refuse an agent's statement because the audit trail cannot take its record.
pub fn refuse_unaudited(why: &crate::audit::Unavailable) -> ! {
    if let crate::audit::Unavailable::Forwarding = why {
        refuse(&crate::audit::forward::refusal());
    }
    refuse(&Refusal {
        message: format!("agent statement refused: the audit trail is unavailable ({})", why.describe()),
        detail: "agent_guard refuses agent statements it cannot record (fail closed), whatever their risk.".into(),
        hint: why.hint(),
        code: "audit_unavailable",
    })
}

/// Record (when audited) and enforce one statement.
pub fn record_and_enforce(
    facts: &Facts,
    text: &crate::audit::StatementText,
    query_desc: usize,
    is_agent: bool,
) {
    let (c, d) = if is_agent {
        evaluate_agent_statement(facts, text.text, query_desc)
    } else {
        evaluate(facts)
    };
    if crate::identity::guard_installed() && crate::audit::audits_session(is_agent, c.risk) {
        if let Err(why) = crate::audit::statement_start(&c, &d, text, query_desc) {
            if is_agent {
                refuse_unaudited(&why);
            }
        }
    }
    if let Decision::Deny(r) = d {
        refuse(&r);
    }
}

/// Refuse an agent's statement for a reason found outside policy (the
/// masking backstop), recording the refusal in the trail first.
pub fn refuse_recorded(facts: &Facts, text: &crate::audit::StatementText, r: Refusal) -> ! {
    let c = classify(facts);
    if crate::identity::guard_installed() {
        let _ = crate::audit::statement_start(&c, &Decision::Deny(r.clone()), text, 0);
    }
    refuse(&r)
}

/// Check a function call of the current agent session (from the object-access
/// hook, as the executor initialises the call). `classify()` judges the calls
/// it finds with the same [`crate::functions::call_classification`].
pub fn check_function(funcid: pg_sys::Oid) {
    let Some(c) = crate::functions::call_classification(funcid) else {
        return;
    };
    refuse_denied_call(&c);
}

/// Refuse a call the current agent session may not make (recording the
/// refusal under the running top-level statement's text); nothing when allowed.
fn refuse_denied_call(c: &Classification) {
    if let Decision::Deny(r) = decide_current(c) {
        if crate::identity::guard_installed() {
            let text = crate::hooks::top_level_text();
            let _ = crate::audit::statement_start(
                c,
                &Decision::Deny(r.clone()),
                &crate::audit::StatementText {
                    text: &text,
                    params: None,
                },
                0,
            );
        }
        refuse(&r);
    }
}

/// Check the calls of an agent's query whose risk depends on a constant
/// argument (`set_config('agent_guard.enabled', …)`), as the planner gets the
/// query: the object-access hook sees a call's function but not its
/// arguments. `classify()` judges the same facts ([`crate::extract::called_functions`])
/// with the same [`agent_guard_core::classify_function`].
///
/// # Safety
/// `query` is the analysed query being planned.
pub unsafe fn check_query_calls(query: *mut pg_sys::Query) {
    if crate::api::classifying() {
        return;
    }
    let calls = unsafe { crate::extract::called_functions(query as *mut pg_sys::Node) };
    for (oid, first) in calls {
        if first.is_none() {
            continue; // judged by the object-access hook as it runs
        }
        let Some(f) = crate::functions::facts(oid) else {
            continue;
        };
        let mut facts = f.facts.clone();
        facts.first_argument = first;
        let ctx = crate::functions::current_context(&f);
        let Some(c) = agent_guard_core::classify_function(&facts, ctx) else {
            continue;
        };
        refuse_denied_call(&c);
    }
}

/// A fast-path function call (libpq `PQfn`, which the large-object API
/// uses): a top-level statement of its own, classified like a call of the
/// function in SQL (a plain call is a read), checked against the sponsor
/// rule and grants, and recorded. Its record ends with its transaction.
pub fn fast_path_call(funcid: pg_sys::Oid, is_agent: bool) {
    let Some(f) = crate::functions::facts(funcid) else {
        return;
    };
    let qualified = f.facts.qualified();
    let call = agent_guard_core::classify_function(&f.facts, crate::functions::current_context(&f));
    let mut c = call.unwrap_or_else(|| {
        Classification::new(
            "FASTPATH FUNCTION CALL",
            agent_guard_core::Risk::Read,
            format!("fast-path call of {qualified}()"),
        )
    });
    c.command = format!("FASTPATH {}", c.command);
    c.objects.push(format!("{qualified}()"));
    let text = format!(
        "fast-path function call {qualified}() (oid {})",
        funcid.to_u32()
    );
    c.statement = Some(text.clone());
    let d = if is_agent {
        crate::grants::begin_statement(&c, 0);
        decide_current(&c)
    } else {
        Decision::NotEnforced
    };
    if crate::identity::guard_installed() && crate::audit::audits_session(is_agent, c.risk) {
        let text = crate::audit::StatementText {
            text: &text,
            params: None,
        };
        if let Err(why) = crate::audit::statement_start(&c, &d, &text, 0) {
            if is_agent {
                refuse_unaudited(&why);
            }
        }
    }
    if let Decision::Deny(r) = d {
        refuse(&r);
    }
}
