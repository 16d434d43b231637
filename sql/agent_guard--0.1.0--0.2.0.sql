-- agent_guard 0.1.0 -> 0.2.0, run by ALTER EXTENSION agent_guard UPDATE.
-- Every change of the install script between the two versions, in order;
-- scripts/upgrade-test.sh checks that the result equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION agent_guard UPDATE" to load this file. \quit

-- ---- row layout (issue 14.6a): session context once per session, hashes
-- as bytea, no event_key (sql/audit.sql's "row layout" blocks) ----
-- Conversion of a 0.1.0 trail. Its rows keep the hashes they were written
-- with, and keep verifying with the formula they were written with: the
-- newest 0.1.0 row's id is recorded in agent_guard.audit_layout and
-- verify_audit() uses agent_guard._row_content_v1 up to it. Re-chaining the
-- old rows instead would overwrite the very hashes an auditor (or an
-- external anchor from audit_anchor(), or the writer's head file) already
-- holds; keeping them means every anchor taken under 0.1.0 still holds.
-- Nothing is lost: the session columns move to agent_guard.audit_sessions
-- (one row per distinct context of a session, which _row_content_v1 reads
-- back), event_key is session_key:statement_no by construction (rebuilt),
-- and hex hashes become their 32 bytes (the chain's text is the same,
-- agent_guard._hash_text). Moving the boundary by hand breaks the chain at
-- the rows it moves past (they no longer match either formula's hash).
LOCK TABLE agent_guard.audit_log IN ACCESS EXCLUSIVE MODE;
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
INSERT INTO agent_guard.audit_layout (v1_last_id)
SELECT max(id) FROM agent_guard.audit_log HAVING max(id) IS NOT NULL;
INSERT INTO agent_guard.audit_sessions (session_key, session_user_name, login_role, sponsor,
                                        application_name, client_addr, database_name)
SELECT session_key, session_user_name, login_role, sponsor, application_name, client_addr, database_name
FROM agent_guard.audit_log
GROUP BY session_key, session_user_name, login_role, sponsor, application_name, client_addr, database_name
ORDER BY min(id);
ALTER TABLE agent_guard.audit_log ADD COLUMN session_id bigint;
ALTER TABLE agent_guard.audit_log DISABLE TRIGGER audit_log_append_only;
UPDATE agent_guard.audit_log a SET session_id = s.id
FROM agent_guard.audit_sessions s
WHERE s.session_key = a.session_key
  AND s.session_user_name IS NOT DISTINCT FROM a.session_user_name
  AND s.login_role IS NOT DISTINCT FROM a.login_role
  AND s.sponsor IS NOT DISTINCT FROM a.sponsor
  AND s.application_name IS NOT DISTINCT FROM a.application_name
  AND s.client_addr IS NOT DISTINCT FROM a.client_addr
  AND s.database_name IS NOT DISTINCT FROM a.database_name;
ALTER TABLE agent_guard.audit_log ENABLE TRIGGER audit_log_append_only;
DROP VIEW agent_guard.audit_trail;
DROP FUNCTION agent_guard._row_content(agent_guard.audit_log);
ALTER TABLE agent_guard.audit_log
    ALTER COLUMN session_id SET NOT NULL,
    DROP COLUMN event_key,
    DROP COLUMN session_user_name,
    DROP COLUMN login_role,
    DROP COLUMN sponsor,
    DROP COLUMN application_name,
    DROP COLUMN client_addr,
    DROP COLUMN database_name,
    ALTER COLUMN prev_hash TYPE bytea USING agent_guard._hash_bytes(prev_hash),
    ALTER COLUMN row_hash TYPE bytea USING agent_guard._hash_bytes(row_hash),
    ALTER COLUMN outcome_hash TYPE bytea USING agent_guard._hash_bytes(outcome_hash);
CREATE TRIGGER audit_sessions_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();
CREATE TRIGGER audit_layout_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_layout
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_sessions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_layout', '');
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

CREATE OR REPLACE FUNCTION agent_guard.audit_export(since timestamptz, until timestamptz DEFAULT pg_catalog.now())
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

CREATE OR REPLACE FUNCTION agent_guard.access_review_report(
    format text DEFAULT 'markdown',
    since  timestamptz DEFAULT pg_catalog.now() - interval '90 days'
) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    fmt      text := pg_catalog.lower(pg_catalog.btrim(coalesce(format, '')));
    actors   jsonb;
    findings jsonb;
    actions  jsonb;
    columns  jsonb;
    chain    jsonb;
    doc      jsonb;
    now_     timestamptz := pg_catalog.clock_timestamp();
BEGIN
    PERFORM agent_guard._review_check('access_review_report');
    IF fmt NOT IN ('markdown', 'md', 'json') THEN
        RAISE EXCEPTION 'unknown report format "%"', format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''markdown'' (the default) or ''json''.';
    END IF;

    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) - 'n' ORDER BY r.n), '[]')
    INTO actors
    FROM (SELECT q.*, pg_catalog.row_number() OVER () AS n
          FROM agent_guard.access_review(since) q) r;

    SELECT coalesce(pg_catalog.jsonb_agg(
               pg_catalog.jsonb_build_object('role', x.a->>'role', 'kind', x.a->>'kind') || x.f
               ORDER BY agent_guard._review_rank(x.f->>'severity', x.f->>'code'), x.a->>'role', x.i), '[]')
    INTO findings
    FROM (SELECT r.a, e.f, e.i
          FROM pg_catalog.jsonb_array_elements(actors) AS r(a)
          CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(r.a->'findings') WITH ORDINALITY AS e(f, i)) x;

    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'audit_id', a.id,
               'at', a.started_at,
               'who', coalesce(s.login_role, s.session_user_name),
               'agent', a.agent,
               'sponsor', s.sponsor,
               'application', s.application_name,
               'client_addr', s.client_addr,
               'risk', a.risk,
               'command', a.command,
               'objects', a.objects,
               'decision', a.decision,
               'reason', a.reason,
               'outcome', CASE WHEN a.outcome = 'error' THEN 'error ' || coalesce(a.sqlstate, '')
                               ELSE a.outcome END,
               'transaction', a.transaction_outcome,
               'rows', a.rows_affected,
               'request_id', a.request_id,
               'nesting_level', a.nesting_level,
               'grant', a.grant_id,
               'requested_by', q.login_name,
               'requested_at', q.requested_at,
               'request_reason', q.reason,
               'approved_by', q.decided_by,
               'approved_at', q.decided_at,
               'approval_note', q.decision_note,
               'grant_expires_at', q.expires_at,
               'statement', pg_catalog.left(a.statement_text, 1000))
               ORDER BY a.id), '[]')
    INTO actions
    FROM agent_guard.audit_log a
    LEFT JOIN agent_guard.audit_sessions s ON s.id = a.session_id
    LEFT JOIN agent_guard.access_requests q ON q.id = a.grant_id
    WHERE a.started_at >= since
      AND a.risk IN ('write', 'ddl', 'privilege', 'admin');

    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'schema', u.schema_name, 'table', u.table_name, 'column', u.column_name, 'reason', u.reason)
               ORDER BY u.schema_name, u.table_name, u.column_name), '[]')
    INTO columns
    FROM agent_guard._review_unlabelled() u;

    SELECT pg_catalog.to_jsonb(v) INTO chain FROM agent_guard.verify_audit() v;

    doc := pg_catalog.jsonb_build_object(
        'title', 'agent_guard access review',
        'scope', pg_catalog.jsonb_build_object(
            'cluster_name', NULLIF(pg_catalog.current_setting('cluster_name'), ''),
            'system_identifier', (SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s),
            'server_address', pg_catalog.host(pg_catalog.inet_server_addr()),
            'server_port', pg_catalog.current_setting('port')::integer,
            'server_version', pg_catalog.current_setting('server_version'),
            'database', pg_catalog.current_database(),
            'agent_guard_version', agent_guard.version(),
            'generated_at', now_,
            'generated_by', session_user),
        'period', pg_catalog.jsonb_build_object('from', since, 'to', now_),
        'summary', pg_catalog.jsonb_build_object(
            'actors', pg_catalog.jsonb_array_length(actors),
            'by_kind', (SELECT pg_catalog.jsonb_build_object(
                            'agent',   count(*) FILTER (WHERE a->>'kind' = 'agent'),
                            'human',   count(*) FILTER (WHERE a->>'kind' = 'human'),
                            'service', count(*) FILTER (WHERE a->>'kind' = 'service'),
                            'unknown', count(*) FILTER (WHERE a->>'kind' = 'unknown'))
                        FROM pg_catalog.jsonb_array_elements(actors) AS t(a)),
            'findings_by_severity', (SELECT pg_catalog.jsonb_build_object(
                            'critical', count(*) FILTER (WHERE f->>'severity' = 'critical'),
                            'high',     count(*) FILTER (WHERE f->>'severity' = 'high'),
                            'medium',   count(*) FILTER (WHERE f->>'severity' = 'medium'),
                            'low',      count(*) FILTER (WHERE f->>'severity' = 'low'),
                            'info',     count(*) FILTER (WHERE f->>'severity' = 'info'))
                        FROM pg_catalog.jsonb_array_elements(findings) AS t(f)),
            'high_risk_actions', pg_catalog.jsonb_array_length(actions),
            'high_risk_denied', (SELECT count(*) FROM pg_catalog.jsonb_array_elements(actions) AS t(x)
                                 WHERE x->>'decision' = 'denied')),
        'audit_chain', chain,
        'findings', findings,
        'actors', actors,
        'high_risk_actions', actions,
        'unlabelled_sensitive_columns', columns,
        'method', pg_catalog.jsonb_build_array(
            'Roles, attributes, memberships and privileges: this database''s catalog at generation time. Rights count through the whole membership closure (every role a login role can SET ROLE to), PUBLIC, ownership, superuser, pg_read_all_data and pg_write_all_data.',
            'Activity: agent_guard.audit_log (every agent statement; other sessions as agent_guard.audit_non_agents configures) and agent_guard.activity_samples (pg_stat_activity samples of the whole cluster).',
            'Grants and approvals: agent_guard.access_requests; each high-risk action is joined to the grant that allowed it.',
            'Rights never used are revocation candidates only where the trail covers the role; for unaudited humans they are not computed.',
            'Kinds: agent = registered with agent_guard; service = not registered but machine-like sessions (CI, AI or driver application names, many short sessions, activity around the clock); human = sponsor, approver, administrator or interactive clients; unknown = no evidence either way.'));

    IF fmt = 'json' THEN
        RETURN pg_catalog.jsonb_pretty(doc);
    END IF;
    RETURN agent_guard._review_markdown(doc);
END
$$;
-- ---- end of row layout block ----

-- classify(): the cast to oid is qualified (nothing resolves through the
-- caller's search_path but the statement under test).
CREATE OR REPLACE FUNCTION agent_guard.classify(sql text, as_role regrole DEFAULT NULL)
RETURNS TABLE (
    statement_no      int,
    command           text,
    risk              text,
    objects           text[],
    sensitive_columns text[],
    decision          text,
    reason            text
)
LANGUAGE sql VOLATILE
-- runs with the caller's search_path: names in sql resolve as they would when run
AS $$ SELECT * FROM agent_guard._classify(sql, as_role::pg_catalog.oid) $$;

-- masking_rules and masking_taints: computed from the catalog by the library
-- (the same definition the hooks use, read without running a query).
CREATE FUNCTION agent_guard."_masking_rules"() RETURNS TABLE (
	"relation" oid,
	"attnum" smallint,
	"column_name" TEXT,
	"column_type" TEXT,
	"rule" TEXT,
	"inherited_from" oid,
	"generated_from" TEXT,
	"masking_view" oid
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'masking_rules_srf_wrapper';

CREATE FUNCTION agent_guard."_masking_taints"() RETURNS TABLE (
	"relation" oid,
	"built_from" oid[],
	"labelled" bool,
	"recorded" bool
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'masking_taints_srf_wrapper';

-- (dropped and made again: column_name's collation changes from "C" to the default)
DROP VIEW agent_guard.masking_taints;
DROP VIEW agent_guard.masking_rules;

CREATE VIEW agent_guard.masking_rules AS
SELECT r.relation::pg_catalog.regclass       AS relation,
       r.attnum,
       r.column_name::pg_catalog.name         AS column_name,
       r.column_type,
       r.rule,
       r.inherited_from::pg_catalog.regclass AS inherited_from,
       r.generated_from::pg_catalog.name      AS generated_from,
       r.masking_view::pg_catalog.regclass   AS masking_view
FROM agent_guard._masking_rules() r;

COMMENT ON VIEW agent_guard.masking_rules IS
    'Masked columns (labelled, generated from labelled columns, or inherited by partitions and children), their rules and masking views';
GRANT SELECT ON agent_guard.masking_rules TO PUBLIC;

-- what each materialized view's last population read (src/masking/population.rs)
CREATE TABLE agent_guard.matview_populations (
    matview      oid NOT NULL,
    populated_at timestamptz NOT NULL,
    populated_by oid NOT NULL
);
CREATE TABLE agent_guard.matview_reads (
    matview  oid NOT NULL,
    relation oid NOT NULL,
    columns  int2[] NOT NULL   -- attribute numbers; 0: the whole row
);
REVOKE ALL ON agent_guard.matview_populations, agent_guard.matview_reads FROM PUBLIC;
COMMENT ON TABLE agent_guard.matview_populations IS
    'The last population of each materialized view agent_guard saw (recorded by its hooks)';
COMMENT ON TABLE agent_guard.matview_reads IS
    'What each recorded population read: relation and attribute numbers (0: the whole row)';

CREATE VIEW agent_guard.masking_taints AS
SELECT t.relation::pg_catalog.regclass      AS relation,
       t.built_from::pg_catalog.regclass[] AS built_from,
       t.labelled,
       t.recorded
FROM agent_guard._masking_taints() t;

COMMENT ON VIEW agent_guard.masking_taints IS
    'Materialized views built from masked columns (by what their population read): agents may not read those without labels of their own, nor refresh any';
GRANT SELECT ON agent_guard.masking_taints TO PUBLIC;

-- other sessions' query texts as agents read them (src/masking/activity.rs)
CREATE FUNCTION agent_guard."redact_query"(
	"text" TEXT
) RETURNS TEXT
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'redact_query_wrapper';

-- ---- registrations survive dump and restore (0.2.0) ----
ALTER TABLE agent_guard.agent_registry ADD COLUMN system_identifier text;

-- The trail is part of a database's dump (its rows with ids and hashes).
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_purges', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_purges_id_seq', '');

CREATE FUNCTION agent_guard."_registry_changed_bump"() RETURNS bool /* bool */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'registry_changed_bump_wrapper';

CREATE FUNCTION agent_guard."registry_check"() RETURNS TABLE (
	"agent_name" TEXT,  /* String */
	"registered_oid" oid,  /* pg_sys :: Oid */
	"state" TEXT,  /* String */
	"role_oid" oid,  /* Option < pg_sys :: Oid > */
	"role_name" TEXT,  /* Option < String > */
	"sponsor_name" TEXT,  /* String */
	"kind" TEXT,  /* String */
	"detail" TEXT  /* String */
)
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'registry_check_wrapper';

CREATE FUNCTION agent_guard."_repair_registry"(
	"forget_unmatched" bool /* bool */
) RETURNS TABLE (
	"agent_name" TEXT,  /* String */
	"registered_oid" oid,  /* Option < pg_sys :: Oid > */
	"state" TEXT,  /* String */
	"action" TEXT  /* String */
)
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'repair_registry_wrapper';

-- Rows of agent_registry restored (pg_restore) or changed by hand move the
-- registry generation, so sessions re-read who is an agent.
CREATE FUNCTION agent_guard._registry_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM agent_guard._registry_changed_bump();
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._registry_changed_bump() FROM PUBLIC;
CREATE TRIGGER agent_registry_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON agent_guard.agent_registry
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._registry_changed();

-- Whether this database's registry rows match the cluster's role labels
-- (after a restore they may not): one row per role concerned.
REVOKE ALL ON FUNCTION agent_guard.registry_check() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.registry_check() TO agent_guard_admin;
COMMENT ON FUNCTION agent_guard.registry_check() IS
    'Registry rows of this database and whether role labels confirm them: ok, renamed, moved (restored from another cluster), unmatched (its roles fail closed), gone';

CREATE FUNCTION agent_guard.repair_registry(forget_unmatched boolean DEFAULT false)
RETURNS TABLE (agent_name text, registered_oid oid, state text, action text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM agent_guard._repair_registry(forget_unmatched) $$;
REVOKE ALL ON FUNCTION agent_guard.repair_registry(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._repair_registry(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.repair_registry(boolean) TO agent_guard_admin;
COMMENT ON FUNCTION agent_guard.repair_registry(boolean) IS
    'After a restore: relink registry rows to the roles their labels are on, re-write labels restored from another cluster, remove rows of dropped roles (and, with forget_unmatched, rows no label confirms)';

CREATE OR REPLACE FUNCTION agent_guard._review_facts(since timestamptz, presence jsonb)
RETURNS TABLE (
    role_oid oid, role name, agent name, sponsor name, sponsor_status text,
    can_login boolean, valid_until timestamptz,
    superuser boolean, createrole boolean, createdb boolean, bypassrls boolean, replication boolean,
    member_of name[], pg_roles name[], table_privileges jsonb, can_write boolean, can_ddl boolean,
    risks_used text[], commands_used text[], objects_used text[],
    statements_by_risk jsonb, statements bigint, refusals bigint,
    grants_requested bigint, grants_approved bigint, approved_by name[],
    sessions bigint, application_names text[], last_activity timestamptz,
    facts jsonb)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
WITH RECURSIVE
reg AS MATERIALIZED (
    SELECT g.agent, g.sponsor, g.sponsor_name, agent_guard.sponsor_status(g.sponsor) AS sponsor_status
    FROM agent_guard._registered_agents() g
),
-- registry rows of this database that no role label confirms (restores): per role concerned
stale AS MATERIALIZED (
    SELECT c.* FROM agent_guard.registry_check() c
    WHERE c.state IN ('unmatched', 'moved') AND c.role_oid IS NOT NULL
),
-- every role a role can act as (itself, and every role it is a member of,
-- directly or not, with or without INHERIT: it can SET ROLE to them), with
-- the first step of the shortest way there
reach (role, target, first_hop, depth) AS (
    SELECT r.oid, r.oid, NULL::oid, 0 FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_'
    UNION
    SELECT x.role, m.roleid, coalesce(x.first_hop, m.roleid), x.depth + 1
    FROM reach x JOIN pg_catalog.pg_auth_members m ON m.member = x.target
    WHERE x.depth < 32
),
closure AS MATERIALIZED (
    SELECT DISTINCT ON (x.role, x.target) x.role, x.target, x.first_hop, x.depth
    FROM reach x ORDER BY x.role, x.target, x.depth
),
-- the registration that makes a role an agent: its own, else its nearest group's
registration AS MATERIALIZED (
    SELECT DISTINCT ON (c.role) c.role, g.agent, g.sponsor_name, g.sponsor_status, c.depth > 0 AS via_group
    FROM closure c JOIN reg g ON g.agent = c.target
    ORDER BY c.role, c.depth, g.agent
),
reviewed AS MATERIALIZED (
    SELECT r.oid, r.rolname, r.rolvaliduntil,
           r.rolcanlogin AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > pg_catalog.now()) AS can_login,
           NOT r.rolcanlogin AS group_row,
           g.agent AS reg_agent, ga.rolname AS reg_agent_name, g.sponsor_name, g.sponsor_status,
           coalesce(g.via_group, false) AS via_group
    FROM pg_catalog.pg_roles r
    LEFT JOIN registration g ON g.role = r.oid
    LEFT JOIN pg_catalog.pg_roles ga ON ga.oid = g.agent
    WHERE r.rolname !~ '^pg_'
      AND (r.rolcanlogin OR EXISTS (SELECT 1 FROM reg x WHERE x.agent = r.oid)
           OR EXISTS (SELECT 1 FROM stale x WHERE x.role_oid = r.oid))
),
rclosure AS MATERIALIZED (
    SELECT c.* FROM closure c JOIN reviewed v ON v.oid = c.role
),
attrs AS MATERIALIZED (
    SELECT DISTINCT ON (c.role, x.attr) c.role, x.attr, t.rolname AS source, h.rolname AS first_hop
    FROM rclosure c
    JOIN pg_catalog.pg_roles t ON t.oid = c.target
    LEFT JOIN pg_catalog.pg_roles h ON h.oid = c.first_hop
    CROSS JOIN LATERAL (VALUES ('superuser', t.rolsuper), ('createrole', t.rolcreaterole),
                               ('createdb', t.rolcreatedb), ('bypassrls', t.rolbypassrls),
                               ('replication', t.rolreplication)) AS x(attr, held)
    WHERE x.held
    ORDER BY c.role, x.attr, c.depth
),
-- memberships that matter: pg_* roles and agent_guard's own
special AS MATERIALIZED (
    SELECT DISTINCT ON (c.role, t.rolname) c.role, t.rolname AS name, src.rolname AS source,
           CASE WHEN c.depth = 0 THEN NULL ELSE h.rolname END AS first_hop
    FROM rclosure c
    JOIN pg_catalog.pg_auth_members m ON m.member = c.target
    JOIN pg_catalog.pg_roles t ON t.oid = m.roleid
    JOIN pg_catalog.pg_roles src ON src.oid = c.target
    LEFT JOIN pg_catalog.pg_roles h ON h.oid = c.first_hop
    WHERE t.rolname ~ '^pg_' OR t.rolname IN ('agent_guard_admin', 'agent_guard_approver')
    ORDER BY c.role, t.rolname, c.depth
),
rels AS MATERIALIZED (
    SELECT c.oid, c.relkind, n.nspname, c.relname, c.relowner, c.relrowsecurity,
           pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS qname,
           coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner)) AS acl
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^(pg_(toast|temp)|agent_guard$|agent_guard_)'
),
acl AS MATERIALIZED (
    SELECT r.oid AS rel, x.grantee, x.privilege_type AS priv
    FROM rels r CROSS JOIN LATERAL pg_catalog.aclexplode(r.acl) x
    WHERE x.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    UNION
    SELECT r.oid, r.relowner, p.priv
    FROM rels r CROSS JOIN (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) p(priv)
),
broad AS (
    SELECT x.role, p.priv
    FROM attrs x CROSS JOIN (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) p(priv)
    WHERE x.attr = 'superuser'
    UNION
    SELECT s.role, 'SELECT' FROM special s WHERE s.name = 'pg_read_all_data'
    UNION
    SELECT s.role, p.priv
    FROM special s CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('DELETE')) p(priv)
    WHERE s.name = 'pg_write_all_data'
),
-- table privileges held through the closure, PUBLIC, ownership, superuser,
-- pg_read_all_data and pg_write_all_data
held AS MATERIALIZED (
    SELECT c.role, a.rel, a.priv FROM rclosure c JOIN acl a ON a.grantee = c.target
    UNION
    SELECT v.oid, a.rel, a.priv FROM reviewed v CROSS JOIN acl a WHERE a.grantee = 0
    UNION
    SELECT b.role, r.oid, b.priv FROM broad b CROSS JOIN rels r
),
schema_totals AS (
    SELECT r.nspname, count(*) AS n FROM rels r GROUP BY r.nspname
),
privsum AS (
    SELECT q.role, pg_catalog.jsonb_object_agg(q.nspname, q.j) AS j
    FROM (
        SELECT h.role, r.nspname, pg_catalog.jsonb_build_object(
                   'relations', t.n,
                   'select',   count(DISTINCT h.rel) FILTER (WHERE h.priv = 'SELECT'),
                   'insert',   count(DISTINCT h.rel) FILTER (WHERE h.priv = 'INSERT'),
                   'update',   count(DISTINCT h.rel) FILTER (WHERE h.priv = 'UPDATE'),
                   'delete',   count(DISTINCT h.rel) FILTER (WHERE h.priv = 'DELETE'),
                   'truncate', count(DISTINCT h.rel) FILTER (WHERE h.priv = 'TRUNCATE')) AS j
        FROM held h
        JOIN rels r ON r.oid = h.rel
        JOIN schema_totals t ON t.nspname = r.nspname
        GROUP BY h.role, r.nspname, t.n
    ) q
    GROUP BY q.role
),
writes AS (
    SELECT h.role, array_agg(DISTINCT r.qname ORDER BY r.qname) AS tables
    FROM held h JOIN rels r ON r.oid = h.rel
    WHERE h.priv IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    GROUP BY h.role
),
owned AS (
    SELECT c.role, count(*) AS n FROM rclosure c JOIN rels r ON r.relowner = c.target GROUP BY c.role
),
nsps AS MATERIALIZED (
    SELECT n.oid, n.nspname, n.nspowner,
           coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner)) AS acl
    FROM pg_catalog.pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^(pg_(toast|temp)|agent_guard$|agent_guard_)'
),
nsp_create AS (
    SELECT n.oid, x.grantee FROM nsps n CROSS JOIN LATERAL pg_catalog.aclexplode(n.acl) x
    WHERE x.privilege_type = 'CREATE'
    UNION
    SELECT n.oid, n.nspowner FROM nsps n
),
ddl AS (
    SELECT q.role, array_agg(DISTINCT n.nspname ORDER BY n.nspname) AS schemas
    FROM (
        SELECT c.role, k.oid FROM rclosure c JOIN nsp_create k ON k.grantee = c.target
        UNION
        SELECT v.oid, k.oid FROM reviewed v JOIN nsp_create k ON k.grantee = 0
        UNION
        SELECT x.role, n.oid FROM attrs x CROSS JOIN nsps n WHERE x.attr = 'superuser'
    ) q
    JOIN nsps n ON n.oid = q.oid
    GROUP BY q.role
),
-- what the trail says each role did
audit AS MATERIALIZED (
    SELECT coalesce(s.login_role, s.session_user_name) AS who, a.agent AS agent_name,
           a.risk, a.decision, a.command, a.objects, a.started_at,
           coalesce(a.ended_at, a.started_at) AS ended_at, a.session_key,
           coalesce(s.application_name, '') AS app
    FROM agent_guard.audit_log a
    LEFT JOIN agent_guard.audit_sessions s ON s.id = a.session_id
    WHERE a.started_at >= since
      -- agent_guard's own bookkeeping of requests and decisions is not a right used
      AND coalesce(a.command, '') NOT LIKE 'ACCESS REQUEST %'
),
audit_keyed AS MATERIALIZED (
    SELECT v.oid AS role, u.* FROM reviewed v JOIN audit u ON u.who = v.rolname WHERE NOT v.group_row
    UNION ALL
    SELECT v.oid AS role, u.* FROM reviewed v JOIN audit u ON u.agent_name = v.rolname WHERE v.group_row
),
usage AS (
    SELECT k.role,
           count(*) AS statements,
           count(*) FILTER (WHERE k.decision = 'denied') AS refusals,
           array_agg(DISTINCT k.risk ORDER BY k.risk)
               FILTER (WHERE k.decision = 'allowed' AND k.risk IS NOT NULL) AS risks,
           array_agg(DISTINCT k.command ORDER BY k.command)
               FILTER (WHERE k.decision = 'allowed' AND k.command IS NOT NULL) AS commands,
           max(k.ended_at) AS last_at
    FROM audit_keyed k
    GROUP BY k.role
),
by_risk AS (
    SELECT q.role, pg_catalog.jsonb_object_agg(q.risk, q.n) AS j
    FROM (SELECT k.role, coalesce(k.risk, 'unclassified') AS risk, count(*) AS n
          FROM audit_keyed k GROUP BY 1, 2) q
    GROUP BY q.role
),
objects_used AS (
    SELECT k.role,
           array_agg(DISTINCT o ORDER BY o) AS objects,
           array_agg(DISTINCT o ORDER BY o) FILTER (WHERE k.risk IN ('write', 'ddl')) AS written
    FROM audit_keyed k CROSS JOIN LATERAL pg_catalog.unnest(k.objects) o
    WHERE k.decision = 'allowed'
    GROUP BY k.role
),
-- sessions: from the trail and from the activity samples
observed AS MATERIALIZED (
    SELECT k.role, k.session_key, k.app, k.started_at AS t0, k.ended_at AS t1 FROM audit_keyed k
    UNION ALL
    SELECT v.oid, s.session_key, s.application_name, s.backend_start, s.last_seen
    FROM reviewed v JOIN agent_guard.activity_samples s ON s.role_oid = v.oid
    WHERE NOT v.group_row AND s.last_seen >= since
    UNION ALL
    SELECT v.oid, s.session_key, s.application_name, s.backend_start, s.last_seen
    FROM reviewed v
    JOIN reviewed m ON m.reg_agent = v.oid AND m.oid <> v.oid
    JOIN agent_guard.activity_samples s ON s.role_oid = m.oid
    WHERE v.group_row AND s.last_seen >= since
),
session_stats AS (
    SELECT q.role, count(*) AS n,
           count(*) FILTER (WHERE q.t1 - q.t0 < interval '5 minutes') AS short,
           max(q.t1) AS last_at
    FROM (SELECT o.role, o.session_key, min(o.t0) AS t0, max(o.t1) AS t1
          FROM observed o GROUP BY o.role, o.session_key) q
    GROUP BY q.role
),
hours AS (
    SELECT o.role, count(DISTINCT pg_catalog.date_part('hour', t.ts AT TIME ZONE 'UTC')) AS n
    FROM observed o CROSS JOIN LATERAL (VALUES (o.t0), (o.t1)) t(ts)
    GROUP BY o.role
),
apps AS (
    SELECT q.role,
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('name', q.app, 'sessions', q.n)
                                ORDER BY q.n DESC, q.app) AS j,
           array_agg(q.app ORDER BY q.n DESC, q.app) AS names
    FROM (SELECT o.role, o.app, count(DISTINCT o.session_key) AS n
          FROM observed o GROUP BY o.role, o.app) q
    GROUP BY q.role
),
-- grants: requested and approved in the period, and by whom
requests AS MATERIALIZED (
    SELECT v.oid AS role, r.id, r.objects, r.expires_at, r.decided_by
    FROM reviewed v
    JOIN agent_guard.access_requests r
      ON (NOT v.group_row AND r.login = v.oid) OR (v.group_row AND r.agent = v.oid)
    WHERE r.requested_at >= since
),
req_stats AS (
    SELECT q.role, count(*) AS requested,
           count(*) FILTER (WHERE q.expires_at IS NOT NULL) AS approved,
           array_agg(DISTINCT q.decided_by ORDER BY q.decided_by) FILTER (WHERE q.expires_at IS NOT NULL) AS approvers,
           coalesce(bool_or(q.expires_at IS NOT NULL AND q.objects IS NULL), false) AS granted_any
    FROM requests q
    GROUP BY q.role
),
req_objects AS (
    SELECT q.role, array_agg(DISTINCT r.qname ORDER BY r.qname) AS objects
    FROM requests q
    LEFT JOIN agent_guard.grant_usage u ON u.request = q.id
    CROSS JOIN LATERAL pg_catalog.unnest(coalesce(q.objects::oid[], '{}')
                                         || coalesce(u.created_objects::oid[], '{}')) o
    JOIN rels r ON r.oid = o
    WHERE q.expires_at IS NOT NULL
    GROUP BY q.role
),
approvals_given AS (
    SELECT v.oid AS role, count(*) AS n
    FROM reviewed v JOIN agent_guard.access_requests r ON r.decided_by = v.rolname
    WHERE r.expires_at IS NOT NULL AND r.decided_at >= since
    GROUP BY v.oid
),
possible_approvers AS (
    SELECT coalesce(array_agg(DISTINCT r.rolname ORDER BY r.rolname), '{}') AS names
    FROM closure c
    JOIN pg_catalog.pg_roles t ON t.oid = c.target AND t.rolname = 'agent_guard_approver'
    JOIN pg_catalog.pg_roles r ON r.oid = c.role
    WHERE c.depth > 0 AND r.rolcanlogin AND NOT r.rolsuper
      AND NOT EXISTS (SELECT 1 FROM registration g WHERE g.role = r.oid)
),
members AS (
    SELECT g.oid AS role, array_agg(m.rolname ORDER BY m.rolname) AS names
    FROM reviewed g JOIN reviewed m ON m.reg_agent = g.oid AND m.oid <> g.oid AND m.can_login
    WHERE g.group_row
    GROUP BY g.oid
),
-- how much of a human's activity the trail holds (agent_guard.audit_non_agents
-- as configured: role and database settings over the configuration files)
role_setting AS (
    SELECT s.setrole, s.setdatabase, pg_catalog.substr(x, 30) AS val
    FROM pg_catalog.pg_db_role_setting s CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) x
    WHERE x LIKE 'agent\_guard.audit\_non\_agents=%'
      AND s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                                WHERE d.datname = pg_catalog.current_database()))
),
file_level AS (
    SELECT coalesce(
               (SELECT f.setting FROM pg_catalog.pg_file_settings f
                WHERE f.name = 'agent_guard.audit_non_agents' AND f.applied
                ORDER BY f.seqno DESC LIMIT 1),
               'none') AS val
),
unlabelled AS MATERIALIZED (
    SELECT * FROM agent_guard._review_unlabelled()
),
readable_unlabelled AS (
    SELECT v.oid AS role,
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'schema', u.schema_name, 'table', u.table_name, 'column', u.column_name, 'reason', u.reason)
               ORDER BY u.schema_name, u.table_name, u.column_name) AS j
    FROM reviewed v
    JOIN held h ON h.role = v.oid AND h.priv = 'SELECT'
    JOIN unlabelled u ON u.rel = h.rel
    WHERE v.reg_agent IS NOT NULL
    GROUP BY v.oid
),
dbs AS (
    SELECT v.oid AS role,
           array_agg(d.datname::text ORDER BY d.datname) FILTER (WHERE presence -> d.datname::text = 'false'::jsonb) AS without,
           array_agg(d.datname::text ORDER BY d.datname) FILTER (WHERE presence -> d.datname::text = 'null'::jsonb) AS unchecked
    FROM reviewed v CROSS JOIN pg_catalog.pg_database d
    WHERE v.reg_agent IS NOT NULL
      AND d.datallowconn
      AND d.datname <> pg_catalog.current_database()
      AND pg_catalog.has_database_privilege(v.oid, d.oid, 'CONNECT')
    GROUP BY v.oid
)
SELECT v.oid,
       v.rolname,
       v.reg_agent_name,
       v.sponsor_name::name,
       v.sponsor_status,
       v.can_login,
       v.rolvaliduntil,
       EXISTS (SELECT 1 FROM attrs x WHERE x.role = v.oid AND x.attr = 'superuser'),
       EXISTS (SELECT 1 FROM attrs x WHERE x.role = v.oid AND x.attr = 'createrole'),
       EXISTS (SELECT 1 FROM attrs x WHERE x.role = v.oid AND x.attr = 'createdb'),
       EXISTS (SELECT 1 FROM attrs x WHERE x.role = v.oid AND x.attr = 'bypassrls'),
       EXISTS (SELECT 1 FROM attrs x WHERE x.role = v.oid AND x.attr = 'replication'),
       (SELECT coalesce(array_agg(t.rolname ORDER BY t.rolname), '{}')
        FROM rclosure c JOIN pg_catalog.pg_roles t ON t.oid = c.target
        WHERE c.role = v.oid AND c.depth > 0),
       (SELECT coalesce(array_agg(s.name ORDER BY s.name), '{}')
        FROM special s WHERE s.role = v.oid AND s.name ~ '^pg_'),
       coalesce(ps.j, '{}'::jsonb),
       w.tables IS NOT NULL,
       d.schemas IS NOT NULL OR coalesce(ow.n, 0) > 0,
       coalesce(u.risks, '{}'),
       coalesce(u.commands, '{}'),
       coalesce(ou.objects, '{}'),
       coalesce(br.j, '{}'::jsonb),
       coalesce(u.statements, 0),
       coalesce(u.refusals, 0),
       coalesce(rs.requested, 0),
       coalesce(rs.approved, 0),
       coalesce(rs.approvers, '{}'),
       coalesce(ss.n, 0),
       coalesce(ap.names, '{}'),
       greatest(u.last_at, ss.last_at),
       pg_catalog.jsonb_build_object(
           'role', v.rolname,
           'group_row', v.group_row,
           'can_login', v.can_login,
           'members_can_login', pg_catalog.to_jsonb(coalesce(mb.names, '{}')),
           'registration', CASE WHEN v.reg_agent IS NULL THEN NULL ELSE pg_catalog.jsonb_build_object(
               'agent', v.reg_agent_name, 'via_group', v.via_group,
               'sponsor', v.sponsor_name, 'sponsor_status', v.sponsor_status) END,
           'is_sponsor', EXISTS (SELECT 1 FROM reg g WHERE g.sponsor = v.oid),
           'registry_problems', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                     'state', x.state, 'agent_name', x.agent_name,
                                     'registered_oid', x.registered_oid::bigint,
                                     'sponsor_name', x.sponsor_name, 'kind', x.kind)
                                     ORDER BY x.agent_name, x.registered_oid), '[]')
                                 FROM stale x WHERE x.role_oid = v.oid),
           'attributes', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                              'name', x.attr, 'source', x.source, 'first_hop', x.first_hop) ORDER BY x.attr), '[]')
                          FROM attrs x WHERE x.role = v.oid),
           'memberships', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                               'name', s.name, 'source', s.source, 'first_hop', s.first_hop) ORDER BY s.name), '[]')
                           FROM special s WHERE s.role = v.oid),
           'write_tables', pg_catalog.to_jsonb(coalesce(w.tables, '{}')),
           'ddl_schemas', pg_catalog.to_jsonb(coalesce(d.schemas, '{}')),
           'owned_relations', coalesce(ow.n, 0),
           'readable_unlabelled', coalesce(ru.j, '[]'::jsonb),
           'granted_objects', pg_catalog.to_jsonb(coalesce(ro.objects, '{}')),
           'granted_any', coalesce(rs.granted_any, false),
           'audit_level', CASE WHEN v.reg_agent IS NOT NULL THEN 'all' ELSE coalesce(
               (SELECT x.val FROM role_setting x WHERE x.setrole = v.oid ORDER BY x.setdatabase DESC LIMIT 1),
               (SELECT x.val FROM role_setting x WHERE x.setrole = 0 LIMIT 1),
               (SELECT f.val FROM file_level f)) END,
           'used_risks', pg_catalog.to_jsonb(coalesce(u.risks, '{}')),
           'used_commands', pg_catalog.to_jsonb(coalesce(u.commands, '{}')),
           'written_objects', pg_catalog.to_jsonb(coalesce(ou.written, '{}')),
           'rls_used', EXISTS (SELECT 1 FROM rels r WHERE r.relrowsecurity AND r.qname = ANY (ou.objects)),
           'statements', coalesce(u.statements, 0),
           'refusals', coalesce(u.refusals, 0),
           'approvals_given', coalesce(ag.n, 0),
           'approvers', pg_catalog.to_jsonb(coalesce(rs.approvers, '{}')),
           'possible_approvers', (SELECT pg_catalog.to_jsonb(p.names) FROM possible_approvers p),
           'sessions', coalesce(ss.n, 0),
           'short_sessions', coalesce(ss.short, 0),
           'hours_active', coalesce(hr.n, 0),
           'apps', coalesce(ap.j, '[]'::jsonb),
           'databases_without_guard', pg_catalog.to_jsonb(coalesce(db.without, '{}')),
           'databases_unchecked', pg_catalog.to_jsonb(coalesce(db.unchecked, '{}')),
           'active', coalesce(u.statements, 0) > 0 OR coalesce(ss.n, 0) > 0)
FROM reviewed v
LEFT JOIN privsum ps ON ps.role = v.oid
LEFT JOIN writes w ON w.role = v.oid
LEFT JOIN ddl d ON d.role = v.oid
LEFT JOIN owned ow ON ow.role = v.oid
LEFT JOIN usage u ON u.role = v.oid
LEFT JOIN by_risk br ON br.role = v.oid
LEFT JOIN objects_used ou ON ou.role = v.oid
LEFT JOIN session_stats ss ON ss.role = v.oid
LEFT JOIN hours hr ON hr.role = v.oid
LEFT JOIN apps ap ON ap.role = v.oid
LEFT JOIN req_stats rs ON rs.role = v.oid
LEFT JOIN req_objects ro ON ro.role = v.oid
LEFT JOIN approvals_given ag ON ag.role = v.oid
LEFT JOIN members mb ON mb.role = v.oid
LEFT JOIN readable_unlabelled ru ON ru.role = v.oid
LEFT JOIN dbs db ON db.role = v.oid
$$;

-- sponsor_status() answers "dropped" for a registration whose sponsor no
-- longer exists (labels name the sponsor; no OID is left to ask about).
CREATE OR REPLACE FUNCTION agent_guard."sponsor_status"(
	"sponsor" oid
) RETURNS TEXT
PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'sponsor_status_wrapper';

-- Hot standbys forward their agents' audit records to the primary
-- (agent_guard.standby_audit = forward): ingest_forwarded(), verify_forwarded(),
-- audit_forwarded, forward_sources (as sql/forward.sql).
CREATE  FUNCTION agent_guard."ingest_forwarded"(
	"source" TEXT,
	"system_identifier" TEXT,
	"events" jsonb
) RETURNS bigint
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_forwarded_wrapper';

CREATE  FUNCTION agent_guard."verify_forwarded"(
	"source" TEXT
) RETURNS TABLE (
	"intact" bool,
	"rows_checked" bigint,
	"first_broken_id" bigint,
	"problem" TEXT
)
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'verify_forwarded_wrapper';

CREATE  FUNCTION agent_guard."purge_forwarded"(
	"older_than" timestamp with time zone
) RETURNS bigint
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'purge_forwarded_wrapper';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'agent_guard_forwarder') THEN
        CREATE ROLE agent_guard_forwarder NOLOGIN;
        COMMENT ON ROLE agent_guard_forwarder IS 'may record hot standbys'' agent statements in the primary''s audit trail';
    END IF;
END
$$;

-- One row per standby that forwarded records: where its chain stands.
CREATE TABLE agent_guard.forward_sources (
    source            text PRIMARY KEY,
    system_identifier text NOT NULL,
    first_seen        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rows_received     bigint NOT NULL DEFAULT 0,
    -- the row_hash of the source's newest row ('agent_guard' before the first)
    head_hash         text NOT NULL DEFAULT 'agent_guard',
    -- rows removed by purge_forwarded(), and the hash its chain continues from
    purged_rows       bigint NOT NULL DEFAULT 0,
    purge_anchor      text
);

-- The records, with audit_log's columns plus their source.
CREATE TABLE agent_guard.audit_forwarded (
    id                  bigserial PRIMARY KEY,
    source              text NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event_key           text NOT NULL,
    session_key         text NOT NULL,
    statement_no        bigint NOT NULL,
    local_xact          bigint NOT NULL,
    subxact             integer,
    parent_statement    bigint,
    nesting_level       integer NOT NULL,
    started_at          timestamptz NOT NULL,
    session_user_name   text,
    current_user_name   text,
    agent               text COLLATE "C",
    login_role          text,
    sponsor             text,
    application_name    text,
    client_addr         text,
    backend_pid         integer,
    database_name       text,
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
    ended_at            timestamptz,
    rows_affected       bigint,
    outcome             text,
    sqlstate            text,
    error_message       text,
    transaction_id      bigint,
    transaction_outcome text,
    prev_hash           text,
    row_hash            text,
    outcome_hash        text,
    UNIQUE (source, event_key)
);

COMMENT ON TABLE agent_guard.audit_forwarded IS
    'Agent statements of hot standbys, recorded on the primary before they ran; a hash chain per source (see agent_guard.verify_forwarded(source))';

CREATE INDEX audit_forwarded_open ON agent_guard.audit_forwarded (source, session_key, local_xact)
    WHERE outcome IS NULL OR transaction_outcome IS NULL;
CREATE INDEX audit_forwarded_request_id ON agent_guard.audit_forwarded (request_id) WHERE request_id IS NOT NULL;

REVOKE ALL ON agent_guard.audit_forwarded, agent_guard.forward_sources FROM PUBLIC;
GRANT SELECT ON agent_guard.audit_forwarded, agent_guard.forward_sources TO agent_guard_admin, agent_guard_approver;

SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_forwarded', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_forwarded_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.forward_sources', '');

-- Nobody changes them but ingest_forwarded() (as audit_log: not even superusers).
CREATE TRIGGER audit_forwarded_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.audit_forwarded
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();
CREATE TRIGGER forward_sources_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_guard.forward_sources
    FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit();

-- The hashed content of a forwarded row: its source and immutable columns.
CREATE FUNCTION agent_guard._forwarded_content(a agent_guard.audit_forwarded) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.jsonb_build_array(
    a.id, a.source, a.event_key, a.session_key, a.statement_no, a.local_xact, a.subxact,
    a.parent_statement, a.nesting_level, (EXTRACT(epoch FROM a.started_at) * 1000000)::bigint,
    a.session_user_name, a.current_user_name, a.agent, a.login_role, a.sponsor, a.application_name,
    a.client_addr, a.backend_pid, a.database_name, a.request_id, a.traceparent, a.command, a.risk,
    a.objects, a.decision, a.reason, a.grant_id, a.statement_text, a.parameters)::text
$$;

-- The hashed outcome of a forwarded row.
CREATE FUNCTION agent_guard._forwarded_outcome(a agent_guard.audit_forwarded) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.jsonb_build_array(
    (EXTRACT(epoch FROM a.ended_at) * 1000000)::bigint, a.rows_affected, a.outcome,
    a.sqlstate, a.error_message, a.transaction_id, a.transaction_outcome)::text
$$;

-- The work of ingest_forwarded() (which checks the caller and lets these
-- writes past the append-only triggers): a JSON array of a standby's audit
-- events (statements, their ends, transaction and savepoint outcomes, as its
-- backends queue them), applied in order. Returns the rows added.
CREATE FUNCTION agent_guard._ingest_forwarded(src text, sysid text, events jsonb) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head  text;
    e     jsonb;
    added bigint := 0;
    rid   bigint;
    ids   bigint[];
    t     timestamptz;
BEGIN
    INSERT INTO agent_guard.forward_sources (source, system_identifier) VALUES (src, sysid)
        ON CONFLICT (source) DO NOTHING;
    SELECT s.head_hash INTO head FROM agent_guard.forward_sources s WHERE s.source = src FOR UPDATE;
    FOR e IN SELECT x FROM pg_catalog.jsonb_array_elements(events) AS x LOOP
        -- (PostgreSQL-epoch microseconds, exactly)
        t := '2000-01-01 00:00:00+00'::timestamptz + (e->>'ts')::bigint * interval '1 microsecond';
        ids := NULL;
        rid := NULL;
        CASE e->>'k'
        WHEN 'stmt' THEN
            INSERT INTO agent_guard.audit_forwarded AS a (
                source, event_key, session_key, statement_no, local_xact, subxact, parent_statement,
                nesting_level, started_at, session_user_name, current_user_name, agent, login_role,
                sponsor, application_name, client_addr, backend_pid, database_name, request_id,
                traceparent, command, risk, objects, decision, reason, grant_id, statement_text,
                parameters)
            VALUES (
                src, (e->>'sk') || ':' || (e->>'n'), e->>'sk', (e->>'n')::bigint, (e->>'x')::bigint,
                (e->>'sx')::integer, (e->>'parent')::bigint, (e->>'lvl')::integer, t, e->>'su',
                e->>'cu', e->>'agent', e->>'login', e->>'sponsor', e->>'app', e->>'addr',
                (e->>'pid')::integer, e->>'db', e->>'rid', e->>'tp', e->>'cmd', e->>'risk',
                ARRAY(SELECT pg_catalog.jsonb_array_elements_text(COALESCE(e->'obj', '[]'))),
                e->>'dec', e->>'why', (e->>'grant')::bigint, e->>'text',
                CASE WHEN pg_catalog.jsonb_typeof(e->'params') = 'array'
                     THEN ARRAY(SELECT p #>> '{}' FROM pg_catalog.jsonb_array_elements(e->'params') AS p) END)
            ON CONFLICT (source, event_key) DO NOTHING
            RETURNING a.id INTO rid;
            IF rid IS NOT NULL THEN
                -- a refusal ends as it starts
                UPDATE agent_guard.audit_forwarded a SET prev_hash = head,
                       row_hash = agent_guard._link(head, agent_guard._forwarded_content(a)),
                       ended_at = CASE WHEN a.decision = 'denied' THEN a.started_at END,
                       outcome = CASE WHEN a.decision = 'denied' THEN 'denied' END,
                       sqlstate = CASE WHEN a.decision = 'denied' THEN '42501' END
                 WHERE a.id = rid
                RETURNING a.row_hash INTO head;
                added := added + 1;
                ids := ARRAY[rid];
            END IF;
        WHEN 'end' THEN
            WITH u AS (
                UPDATE agent_guard.audit_forwarded a SET ended_at = t,
                       rows_affected = (e->>'rows')::bigint, outcome = e->>'out',
                       sqlstate = e->>'state', error_message = e->>'msg'
                 WHERE a.source = src AND a.session_key = e->>'sk'
                   AND a.statement_no = (e->>'n')::bigint AND a.outcome IS NULL
                RETURNING a.id)
            SELECT pg_catalog.array_agg(u.id) INTO ids FROM u;
        WHEN 'xact' THEN
            WITH u AS (
                UPDATE agent_guard.audit_forwarded a SET transaction_outcome = e->>'out',
                       transaction_id = (e->>'xid')::bigint
                 WHERE a.source = src AND a.session_key = e->>'sk'
                   AND a.local_xact = (e->>'x')::bigint AND a.transaction_outcome IS NULL
                RETURNING a.id)
            SELECT pg_catalog.array_agg(u.id) INTO ids FROM u;
        WHEN 'sub' THEN
            WITH u AS (
                UPDATE agent_guard.audit_forwarded a SET transaction_outcome = 'rolled back to savepoint'
                 WHERE a.source = src AND a.session_key = e->>'sk'
                   AND a.local_xact = (e->>'x')::bigint AND a.subxact >= (e->>'sx')::integer
                   AND a.statement_no <= (e->>'upto')::bigint AND a.transaction_outcome IS NULL
                RETURNING a.id)
            SELECT pg_catalog.array_agg(u.id) INTO ids FROM u;
        ELSE
            RAISE EXCEPTION 'agent_guard: a forwarded audit event of unknown kind %', e->>'k'
                USING ERRCODE = 'invalid_parameter_value';
        END CASE;
        IF ids IS NOT NULL THEN
            UPDATE agent_guard.audit_forwarded a
               SET outcome_hash = agent_guard._link(a.row_hash, agent_guard._forwarded_outcome(a))
             WHERE a.id = ANY (ids) AND (a.outcome IS NOT NULL OR a.transaction_outcome IS NOT NULL);
        END IF;
    END LOOP;
    UPDATE agent_guard.forward_sources s
       SET head_hash = head, rows_received = s.rows_received + added, last_seen = pg_catalog.now()
     WHERE s.source = src;
    RETURN added;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._ingest_forwarded(text, text, jsonb) FROM PUBLIC;

-- The work of purge_forwarded() (which checks the caller and lets these
-- writes past the append-only triggers): per source, the rows that started
-- before older_than go (a prefix of the source's chain, up to its first row
-- that started later), and the source's chain records it: a PURGE AUDIT row
-- naming the anchor it continues from (the hash of the last row removed),
-- which verify_forwarded() starts from and checks. Returns the rows removed.
CREATE FUNCTION agent_guard._purge_forwarded(older_than timestamptz) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s      record;
    keep   bigint;
    anchor text;
    n      bigint;
    total  bigint := 0;
    us     bigint;
BEGIN
    FOR s IN SELECT f.source, f.system_identifier, f.head_hash
               FROM agent_guard.forward_sources f ORDER BY f.source FOR UPDATE LOOP
        SELECT pg_catalog.min(a.id) INTO keep FROM agent_guard.audit_forwarded a
         WHERE a.source = s.source AND a.started_at OPERATOR(pg_catalog.>=) older_than;
        IF keep IS NULL THEN
            anchor := s.head_hash;
            DELETE FROM agent_guard.audit_forwarded a WHERE a.source = s.source;
        ELSE
            SELECT a.prev_hash INTO anchor FROM agent_guard.audit_forwarded a WHERE a.id = keep;
            DELETE FROM agent_guard.audit_forwarded a
             WHERE a.source = s.source AND a.id OPERATOR(pg_catalog.<) keep;
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        CONTINUE WHEN n = 0;
        UPDATE agent_guard.forward_sources f
           SET purged_rows = f.purged_rows OPERATOR(pg_catalog.+) n, purge_anchor = anchor
         WHERE f.source = s.source;
        -- (PostgreSQL-epoch microseconds, as the standbys' events carry)
        us := ((EXTRACT(epoch FROM pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.-) 946684800)
               OPERATOR(pg_catalog.*) 1000000)::bigint;
        PERFORM agent_guard._ingest_forwarded(s.source, s.system_identifier, pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_object(
                'k', 'stmt', 'sk', 'agent_guard-purge', 'n', us, 'x', us, 'lvl', 0, 'ts', us,
                'su', session_user, 'cu', current_user, 'db', pg_catalog.current_database(),
                'cmd', 'PURGE AUDIT', 'risk', 'admin', 'dec', 'allowed',
                'why', 'agent_guard.purge_forwarded()',
                'text', pg_catalog.format(
                    'agent_guard.purge_forwarded(%L) removed %s rows of source %s; the chain continues from anchor %s',
                    older_than, n, s.source, anchor)),
            pg_catalog.jsonb_build_object('k', 'end', 'sk', 'agent_guard-purge', 'n', us, 'ts', us,
                                          'out', 'ok', 'rows', n),
            pg_catalog.jsonb_build_object('k', 'xact', 'sk', 'agent_guard-purge', 'x', us, 'ts', us,
                                          'out', 'committed')));
        total := total OPERATOR(pg_catalog.+) n;
    END LOOP;
    RETURN total;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._purge_forwarded(timestamptz) FROM PUBLIC;

-- ingest_forwarded() runs as the extension's owner, for agent_guard_forwarder only.
ALTER FUNCTION agent_guard.ingest_forwarded(text, text, jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION agent_guard.ingest_forwarded(text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.ingest_forwarded(text, text, jsonb) TO agent_guard_forwarder;

REVOKE ALL ON FUNCTION agent_guard.verify_forwarded(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.verify_forwarded(text) TO agent_guard_admin;
-- superusers only (checked inside as well)
REVOKE ALL ON FUNCTION agent_guard.purge_forwarded(timestamptz) FROM PUBLIC;

-- For people: the forwarded statements, newest first.
CREATE VIEW agent_guard.audit_trail_forwarded AS
SELECT a.id,
       a.source,
       a.started_at,
       a.ended_at - a.started_at                        AS duration,
       a.agent,
       a.sponsor,
       a.session_user_name                              AS session_user,
       a.application_name,
       a.client_addr,
       a.request_id,
       a.command,
       a.risk,
       a.objects,
       a.decision,
       a.reason,
       a.statement_text,
       a.rows_affected,
       CASE
           WHEN a.outcome = 'error' THEN 'error ' || coalesce(a.sqlstate, '')
           ELSE coalesce(a.outcome, 'running')
       END                                              AS outcome,
       a.error_message,
       coalesce(a.transaction_outcome, 'in progress')   AS transaction
FROM agent_guard.audit_forwarded a
ORDER BY a.id DESC;
GRANT SELECT ON agent_guard.audit_trail_forwarded TO agent_guard_admin, agent_guard_approver;

-- audit_anchor(), verify_audit_anchor(): the chain head the writer keeps
-- outside the table, for an external system to keep and check (issue 14.5).
CREATE FUNCTION agent_guard."audit_anchor"() RETURNS TABLE (
	"id" bigint,
	"hash" TEXT,
	"at" timestamp with time zone,
	"database" TEXT
)
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'audit_anchor_wrapper';

CREATE FUNCTION agent_guard."verify_audit_anchor"(
	"anchor_id" bigint,
	"anchor_hash" TEXT
) RETURNS TABLE (
	"holds" bool,
	"problem" TEXT
)
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'verify_audit_anchor_wrapper';

REVOKE ALL ON FUNCTION agent_guard.audit_anchor() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.audit_anchor() TO agent_guard_admin;
REVOKE ALL ON FUNCTION agent_guard.verify_audit_anchor(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.verify_audit_anchor(bigint, text) TO agent_guard_admin;

-- ==== retention (issue 14.6b): agent_guard.audit_log becomes partitioned ====
-- Kept at the end of the script: it takes audit_log as the blocks above left
-- it (columns, indexes, triggers, functions of its row type) and carries all
-- of that over to the partitioned parent. The 0.1.0 table is not rewritten:
-- it becomes the parent's first partition, audit_log_0_1_0, for every id up
-- to 10^12 past the sequence (the writer keeps appending to it until the
-- next period's partition opens). ATTACH reads it once to check its ids.
-- The chain head the writer kept names the old table: it starts again with
-- the writer's next batch (verify_audit() still checks the whole chain).
CREATE FUNCTION agent_guard."apply_retention"() RETURNS bigint
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'apply_retention_wrapper';

DO $retention$
DECLARE
    r record;
    d text;
    later text[] := '{}';
    old oid := 'agent_guard.audit_log'::pg_catalog.regclass;
BEGIN
    -- what the parent must have, as the unpartitioned table has it now
    FOR r IN SELECT co.conname, pg_catalog.pg_get_constraintdef(co.oid) AS def
             FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = old AND co.contype IN ('p', 'u') ORDER BY co.conname LOOP
        later := later || pg_catalog.format('ALTER TABLE agent_guard.audit_log ADD CONSTRAINT %I %s', r.conname, r.def);
    END LOOP;
    FOR r IN SELECT pg_catalog.pg_get_indexdef(i.indexrelid) AS def
             FROM pg_catalog.pg_index i
             WHERE i.indrelid = old
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid)
             ORDER BY i.indexrelid LOOP
        later := later || r.def;
    END LOOP;
    FOR r IN SELECT pg_catalog.pg_get_triggerdef(t.oid) AS def
             FROM pg_catalog.pg_trigger t WHERE t.tgrelid = old AND NOT t.tgisinternal ORDER BY t.tgname LOOP
        later := later || r.def;
    END LOOP;
    FOR r IN SELECT a.privilege_type, a.grantee
             FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
             WHERE c.oid = old AND a.grantee <> c.relowner LOOP
        later := later || pg_catalog.format('GRANT %s ON agent_guard.audit_log TO %s', r.privilege_type,
                                            CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::pg_catalog.regrole::text END);
    END LOOP;
    IF (SELECT c.relacl IS NOT NULL FROM pg_catalog.pg_class c WHERE c.oid = old) THEN
        later := pg_catalog.array_prepend('REVOKE ALL ON agent_guard.audit_log FROM PUBLIC'::text, later);
    END IF;
    later := later || pg_catalog.format('COMMENT ON TABLE agent_guard.audit_log IS %L',
                                        pg_catalog.obj_description(old, 'pg_class'));
    -- views over it (audit_trail), recreated over the parent
    FOR r IN SELECT v.oid, v.relname, pg_catalog.pg_get_viewdef(v.oid) AS def, v.relacl,
                    pg_catalog.obj_description(v.oid, 'pg_class') AS comment, v.relowner
             FROM pg_catalog.pg_class v
             WHERE v.relkind = 'v' AND v.oid <> old
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend dp
                           JOIN pg_catalog.pg_rewrite rw ON rw.oid = dp.objid
                           WHERE dp.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                             AND rw.ev_class = v.oid AND dp.refobjid = old)
             ORDER BY v.oid LOOP
        EXECUTE pg_catalog.format('DROP VIEW agent_guard.%I', r.relname);
        later := later || pg_catalog.format('CREATE VIEW agent_guard.%I AS %s', r.relname, r.def);
        IF r.comment IS NOT NULL THEN
            later := later || pg_catalog.format('COMMENT ON VIEW agent_guard.%I IS %L', r.relname, r.comment);
        END IF;
        IF r.relacl IS NOT NULL THEN
            later := later || pg_catalog.format('REVOKE ALL ON agent_guard.%I FROM PUBLIC', r.relname);
            FOR d IN SELECT pg_catalog.format('GRANT %s ON agent_guard.%I TO %s', a.privilege_type, r.relname,
                                              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END)
                     FROM pg_catalog.aclexplode(r.relacl) a WHERE a.grantee <> r.relowner LOOP
                later := later || d;
            END LOOP;
        END IF;
    END LOOP;
    -- functions of its row type (_row_content, _outcome_content), recreated for the parent's
    FOR r IN SELECT p.oid, pg_catalog.pg_get_functiondef(p.oid) AS def, p.proacl
             FROM pg_catalog.pg_proc p
             WHERE (SELECT c.reltype FROM pg_catalog.pg_class c WHERE c.oid = old) = ANY (p.proargtypes::oid[]) LOOP
        IF r.proacl IS NOT NULL THEN
            RAISE EXCEPTION 'agent_guard upgrade: function % has privileges this step does not carry over', r.oid::pg_catalog.regprocedure;
        END IF;
        EXECUTE pg_catalog.format('DROP FUNCTION %s', r.oid::pg_catalog.regprocedure);
        -- (its text names agent_guard.audit_log: the parent, once run below)
        later := later || r.def;
    END LOOP;
    -- the old table and its indexes step aside, out of the extension (a
    -- partition created at run time is no member either: pg_dump dumps it
    -- with its rows)
    FOR r IN SELECT c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = old LOOP
        EXECUTE pg_catalog.format('ALTER INDEX agent_guard.%I RENAME TO %I', r.relname,
                                  pg_catalog.left(r.relname, 50) || '_0_1_0');
    END LOOP;
    ALTER TABLE agent_guard.audit_log RENAME TO audit_log_0_1_0;
    ALTER EXTENSION agent_guard DROP TABLE agent_guard.audit_log_0_1_0;
    CREATE TABLE agent_guard.audit_log (
        LIKE agent_guard.audit_log_0_1_0 INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED
    ) PARTITION BY RANGE (id);
    ALTER SEQUENCE agent_guard.audit_log_id_seq OWNED BY agent_guard.audit_log.id;
    FOREACH d IN ARRAY later LOOP
        EXECUTE d;
    END LOOP;
END
$retention$;
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log', '');
-- Partitions of audit_log, in id order, with their bounds and start.
CREATE FUNCTION agent_guard._audit_partitions(
    OUT relid oid, OUT relname text, OUT lo bigint, OUT hi bigint, OUT starts timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT c.oid, c.relname::text,
       CASE WHEN m[1] = 'MINVALUE' THEN NULL ELSE m[1]::bigint END,
       CASE WHEN m[2] = 'MAXVALUE' THEN NULL ELSE m[2]::bigint END,
       CASE WHEN c.relname ~ '^audit_log_[0-9]{8}_[0-9]{6}(_[0-9]+)?$' THEN
           pg_catalog.make_timestamptz(pg_catalog.substr(c.relname, 11, 4)::int, pg_catalog.substr(c.relname, 15, 2)::int,
                                       pg_catalog.substr(c.relname, 17, 2)::int, pg_catalog.substr(c.relname, 20, 2)::int,
                                       pg_catalog.substr(c.relname, 22, 2)::int, pg_catalog.substr(c.relname, 24, 2)::float8, 'UTC')
       END
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid,
LATERAL pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                '^FOR VALUES FROM \(''?([^'')]*)''?\) TO \(''?([^'')]*)''?\)$') AS m
WHERE i.inhparent = 'agent_guard.audit_log'::pg_catalog.regclass
  AND m IS NOT NULL  -- not the DEFAULT partition
ORDER BY 3 NULLS FIRST
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_partitions() FROM PUBLIC;

-- Statement-level triggers of a partitioned table do not fire for a
-- statement that names a partition (nor for TRUNCATE of one): every
-- partition gets audit_log's append-only trigger of its own.
CREATE FUNCTION agent_guard._protect_audit_partition(part regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit()', part);
END
$$;
REVOKE ALL ON FUNCTION agent_guard._protect_audit_partition(regclass) FROM PUBLIC;

-- audit_log (the parent) has no indexes or keys of its own: every partition
-- has its own, those of audit_log_default (the template), named
-- <partition>_<name after audit_log_>. So pg_dump dumps a partition created
-- at run time with its indexes, and the restore's ATTACH PARTITION (into a
-- fresh CREATE EXTENSION) creates none that the dump's CREATE INDEX would
-- then collide with. Ids stay unique: the partitions' ranges are disjoint.
CREATE FUNCTION agent_guard._copy_audit_indexes(part regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    tmpl oid := 'agent_guard.audit_log_default'::pg_catalog.regclass;
    name text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = part);
BEGIN
    FOR r IN SELECT co.conname, pg_catalog.pg_get_constraintdef(co.oid) AS def
             FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = tmpl AND co.contype IN ('p', 'u') ORDER BY co.conname LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', part,
                                  name || '_' || pg_catalog.regexp_replace(r.conname, '^audit_log_default_', ''), r.def);
    END LOOP;
    FOR r IN SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid) AS def
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = tmpl
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid)
             ORDER BY c.relname LOOP
        EXECUTE pg_catalog.regexp_replace(r.def,
            '^CREATE (UNIQUE )?INDEX \S+ ON agent_guard\.audit_log_default ',
            'CREATE \1INDEX ' || pg_catalog.quote_ident(name || '_' || pg_catalog.regexp_replace(r.relname, '^audit_log_default_', ''))
            || ' ON ' || part::text || ' ');
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._copy_audit_indexes(regclass) FROM PUBLIC;

-- Once, at installation: the indexes and keys sql/audit.sql declares on
-- audit_log become the template's (audit_log_default's).
CREATE FUNCTION agent_guard._audit_indexes_to_default() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    d text;
    defs text[] := '{}';
    parent oid := 'agent_guard.audit_log'::pg_catalog.regclass;
BEGIN
    FOR r IN SELECT co.conname, pg_catalog.pg_get_constraintdef(co.oid) AS def
             FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = parent AND co.contype IN ('p', 'u') ORDER BY co.conname LOOP
        defs := defs || pg_catalog.format('ALTER TABLE agent_guard.audit_log_default ADD CONSTRAINT %I %s',
                                          'audit_log_default_' || pg_catalog.regexp_replace(r.conname, '^audit_log_', ''), r.def);
    END LOOP;
    FOR r IN SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid) AS def
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = parent
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid)
             ORDER BY c.relname LOOP
        defs := defs || pg_catalog.regexp_replace(r.def,
            '^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?agent_guard\.audit_log ',
            'CREATE \1INDEX ' || pg_catalog.quote_ident('audit_log_default_' || pg_catalog.regexp_replace(r.relname, '^audit_log_', ''))
            || ' ON agent_guard.audit_log_default ');
        EXECUTE pg_catalog.format('DROP INDEX agent_guard.%I', r.relname);
    END LOOP;
    FOR r IN SELECT co.conname FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = parent AND co.contype IN ('p', 'u') LOOP
        EXECUTE pg_catalog.format('ALTER TABLE agent_guard.audit_log DROP CONSTRAINT %I', r.conname);
    END LOOP;
    CREATE TABLE agent_guard.audit_log_default PARTITION OF agent_guard.audit_log DEFAULT;
    FOREACH d IN ARRAY defs LOOP
        EXECUTE d;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_indexes_to_default() FROM PUBLIC;

-- A new partition for ids [lo, hi) whose period starts at `starts`. As
-- session_replication_role = replica, so that no event trigger (masking's
-- view sync) runs inside the audit writer for agent_guard's own table.
CREATE FUNCTION agent_guard._add_audit_partition(starts timestamptz, lo bigint, hi bigint) RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
AS $$
DECLARE
    part text := 'audit_log_' || pg_catalog.to_char(starts AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS');
    rel oid;
BEGIN
    IF pg_catalog.to_regclass('agent_guard.' || part) IS NOT NULL THEN
        part := part || '_' || lo;
    END IF;
    EXECUTE pg_catalog.format(
        'CREATE TABLE agent_guard.%I PARTITION OF agent_guard.audit_log FOR VALUES FROM (%s) TO (%s)',
        part, lo, hi);
    rel := pg_catalog.format('agent_guard.%I', part)::pg_catalog.regclass;
    PERFORM agent_guard._protect_audit_partition(rel);
    PERFORM agent_guard._copy_audit_indexes(rel);
    RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._add_audit_partition(timestamptz, bigint, bigint) FROM PUBLIC;

-- The next period's partition, unless that waits for a lock: creating a
-- partition locks audit_log (and its DEFAULT partition) exclusively, and the
-- writer must not stall behind a long read of the trail (it tries again with
-- its next batch; until then the current partition takes the rows).
CREATE FUNCTION agent_guard._try_add_audit_partition(starts timestamptz, lo bigint, hi bigint) RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
AS $$
BEGIN
    RETURN agent_guard._add_audit_partition(starts, lo, hi);
EXCEPTION WHEN lock_not_available THEN
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._try_add_audit_partition(timestamptz, bigint, bigint) FROM PUBLIC;

-- The audit writer, before a batch of `batch_rows` rows: the partition the
-- next ids go to (created if missing), the sequence moved to the partition
-- whose period has begun, and the next period's partition created ahead.
CREATE FUNCTION agent_guard._audit_partition_for(batch_rows bigint, span_seconds integer) RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- ids per partition: 10^12 rows in a period before the next one opens early
    block CONSTANT bigint := 1000000000000;
    span interval := pg_catalog.make_interval(secs => greatest(span_seconds, 1));
    now_ timestamptz := pg_catalog.clock_timestamp();
    nxt bigint;
    called boolean;
    cur record;
    later record;
BEGIN
    SELECT s.last_value, s.is_called INTO nxt, called FROM agent_guard.audit_log_id_seq s;
    IF called THEN nxt := nxt + 1; END IF;
    SELECT * INTO cur FROM agent_guard._audit_partitions() p
    WHERE coalesce(p.lo, nxt) <= nxt AND nxt < coalesce(p.hi, nxt + 1);
    IF NOT FOUND THEN
        -- first rows (or the ids ran past every partition): a partition from
        -- here, up to the next one if there is one
        SELECT * INTO later FROM agent_guard._audit_partitions() p WHERE p.lo > nxt ORDER BY p.lo LIMIT 1;
        PERFORM agent_guard._add_audit_partition(
            pg_catalog.date_trunc('second', now_) + interval '1 second', nxt,
            CASE WHEN later.lo IS NULL OR later.lo - nxt > block THEN nxt + block ELSE later.lo END);
        SELECT * INTO cur FROM agent_guard._audit_partitions() p WHERE p.lo = nxt;
    END IF;
    -- a later period has begun: its partition takes the next ids
    SELECT * INTO later FROM agent_guard._audit_partitions() p
    WHERE p.lo >= cur.hi AND p.starts <= now_ ORDER BY p.lo DESC LIMIT 1;
    IF FOUND THEN
        PERFORM pg_catalog.setval('agent_guard.audit_log_id_seq', later.lo, false);
        cur := later;
        nxt := later.lo;
    END IF;
    -- the batch does not fit: the next partition opens now
    IF cur.hi IS NOT NULL AND nxt + batch_rows > cur.hi THEN
        SELECT * INTO later FROM agent_guard._audit_partitions() p WHERE p.lo >= cur.hi ORDER BY p.lo LIMIT 1;
        IF NOT FOUND THEN
            PERFORM agent_guard._add_audit_partition(
                pg_catalog.date_trunc('second', now_) + interval '1 second', cur.hi, cur.hi + block);
            SELECT * INTO later FROM agent_guard._audit_partitions() p WHERE p.lo = cur.hi;
        END IF;
        PERFORM pg_catalog.setval('agent_guard.audit_log_id_seq', later.lo, false);
        cur := later;
    END IF;
    -- the next period's partition exists before its first row arrives
    IF cur.hi IS NOT NULL AND NOT EXISTS (SELECT 1 FROM agent_guard._audit_partitions() p WHERE p.lo >= cur.hi) THEN
        PERFORM agent_guard._try_add_audit_partition(
            pg_catalog.date_bin(span, now_, '2000-01-01 00:00:00+00') + span, cur.hi, cur.hi + block);
    END IF;
    RETURN cur.relid;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_partition_for(bigint, integer) FROM PUBLIC;

-- apply_retention()'s drop of expired partitions (src/audit/retention.rs),
-- as replica for the same reason, in one statement: the drop locks
-- audit_log exclusively until the transaction ends, and the writer then
-- waits, so no statement of this transaction that waits for its own audit
-- record may follow it.
CREATE FUNCTION agent_guard._drop_audit_partitions(parts regclass[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
SET lock_timeout = '2s'
AS $$
BEGIN
    EXECUTE 'DROP TABLE ' || (SELECT pg_catalog.string_agg(p::text, ', ') FROM pg_catalog.unnest(parts) p);
END
$$;
REVOKE ALL ON FUNCTION agent_guard._drop_audit_partitions(regclass[]) FROM PUBLIC;

-- Whether retention could take audit_log's exclusive lock now (tried for
-- 200 ms in a subtransaction, then given back at once): a partition is
-- dropped only when no long reader (pg_dump, a large verify_audit()) holds
-- the trail, so the writer never queues behind a drop waiting for one.
CREATE FUNCTION agent_guard._audit_log_lockable() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
AS $$
BEGIN
    BEGIN
        LOCK TABLE agent_guard.audit_log IN ACCESS EXCLUSIVE MODE;
        -- roll the subtransaction back: the lock goes with it
        RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'agent_guard: lock probe';
    EXCEPTION
        WHEN lock_not_available THEN RETURN false;
        WHEN raise_exception THEN RETURN true;
    END;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_log_lockable() FROM PUBLIC;

-- Ids outside every range partition (none, as the writer creates them
-- before its rows): a safety net, so that no insert ever fails for want of
-- a partition. Part of the dump like audit_log.
SELECT agent_guard._audit_indexes_to_default();
REVOKE ALL ON agent_guard.audit_log_default FROM PUBLIC;
SELECT agent_guard._protect_audit_partition('agent_guard.audit_log_default');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log_default', '');

REVOKE ALL ON FUNCTION agent_guard.apply_retention() FROM PUBLIC;
-- the 0.1.0 table, with its own indexes (renamed above), as the first partition
DO $retention$
DECLARE
    bound bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END INTO bound
    FROM agent_guard.audit_log_id_seq s;
    bound := greatest(bound, (SELECT pg_catalog.max(a.id) + 1 FROM agent_guard.audit_log_0_1_0 a))
             + 1000000000000;
    EXECUTE pg_catalog.format(
        'ALTER TABLE agent_guard.audit_log ATTACH PARTITION agent_guard.audit_log_0_1_0 FOR VALUES FROM (MINVALUE) TO (%s)',
        bound);
END
$retention$;
-- ==== end of retention ====
