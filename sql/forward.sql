-- Records forwarded by hot standbys (agent_guard.standby_audit = forward on
-- the standby): an agent's statement on a standby is recorded here, on the
-- primary, before it runs. Each standby (source) has a hash chain of its own,
-- so the primary's own chain (audit_log) stays as it is; a record is taken
-- once per (source, event key), so a retry or a promotion never writes it
-- twice. Written only by agent_guard.ingest_forwarded(), which the role
-- agent_guard_forwarder may call (grant it to the role the standby's
-- agent_guard.forward_conninfo, default primary_conninfo, logs in as).

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
