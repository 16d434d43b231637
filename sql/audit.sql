-- The audit trail: one row per statement of an agent session (and of other
-- sessions per agent_guard.audit_non_agents), allowed or refused, with how it
-- ended and how its transaction ended. Written only by agent_guard's audit
-- writer (a background worker), outside the user's transaction.

CREATE TABLE agent_guard.audit_log (
    id                  bigserial PRIMARY KEY,
    -- (session_key, statement_no) is unique by construction; the writer
    -- rechecks the newest rows after a restart instead of paying for an index
    session_key         text NOT NULL,
    statement_no        bigint NOT NULL,
    local_xact          bigint NOT NULL,
    subxact             integer,
    parent_statement    bigint,
    nesting_level       integer NOT NULL,
    started_at          timestamptz NOT NULL,
    -- ---- row layout (issue 14.6a): the session's context lives once per
    -- session in agent_guard.audit_sessions (session_id); what changes per
    -- statement stays here ----
    session_id          bigint NOT NULL,
    current_user_name   text,
    -- byte order (as role names have): every row goes into the (agent,
    -- started_at) index, which stays cheap whatever the database's locale
    agent               text COLLATE "C",
    backend_pid         integer,
    request_id          text,
    traceparent         text,
    command             text,
    risk                text,
    objects             text[],
    decision            text NOT NULL,
    reason              text,
    grant_id            bigint,
    statement_text      text,
    parameters          text[],
    -- how the statement ended (filled in when known)
    ended_at            timestamptz,
    rows_affected       bigint,
    outcome             text,
    sqlstate            text,
    error_message       text,
    transaction_id      bigint,
    transaction_outcome text,
    -- tamper evidence: SHA-256 digests, 32 bytes (the first row's prev_hash
    -- is the genesis value 'agent_guard' as its bytes); see
    -- agent_guard._hash_text()
    prev_hash           bytea,
    row_hash            bytea,
    outcome_hash        bytea
)
-- retention (issue 14.6b): partitions of id ranges, one per period; see sql/retention.sql
PARTITION BY RANGE (id);

COMMENT ON TABLE agent_guard.audit_log IS
    'Every audited statement, allowed or denied, with outcome and transaction outcome; hash-chained (see agent_guard.verify_audit())';

CREATE INDEX audit_log_agent_time ON agent_guard.audit_log (agent, started_at);
CREATE INDEX audit_log_request_id ON agent_guard.audit_log (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_log_started_at ON agent_guard.audit_log USING brin (started_at);
-- statements still running (the writer completes them when they end)
CREATE INDEX audit_log_running ON agent_guard.audit_log (session_key, statement_no)
    WHERE outcome IS NULL;
-- statements whose transaction has not ended yet (the writer completes them)
CREATE INDEX audit_log_open_xact ON agent_guard.audit_log (session_key, local_xact)
    WHERE transaction_outcome IS NULL;

REVOKE ALL ON agent_guard.audit_log FROM PUBLIC;
GRANT SELECT ON agent_guard.audit_log TO agent_guard_admin, agent_guard_approver;

-- ---- row layout (issue 14.6a): session context once per session ----
-- What stays the same for a session's statements, written by the audit
-- writer the first time it sees a session (and again when the context
-- changes: SET application_name, SET SESSION AUTHORIZATION, a new sponsor).
-- Not hashed on its own: every audit_log row's hashed content includes its
-- session row's columns (agent_guard._row_content), so a rewritten session
-- row breaks the chain at the first statement that refers to it.
CREATE TABLE agent_guard.audit_sessions (
    id                  bigserial PRIMARY KEY,
    session_key         text NOT NULL,
    session_user_name   text,
    login_role          text,
    sponsor             text,
    application_name    text,
    client_addr         text,
    database_name       text
);
COMMENT ON TABLE agent_guard.audit_sessions IS
    'The session context of agent_guard.audit_log rows (audit_log.session_id), once per session; covered by the rows'' hashes';
REVOKE ALL ON agent_guard.audit_sessions FROM PUBLIC;
GRANT SELECT ON agent_guard.audit_sessions TO agent_guard_admin, agent_guard_approver;

-- Rows written by 0.1.0 (ids up to v1_last_id) keep the hash formula they
-- were written with (agent_guard._row_content_v1); empty on a fresh install.
CREATE TABLE agent_guard.audit_layout (
    v1_last_id          bigint NOT NULL,
    converted_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON agent_guard.audit_layout FROM PUBLIC;
GRANT SELECT ON agent_guard.audit_layout TO agent_guard_admin;
-- ---- end of row layout block ----

-- Purges leave an anchor so the remaining chain still verifies.
CREATE TABLE agent_guard.audit_purges (
    id            bigserial PRIMARY KEY,
    purged_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    purged_by     name NOT NULL DEFAULT session_user,
    older_than    timestamptz NOT NULL,
    rows_purged   bigint NOT NULL,
    anchor_hash   text
);
REVOKE ALL ON agent_guard.audit_purges FROM PUBLIC;

-- The trail is part of a database's dump: pg_dump carries its rows (with their
-- ids and hashes, so verify_audit() holds on the restored copy) and the ids'
-- sequences; the writer continues the chain from the last restored row.
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_purges', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_purges_id_seq', '');
-- (row layout, issue 14.6a)
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_sessions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_layout', '');

-- ---- row layout (issue 14.6a): hashed content ----
-- The hashed content of a row: its immutable columns and its session's
-- context, time zone independent (src/audit/row.rs writes the same text).
CREATE FUNCTION agent_guard._row_content(a agent_guard.audit_log, s agent_guard.audit_sessions) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.jsonb_build_array(
    a.id, a.session_key, a.statement_no, a.local_xact, a.subxact, a.parent_statement,
    a.nesting_level, (EXTRACT(epoch FROM a.started_at) * 1000000)::bigint,
    s.session_user_name, a.current_user_name, a.agent, s.login_role, s.sponsor, s.application_name,
    s.client_addr, a.backend_pid, s.database_name, a.request_id, a.traceparent, a.command, a.risk,
    a.objects, a.decision, a.reason, a.grant_id, a.statement_text, a.parameters,
    a.session_id, s.session_key)::text
$$;

-- The hashed content of a row written by 0.1.0 (id <= audit_layout.v1_last_id):
-- 0.1.0's formula, its session columns read from the session row the
-- upgrade moved them to, its event_key (session_key:statement_no by
-- construction) rebuilt.
CREATE FUNCTION agent_guard._row_content_v1(a agent_guard.audit_log, s agent_guard.audit_sessions) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.jsonb_build_array(
    a.id, a.session_key || ':' || a.statement_no::text, a.session_key, a.statement_no, a.local_xact, a.subxact, a.parent_statement,
    a.nesting_level, (EXTRACT(epoch FROM a.started_at) * 1000000)::bigint,
    s.session_user_name, a.current_user_name, a.agent, s.login_role, s.sponsor, s.application_name,
    s.client_addr, a.backend_pid, s.database_name, a.request_id, a.traceparent, a.command, a.risk,
    a.objects, a.decision, a.reason, a.grant_id, a.statement_text, a.parameters)::text
$$;

-- A stored hash as the chain's text: 32 bytes as lowercase hex, anything
-- else (the genesis value) as its text (agent_guard_core::chain::hash_text).
CREATE FUNCTION agent_guard._hash_text(h bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE WHEN pg_catalog.length(h) = 32 THEN pg_catalog.encode(h, 'hex')
            ELSE pg_catalog.convert_from(h, 'UTF8') END
$$;

-- The stored form of a chain hash text (the inverse of _hash_text).
CREATE FUNCTION agent_guard._hash_bytes(t text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE WHEN pg_catalog.length(t) = 64 AND pg_catalog.ltrim(t, '0123456789abcdef') = ''
            THEN pg_catalog.decode(t, 'hex')
            ELSE pg_catalog.convert_to(t, 'UTF8') END
$$;
-- ---- end of row layout block ----

-- The hashed outcome of a row.
CREATE FUNCTION agent_guard._outcome_content(a agent_guard.audit_log) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.jsonb_build_array(
    (EXTRACT(epoch FROM a.ended_at) * 1000000)::bigint, a.rows_affected, a.outcome,
    a.sqlstate, a.error_message, a.transaction_id, a.transaction_outcome)::text
$$;

-- Nobody changes the trail but its writer: not even superusers (short of
-- disabling the trigger, which verify_audit() then exposes).
CREATE FUNCTION agent_guard._protect_audit() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF agent_guard._audit_writer() THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'agent_guard''s audit trail cannot be changed (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Old rows can be removed with agent_guard.purge_audit(older_than), which records itself in the trail.';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();
CREATE TRIGGER audit_purges_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_purges
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();
-- (row layout, issue 14.6a)
CREATE TRIGGER audit_sessions_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();
CREATE TRIGGER audit_layout_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_layout
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();

-- For people: one row per statement, newest first.
CREATE VIEW agent_guard.audit_trail AS
SELECT a.id,
       a.started_at,
       a.ended_at - a.started_at                        AS duration,
       a.agent,
       s.sponsor,
       s.session_user_name                              AS session_user,
       a.current_user_name                              AS current_user,
       s.application_name,
       s.client_addr,
       a.request_id,
       a.nesting_level,
       a.command,
       a.risk,
       a.objects,
       a.decision,
       a.reason,
       a.grant_id,
       a.statement_text,
       a.parameters,
       a.rows_affected,
       CASE
           WHEN a.outcome = 'error' THEN 'error ' || coalesce(a.sqlstate, '')
           ELSE coalesce(a.outcome, 'running')
       END                                              AS outcome,
       a.error_message,
       coalesce(a.transaction_outcome, 'in progress')   AS transaction,
       a.transaction_id
FROM agent_guard.audit_log a
LEFT JOIN agent_guard.audit_sessions s ON s.id = a.session_id
ORDER BY a.id DESC;

COMMENT ON VIEW agent_guard.audit_trail IS 'The audit trail for people: who did what, when, how it ended';
GRANT SELECT ON agent_guard.audit_trail TO agent_guard_admin, agent_guard_approver;

-- One jsonb document per row, for a SIEM.
CREATE FUNCTION agent_guard.audit_export(since timestamptz, until timestamptz DEFAULT pg_catalog.now())
RETURNS SETOF jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT (pg_catalog.to_jsonb(a) - 'prev_hash' - 'row_hash' - 'outcome_hash')
       || coalesce(pg_catalog.to_jsonb(s) - 'id' - 'session_key', '{}')
       || pg_catalog.jsonb_build_object('row_hash', agent_guard._hash_text(a.row_hash))
FROM agent_guard.audit_log a
LEFT JOIN agent_guard.audit_sessions s ON s.id = a.session_id
WHERE a.started_at >= since AND a.started_at < until
ORDER BY a.id
$$;
REVOKE ALL ON FUNCTION agent_guard.audit_export(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.audit_export(timestamptz, timestamptz) TO agent_guard_admin;

REVOKE ALL ON FUNCTION agent_guard.purge_audit(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard.verify_audit() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.verify_audit() TO agent_guard_admin;
-- chain heads for an external system to keep, and their check (issue 14.5)
REVOKE ALL ON FUNCTION agent_guard.audit_anchor() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.audit_anchor() TO agent_guard_admin;
REVOKE ALL ON FUNCTION agent_guard.verify_audit_anchor(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.verify_audit_anchor(bigint, text) TO agent_guard_admin;
