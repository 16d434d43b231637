-- Which function calls are administration for an agent: a rule over the
-- catalog, not a list of names. A call is `admin` when PUBLIC may not execute
-- the function as shipped (superuser-only functions), when it is written in an
-- untrusted language, or when it is one of agent_guard's internal functions.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE EXTENSION IF NOT EXISTS plpython3u;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_su_bot LOGIN SUPERUSER;
CREATE ROLE regress_bot LOGIN;
-- an administrator's helpers: one in an untrusted language, PUBLIC may execute it
CREATE FUNCTION whoami_os() RETURNS text LANGUAGE plpython3u AS $$
import getpass
return getpass.getuser()
$$;
CREATE PROCEDURE py_proc() LANGUAGE plpython3u AS $$ plpy.notice('ran') $$;
-- a SQL wrapper around it and around a superuser-only function
CREATE FUNCTION wrapped_os() RETURNS text LANGUAGE sql AS $$ SELECT whoami_os() $$;
CREATE FUNCTION wrapped_reset() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_stat_reset(); END $$;
-- a user's own function, restricted to the agents: ordinary
CREATE FUNCTION double_it(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN i * 2; END $$;
REVOKE EXECUTE ON FUNCTION double_it(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION double_it(int) TO regress_bot, regress_su_bot;
-- a superuser-only function an administrator granted on to PUBLIC stays administration
GRANT EXECUTE ON FUNCTION pg_ls_dir(text) TO PUBLIC;
SELECT agent_guard.register_agent('regress_su_bot', 'regress_sponsor');
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');

\c - regress_su_bot
-- superuser-only by their ACL (pg_stat_reset*) or by a check inside (pg_nextoid, pg_import_system_collations)
SELECT pg_stat_reset();
SELECT pg_stat_reset_shared('bgwriter');
SELECT pg_import_system_collations('pg_catalog');
SELECT pg_nextoid('pg_catalog.pg_class', 'oid', 'pg_catalog.pg_class_oid_index');
SELECT pg_ls_dir('.') LIMIT 1;
SELECT pg_read_file('PG_VERSION');
-- agent_guard's own internals
SELECT agent_guard._masking_sync(NULL, false);
SELECT agent_guard._masking_changed();
-- untrusted languages, directly, through a wrapper, as a procedure
SELECT whoami_os();
SELECT wrapped_os();
CALL py_proc();
DO LANGUAGE plpython3u $$ plpy.notice('ran') $$;
-- hidden in an expression, a subquery, a wrapper
SELECT 1 WHERE pg_stat_reset() IS NOT NULL;
SELECT (SELECT pg_stat_reset_shared('archiver'));
SELECT wrapped_reset();
-- ordinary calls run
SELECT lower('A') AS lower, double_it(21) AS doubled, agent_guard.is_agent_session() AS agent;

\c - regress_bot
-- an ordinary agent: untrusted code is administration although PUBLIC may execute it
SELECT whoami_os();
SELECT wrapped_os();
SELECT lower('A') AS lower, double_it(21) AS doubled;

\c - postgres
-- classify() says so too, from the same rule
SELECT statement_no, risk, decision FROM agent_guard.classify('SELECT pg_stat_reset(); SELECT whoami_os(); SELECT agent_guard._masking_sync(NULL, false); SELECT pg_nextoid(''pg_class'', ''oid'', ''pg_class_oid_index''); SELECT double_it(1)', as_role => 'regress_su_bot');
-- every refusal is in the trail
SELECT command, risk, decision, count(*)
FROM agent_guard.audit_log WHERE agent IN ('regress_su_bot', 'regress_bot') AND decision = 'denied'
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
-- a human calls whatever PostgreSQL lets them
SELECT whoami_os();
REVOKE EXECUTE ON FUNCTION pg_ls_dir(text) FROM PUBLIC;
DROP FUNCTION wrapped_os(), wrapped_reset(), whoami_os(), double_it(int);
DROP PROCEDURE py_proc();
DROP ROLE regress_su_bot, regress_bot, regress_sponsor;
