-- Just-in-time grants: an agent requests, a human approves, the grant is
-- scoped (risk, objects, one statement), limited in time and uses, revocable.
--
-- A request and the grant that its approval creates share one row and one id.
-- Writes go through agent_guard's functions only: agents reach these tables
-- through request_access() alone, humans through approve/deny/revoke.

CREATE SEQUENCE agent_guard.access_requests_id_seq;

CREATE TABLE agent_guard.access_requests (
    id             bigint PRIMARY KEY DEFAULT pg_catalog.nextval('agent_guard.access_requests_id_seq'),
    requested_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    -- the registered agent role, the session's login role, the human sponsor
    agent          oid NOT NULL,
    agent_name     name NOT NULL,
    login          oid NOT NULL,
    login_name     name NOT NULL,
    sponsor        oid NOT NULL,
    sponsor_name   name NOT NULL,
    database_name  name NOT NULL DEFAULT pg_catalog.current_database(),
    request_id     text,
    traceparent    text,
    risk           text NOT NULL CHECK (risk IN ('write', 'ddl')),
    objects        regclass[],
    reason         text,
    ttl            interval NOT NULL CHECK (ttl > interval '0'),
    -- a single-statement request: the statement and its fingerprint
    statement      text,
    fingerprint    text,
    -- a request not decided by then expires (agent_guard.request_lifetime)
    answer_by      timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'approved', 'denied', 'revoked')),
    decided_by     name,
    decided_at     timestamptz,
    decision_note  text,
    -- set on approval
    expires_at     timestamptz,
    max_statements integer CHECK (max_statements > 0),
    revoked_by     name,
    revoked_at     timestamptz,
    revoke_note    text,
    CHECK (status <> 'approved' OR expires_at IS NOT NULL)
);
ALTER SEQUENCE agent_guard.access_requests_id_seq OWNED BY agent_guard.access_requests.id;
CREATE INDEX access_requests_live ON agent_guard.access_requests (agent, login) WHERE status = 'approved';
CREATE INDEX access_requests_pending ON agent_guard.access_requests (requested_at) WHERE status = 'pending';

COMMENT ON TABLE agent_guard.access_requests IS
    'Agents'' requests for just-in-time grants and their decisions; an approved request is a grant with the same id';

-- Uses of a grant, and relations created under it. Kept apart from the
-- request row so that an agent's open transaction, which holds this row's
-- lock after using the grant, never delays a revocation.
CREATE TABLE agent_guard.grant_usage (
    request         bigint PRIMARY KEY REFERENCES agent_guard.access_requests (id) ON DELETE CASCADE,
    uses            bigint NOT NULL DEFAULT 0,
    last_used_at    timestamptz,
    created_objects regclass[] NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE agent_guard.grant_usage IS
    'How many statements each grant covered, and the relations created under it';

REVOKE ALL ON agent_guard.access_requests, agent_guard.grant_usage FROM PUBLIC;
REVOKE ALL ON SEQUENCE agent_guard.access_requests_id_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('agent_guard.access_requests', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.access_requests_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.grant_usage', '');

-- ---- functions ---------------------------------------------------------------

CREATE FUNCTION agent_guard.request_access(
    risk      text,
    objects   regclass[] DEFAULT NULL,
    reason    text DEFAULT NULL,
    ttl       interval DEFAULT '15 minutes',
    statement text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT agent_guard._request_access(risk, objects::oid[], reason, ttl, statement) $$;

COMMENT ON FUNCTION agent_guard.request_access(text, regclass[], text, interval, text) IS
    'From an agent session: ask a human for a just-in-time grant (risk write or ddl, optionally limited to objects or to one statement); returns the request id';

CREATE FUNCTION agent_guard.approve(
    request        bigint,
    ttl            interval DEFAULT NULL,
    note           text DEFAULT NULL,
    max_statements integer DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT agent_guard._approve(request, ttl, note, max_statements) $$;

COMMENT ON FUNCTION agent_guard.approve(bigint, interval, text, integer) IS
    'Approve a pending request (a human member of agent_guard_approver, not the agent; see agent_guard.require_distinct_sponsor); ttl defaults to the requested one; returns the grant id';

CREATE FUNCTION agent_guard.deny(request bigint, note text DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT agent_guard._deny(request, note) $$;

COMMENT ON FUNCTION agent_guard.deny(bigint, text) IS 'Deny a pending request';

CREATE FUNCTION agent_guard.revoke(grant_or_request bigint, note text DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT agent_guard._revoke(grant_or_request, note) $$;

COMMENT ON FUNCTION agent_guard.revoke(bigint, text) IS
    'Revoke a grant (or withdraw a pending request); takes effect at the agent''s next statement';

REVOKE ALL ON FUNCTION agent_guard._request_access(text, oid[], text, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._approve(bigint, interval, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._deny(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._revoke(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard.approve(bigint, interval, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard.deny(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.approve(bigint, interval, text, integer) TO agent_guard_approver;
GRANT EXECUTE ON FUNCTION agent_guard.deny(bigint, text) TO agent_guard_approver;
-- request_access() refuses non-agents itself; revoke() admits approvers and the agent's sponsor.
GRANT EXECUTE ON FUNCTION agent_guard.request_access(text, regclass[], text, interval, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.revoke(bigint, text) TO PUBLIC;

-- ---- views -------------------------------------------------------------------

CREATE VIEW agent_guard.requests AS
SELECT r.id                                            AS request,
       r.agent_name                                    AS agent,
       r.login_name                                    AS requester,
       r.sponsor_name                                  AS sponsor,
       r.risk,
       r.objects,
       r.statement,
       r.reason,
       r.ttl,
       r.request_id,
       r.requested_at,
       CASE r.status
           WHEN 'pending' THEN CASE WHEN r.answer_by <= pg_catalog.clock_timestamp()
                                    THEN 'expired' ELSE 'pending' END
           WHEN 'approved' THEN CASE WHEN r.expires_at <= pg_catalog.clock_timestamp() THEN 'expired'
                                     WHEN r.max_statements IS NOT NULL AND u.uses >= r.max_statements THEN 'used'
                                     ELSE 'active' END
           ELSE r.status
       END                                             AS state,
       r.decided_by,
       r.decided_at,
       r.decision_note,
       r.expires_at,
       r.max_statements,
       u.uses,
       u.created_objects,
       r.revoked_by,
       r.revoked_at,
       r.revoke_note
FROM agent_guard.access_requests r
LEFT JOIN agent_guard.grant_usage u ON u.request = r.id;

COMMENT ON VIEW agent_guard.requests IS
    'Every request and grant with its state: pending, expired, active, used, denied or revoked';

CREATE VIEW agent_guard.pending_requests AS
SELECT r.id                                            AS request,
       r.login_name                                    AS requester,
       r.agent_name                                    AS agent,
       r.sponsor_name                                  AS sponsor,
       r.risk,
       r.objects,
       r.statement,
       r.reason,
       r.ttl,
       r.request_id,
       r.requested_at,
       pg_catalog.date_trunc('second', pg_catalog.clock_timestamp() - r.requested_at) AS age,
       r.answer_by
FROM agent_guard.access_requests r
WHERE r.status = 'pending' AND r.answer_by > pg_catalog.clock_timestamp();

COMMENT ON VIEW agent_guard.pending_requests IS 'Requests waiting for a human decision';

CREATE VIEW agent_guard.active_grants AS
SELECT r.id                                            AS grant_id,
       r.agent_name                                    AS agent,
       r.login_name                                    AS requester,
       r.sponsor_name                                  AS sponsor,
       r.risk,
       r.objects,
       u.created_objects,
       r.statement,
       r.decided_by                                    AS approved_by,
       r.decided_at                                    AS approved_at,
       r.expires_at,
       pg_catalog.date_trunc('second', r.expires_at - pg_catalog.clock_timestamp()) AS time_left,
       r.max_statements,
       u.uses,
       r.max_statements - u.uses                       AS uses_left
FROM agent_guard.access_requests r
JOIN agent_guard.grant_usage u ON u.request = r.id
WHERE r.status = 'approved'
  AND r.expires_at > pg_catalog.clock_timestamp()
  AND (r.max_statements IS NULL OR u.uses < r.max_statements);

COMMENT ON VIEW agent_guard.active_grants IS 'Grants in force: approved, not expired, not revoked, not used up';

-- What the calling session (an agent) asked for and got.
CREATE VIEW agent_guard.my_requests AS
SELECT q.*
FROM agent_guard.requests q
JOIN agent_guard.access_requests r ON r.id = q.request
WHERE r.login = (SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = session_user);

COMMENT ON VIEW agent_guard.my_requests IS 'The calling session''s own requests and grants';

REVOKE ALL ON agent_guard.requests, agent_guard.pending_requests, agent_guard.active_grants FROM PUBLIC;
GRANT SELECT ON agent_guard.requests, agent_guard.pending_requests, agent_guard.active_grants
    TO agent_guard_approver, agent_guard_admin;
GRANT SELECT ON agent_guard.my_requests TO PUBLIC;
