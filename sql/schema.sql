-- agent_guard: schema-level objects shared by every capability.
-- The schema itself is created by CREATE EXTENSION (control file: schema = agent_guard).

-- Roles the extension relies on; cluster-wide, so created only when missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'agent_guard_admin') THEN
        CREATE ROLE agent_guard_admin NOLOGIN;
        COMMENT ON ROLE agent_guard_admin IS 'may manage agent_guard''s agent registry';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'agent_guard_approver') THEN
        CREATE ROLE agent_guard_approver NOLOGIN;
        COMMENT ON ROLE agent_guard_approver IS 'may approve agents'' just-in-time grant requests';
    END IF;
END
$$;

GRANT USAGE ON SCHEMA agent_guard TO PUBLIC;

-- Metadata of agent registrations made in this database. Who is an agent is
-- decided by the role's security label (cluster-wide); this table adds the
-- note and who registered it when.
CREATE TABLE agent_guard.agent_registry (
    agent         oid PRIMARY KEY,
    agent_name    name NOT NULL,
    sponsor       oid NOT NULL,
    sponsor_name  name NOT NULL,
    kind          text NOT NULL,
    note          text,
    registered_by name NOT NULL DEFAULT session_user,
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- the cluster whose OIDs agent and sponsor are (pg_control's system
    -- identifier): a row restored into another cluster is judged by agent_name
    system_identifier text
);
REVOKE ALL ON agent_guard.agent_registry FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('agent_guard.agent_registry', '');
