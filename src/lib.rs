//! agent_guard: request-level control of AI agents inside PostgreSQL.
//!
//! One statement's path, in one direction:
//!
//! ```text
//! hooks (thin FFI adapters)
//!   -> extract   PostgreSQL's trees -> agent_guard_core::Facts
//!   -> identity  who is acting: agent, sponsor, request id (cached per backend)
//!   -> core::classify  facts -> risk            (pure Rust, unit-tested)
//!   -> core::decide    who + risk -> decision  (pure Rust, unit-tested)
//!   -> enforce   refuse with SQLSTATE 42501, or let PostgreSQL run it
//! ```
//!
//! The library must be in `shared_preload_libraries`: hooks, settings, the
//! shared generation counter and the security-label provider are installed
//! only at postmaster start, so no client can route around them.

use pgrx::prelude::*;

mod api;
mod audit;
mod catalog;
mod compat;
mod enforce;
mod extract;
mod functions;
mod grants;
mod gucs;
mod hooks;
mod identity;
mod labels;
mod lexer;
mod masking;
mod registry;
mod review;
mod search_path;
mod shmem;
mod statement;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/registry.sql",
    name = "registry",
    requires = [
        "schema",
        registry::register_agent,
        registry::unregister_agent,
        registry::registered_agents,
        registry::registry_check,
        registry::repair_registry,
        registry::registry_changed_bump,
        api::sponsor_status
    ]
);
extension_sql_file!(
    "../sql/classify.sql",
    name = "classify",
    requires = [api::classify_sql]
);
extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = [
        "schema",
        audit::functions::_link,
        audit::functions::_audit_writer,
        audit::functions::purge_audit,
        audit::functions::verify_audit,
        audit::functions::audit_anchor,
        audit::functions::verify_audit_anchor
    ]
);
extension_sql_file!(
    "../sql/retention.sql",
    name = "retention",
    requires = ["audit", audit::retention::apply_retention]
);
extension_sql_file!(
    "../sql/forward.sql",
    name = "forward",
    requires = [
        "audit",
        audit::ingest::ingest_forwarded,
        audit::ingest::verify_forwarded,
        audit::ingest::purge_forwarded
    ]
);
extension_sql_file!(
    "../sql/grants.sql",
    name = "grants",
    requires = [
        "schema",
        grants::request_access,
        grants::approve,
        grants::deny,
        grants::revoke
    ]
);
extension_sql_file!(
    "../sql/review.sql",
    name = "review",
    requires = [
        "schema",
        "registry",
        "audit",
        "grants",
        "masking",
        review::review_check,
        review::review_assess,
        review::review_rank,
        review::guard_presence,
        review::review_markdown
    ]
);
extension_sql_file!(
    "../sql/masking.sql",
    name = "masking",
    requires = [
        "schema",
        api::is_agent_session,
        masking::functions::masking_changed,
        masking::functions::hash,
        masking::label::mask_expression,
        masking::effective::masking_rules_srf,
        masking::effective::masking_taints_srf,
        masking::sync::masking_sync,
        masking::discover::suggest_sensitive
    ]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// True once `_PG_init` ran inside the postmaster's preload step.
static mut LOADED_AT_STARTUP: bool = false;

/// Whether hooks are installed (the library was preloaded).
pub fn hooks_active() -> bool {
    unsafe { LOADED_AT_STARTUP }
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            // Loaded on demand (CREATE EXTENSION without preload): install
            // nothing; the extension script refuses with a clear message.
            return;
        }
        LOADED_AT_STARTUP = true;
    }
    // (before gucs::init(), which reserves the agent_guard. prefix)
    audit::forward::init_gucs();
    audit::retention::init();
    gucs::init();
    shmem::init();
    audit::init();
    identity::init();
    labels::register_provider();
    masking::init();
    hooks::install();
    review::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_matches_the_crate() {
        let v = Spi::get_one::<String>("SELECT agent_guard.version()")
            .unwrap()
            .unwrap();
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
    }

    #[pg_test]
    fn status_reports_hooks_active_when_preloaded() {
        let active = Spi::get_one::<bool>("SELECT (agent_guard.status()->>'hooks_active')::bool")
            .unwrap()
            .unwrap();
        assert!(active);
    }

    #[pg_test]
    fn classify_reports_one_row_per_statement() {
        Spi::run("CREATE TABLE ag_t(id int)").unwrap();
        let risks = Spi::get_one::<String>(
            "SELECT string_agg(risk, ',' ORDER BY statement_no) FROM agent_guard.classify('SELECT 1; DELETE FROM ag_t; DROP TABLE ag_t; GRANT SELECT ON ag_t TO public; VACUUM ag_t')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(risks, "read,write,ddl,privilege,admin");
    }

    #[pg_test]
    fn classify_sees_sensitive_columns_through_views() {
        Spi::run("CREATE TABLE ag_c(id int, ssn text)").unwrap();
        Spi::run("SECURITY LABEL FOR agent_guard ON COLUMN ag_c.ssn IS 'SENSITIVE'").unwrap();
        Spi::run("CREATE VIEW ag_v AS SELECT id, ssn FROM ag_c").unwrap();
        let risk =
            Spi::get_one::<String>("SELECT risk FROM agent_guard.classify('SELECT ssn FROM ag_v')")
                .unwrap()
                .unwrap();
        assert_eq!(risk, "sensitive_read");
        // A view that does not expose the column reads it not at all.
        Spi::run("CREATE VIEW ag_names AS SELECT id FROM ag_c").unwrap();
        let risk = Spi::get_one::<String>(
            "SELECT risk FROM agent_guard.classify('SELECT id FROM ag_names')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(risk, "read");
    }

    #[pg_test(
        error = "\"SECRET\" is not a valid agent_guard column label; accepted: 'SENSITIVE', 'MASKED WITH FUNCTION schema.function(column, ...)', 'MASKED WITH VALUE NULL' or 'MASKED WITH VALUE <constant>'"
    )]
    fn unknown_column_labels_are_rejected() {
        Spi::run("CREATE TABLE ag_l(id int, x text)").unwrap();
        Spi::run("SECURITY LABEL FOR agent_guard ON COLUMN ag_l.x IS 'SECRET'").unwrap();
    }

    #[pg_test]
    fn current_context_is_jsonb_with_request_id() {
        Spi::run("SET LOCAL agent_guard.request_id = 'req-1'").unwrap();
        let id = Spi::get_one::<String>("SELECT agent_guard.current_context()->>'request_id'")
            .unwrap()
            .unwrap();
        assert_eq!(id, "req-1");
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'agent_guard'"]
    }
}
