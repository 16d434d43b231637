-- The agent registry: register_agent / unregister_agent and the agents view.

CREATE FUNCTION agent_guard.register_agent(
    agent   regrole,
    sponsor regrole,
    kind    text DEFAULT 'agent',
    note    text DEFAULT NULL
) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT agent_guard._register_agent(agent::oid, sponsor::oid, kind, note) $$;

COMMENT ON FUNCTION agent_guard.register_agent(regrole, regrole, text, text) IS
    'Mark a role (or a group role: every member) as an AI agent acting for a human sponsor';

CREATE FUNCTION agent_guard.unregister_agent(agent regrole) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT agent_guard._unregister_agent(agent::oid) $$;

COMMENT ON FUNCTION agent_guard.unregister_agent(regrole) IS 'Remove an agent registration';

REVOKE ALL ON FUNCTION agent_guard.register_agent(regrole, regrole, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard.unregister_agent(regrole) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_guard.register_agent(regrole, regrole, text, text) TO agent_guard_admin;
GRANT EXECUTE ON FUNCTION agent_guard.unregister_agent(regrole) TO agent_guard_admin;
REVOKE ALL ON FUNCTION agent_guard._register_agent(oid, oid, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION agent_guard._unregister_agent(oid) FROM PUBLIC;

CREATE VIEW agent_guard.agents AS
SELECT a.agent::regrole                         AS agent,
       a.sponsor_name                           AS sponsor,
       a.kind,
       r.note,
       r.registered_by,
       r.registered_at,
       agent_guard.sponsor_status(a.sponsor)    AS sponsor_status,
       a.sponsor                                AS sponsor_oid
FROM agent_guard._registered_agents() AS a
LEFT JOIN agent_guard.agent_registry AS r ON r.agent = a.agent;

COMMENT ON VIEW agent_guard.agents IS
    'Registered agents of the cluster, their human sponsors and whether each sponsor can still log in';
GRANT SELECT ON agent_guard.agents TO PUBLIC;
