-- Access review and evidence: for every role that can log in (and every
-- registered agent group) what kind of actor it is, what it may do through
-- its whole membership closure, what it actually did in the period, what it
-- holds but never used, and findings with a suggested fix; and a report an
-- auditor can file. The judgement is core/src/review.rs; this file gathers
-- the facts from the catalog, agent_guard.audit_log, agent_guard.access_requests
-- and agent_guard.activity_samples.

-- ---- activity samples ------------------------------------------------------------

-- Sessions seen in pg_stat_activity (every database of the cluster), one row
-- per session and application name, kept up to date by each sample: how
-- unregistered login roles are used (CI tools, many short sessions, activity
-- around the clock) even when their statements are not audited.
CREATE TABLE agent_guard.activity_samples (
    session_key       text NOT NULL,            -- pid-start, as audit_log.session_key
    application_name  text NOT NULL DEFAULT '',
    pid               integer NOT NULL,
    backend_start     timestamptz NOT NULL,
    role_oid          oid NOT NULL,
    role_name         name NOT NULL,
    database_name     name,
    client_addr       text,
    first_seen        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,
    last_state_change timestamptz,
    samples           integer NOT NULL DEFAULT 1,
    PRIMARY KEY (session_key, application_name)
);
CREATE INDEX activity_samples_role ON agent_guard.activity_samples (role_oid, last_seen);

COMMENT ON TABLE agent_guard.activity_samples IS
    'Client sessions of the cluster as sampled from pg_stat_activity by agent_guard.sample_activity() (kept 400 days)';

REVOKE ALL ON agent_guard.activity_samples FROM PUBLIC;
GRANT SELECT ON agent_guard.activity_samples TO agent_guard_admin;
SELECT pg_catalog.pg_extension_config_dump('agent_guard.activity_samples', '');

CREATE FUNCTION agent_guard.sample_activity() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    PERFORM agent_guard._review_check('sample_activity');
    INSERT INTO agent_guard.activity_samples AS s
        (session_key, application_name, pid, backend_start, role_oid, role_name, database_name,
         client_addr, first_seen, last_seen, last_state_change)
    SELECT a.pid::text || '-'
             || ((EXTRACT(epoch FROM a.backend_start) - 946684800) * 1000000)::bigint::text,
           coalesce(a.application_name, ''), a.pid, a.backend_start, a.usesysid, a.usename,
           a.datname, pg_catalog.host(a.client_addr), pg_catalog.now(), pg_catalog.now(), a.state_change
    FROM pg_catalog.pg_stat_activity a
    WHERE a.backend_type = 'client backend'
      AND a.usesysid IS NOT NULL
      AND a.backend_start IS NOT NULL
    ON CONFLICT (session_key, application_name) DO UPDATE
        SET last_seen = EXCLUDED.last_seen,
            last_state_change = EXCLUDED.last_state_change,
            samples = s.samples + 1;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM agent_guard.activity_samples WHERE last_seen < pg_catalog.now() - interval '400 days';
    RETURN n;
END
$$;

COMMENT ON FUNCTION agent_guard.sample_activity() IS
    'Record the client sessions now in pg_stat_activity into agent_guard.activity_samples; returns how many were seen. '
    'The activity sampler worker calls it every agent_guard.activity_sample_interval in agent_guard.activity_sample_database; access_review() calls it too';

-- ---- sensitive columns not labelled ---------------------------------------------

-- Columns that look regulated (by name or by sampled content, as
-- agent_guard.suggest_sensitive() finds them) but carry no agent_guard label.
CREATE FUNCTION agent_guard._review_unlabelled()
RETURNS TABLE (rel oid, schema_name name, table_name name, column_name name, reason text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT DISTINCT c.oid, n.nspname, c.relname, s.column_name, s.reason
FROM agent_guard.suggest_sensitive() s
JOIN pg_catalog.pg_class c ON c.oid = s.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = s.column_name
                              AND a.attnum > 0 AND NOT a.attisdropped
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_seclabel l
                  WHERE l.provider = 'agent_guard'
                    AND l.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND l.objoid = c.oid AND l.objsubid = a.attnum)
ORDER BY 2, 3, 4
$$;

-- ---- the facts ---------------------------------------------------------------------

-- One row per login role and per registered agent group, with the facts
-- core/src/review.rs judges (column facts) and the figures access_review() shows.
-- presence: {database: true | false | null} (agent_guard installed there; null: not checked).
CREATE FUNCTION agent_guard._review_facts(since timestamptz, presence jsonb)
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

-- ---- the review --------------------------------------------------------------------

CREATE FUNCTION agent_guard.access_review(since timestamptz DEFAULT pg_catalog.now() - interval '90 days')
RETURNS TABLE (
    role               name,
    kind               text,
    agent              name,
    sponsor            name,
    sponsor_status     text,
    can_login          boolean,
    valid_until        timestamptz,
    superuser          boolean,
    createrole         boolean,
    createdb           boolean,
    bypassrls          boolean,
    replication        boolean,
    member_of          name[],
    pg_roles           name[],
    table_privileges   jsonb,
    can_write          boolean,
    can_ddl            boolean,
    risks_used         text[],
    commands_used      text[],
    objects_used       text[],
    unused_rights      text[],
    statements_by_risk jsonb,
    statements         bigint,
    refusals           bigint,
    grants_requested   bigint,
    grants_approved    bigint,
    approved_by        name[],
    sessions           bigint,
    application_names  text[],
    last_activity      timestamptz,
    machine_signals    text[],
    findings           jsonb,
    top_severity       text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    presence jsonb;
BEGIN
    PERFORM agent_guard._review_check('access_review');
    IF since IS NULL THEN
        RAISE EXCEPTION 'since must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- a fresh look at who is connected right now (not in a read-only transaction)
    IF NOT pg_catalog.current_setting('transaction_read_only')::boolean THEN
        PERFORM agent_guard.sample_activity();
    END IF;
    -- which databases an agent could escape to have agent_guard (asked only when there are agents)
    IF EXISTS (SELECT 1 FROM agent_guard._registered_agents()) THEN
        presence := agent_guard._guard_presence();
    END IF;
    RETURN QUERY
    SELECT f.role, a->>'kind', f.agent, f.sponsor, f.sponsor_status, f.can_login, f.valid_until,
           f.superuser, f.createrole, f.createdb, f.bypassrls, f.replication,
           f.member_of, f.pg_roles, f.table_privileges, f.can_write, f.can_ddl,
           f.risks_used, f.commands_used, f.objects_used,
           CASE WHEN a->'unused_rights' = 'null'::jsonb THEN NULL
                ELSE ARRAY(SELECT pg_catalog.jsonb_array_elements_text(a->'unused_rights')) END,
           f.statements_by_risk, f.statements, f.refusals,
           f.grants_requested, f.grants_approved, f.approved_by,
           f.sessions, f.application_names, f.last_activity,
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(a->'machine_signals')),
           a->'findings',
           a->>'top_severity'
    FROM agent_guard._review_facts(since, presence) f
    CROSS JOIN LATERAL agent_guard._review_assess(f.facts) a
    ORDER BY coalesce((a->>'top_rank')::integer, 1000000), f.role;
END
$$;

COMMENT ON FUNCTION agent_guard.access_review(timestamptz) IS
    'One row per login role and registered agent group: kind (human, agent, service, unknown), sponsor and its status, '
    'effective rights through the membership closure, rights used and never used in the period, statements, refusals, '
    'grants and approvers, sessions, findings with severity and a suggested fix. Superusers and agent_guard_admin only';

-- ---- the report ------------------------------------------------------------------

CREATE FUNCTION agent_guard.access_review_report(
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

COMMENT ON FUNCTION agent_guard.access_review_report(text, timestamptz) IS
    'The access review as a document an auditor can file (markdown or json): scope, period, summary, findings by severity, '
    'actors, and every high-risk action with who, when, request id and the approval chain. Superusers and agent_guard_admin only';

-- ---- access ------------------------------------------------------------------------

REVOKE ALL ON FUNCTION agent_guard.access_review(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard.access_review_report(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard.sample_activity() FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._review_facts(timestamptz, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._review_unlabelled() FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._review_check(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._guard_presence() FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._review_assess(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._review_markdown(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.access_review(timestamptz) TO agent_guard_admin;
GRANT EXECUTE ON FUNCTION agent_guard.access_review_report(text, timestamptz) TO agent_guard_admin;
GRANT EXECUTE ON FUNCTION agent_guard.sample_activity() TO agent_guard_admin;
