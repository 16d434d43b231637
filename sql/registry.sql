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
