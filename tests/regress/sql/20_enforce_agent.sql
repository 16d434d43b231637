-- Default enforcement: an agent with no grant, whose account is even a superuser.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_bot LOGIN SUPERUSER;
CREATE ROLE regress_powerful NOLOGIN SUPERUSER;
GRANT regress_powerful TO regress_bot;
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5) g;
CREATE TABLE t_log (at timestamptz, what text);
CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t_log VALUES (now(), 'row ' || NEW.id); RETURN NEW; END $$;
CREATE PROCEDURE purge_t() LANGUAGE sql AS $$ DELETE FROM t $$;
CREATE FUNCTION definer_delete() RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ DELETE FROM t $$;
CREATE TABLE audit_me (id int);
CREATE SEQUENCE s;
CREATE TRIGGER audit_me_log AFTER INSERT ON audit_me FOR EACH ROW EXECUTE FUNCTION log_delete();
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor', note => 'regression agent');
SELECT agent, sponsor, kind, note, sponsor_status FROM agent_guard.agents WHERE agent::text LIKE 'regress\_%';

\c - regress_bot
SELECT agent_guard.is_agent_session();
-- reads are allowed
SELECT count(*) FROM t;
SELECT 1; DELETE FROM t;
/* DELETE */ DELETE /* hidden */ FROM t;
WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d;
EXPLAIN ANALYZE DELETE FROM t;
EXPLAIN (COSTS OFF) DELETE FROM t;
CREATE TABLE x AS SELECT * FROM t;
SELECT * INTO x FROM t;
MERGE INTO t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE;
INSERT INTO t VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET v = 'changed';
COPY t FROM STDIN;
9	nine
\.
COPY t TO PROGRAM 'cat';
PREPARE p AS DELETE FROM t;
EXECUTE p;
DO $$ BEGIN EXECUTE 'DEL' || 'ETE FROM t'; END $$;
CALL purge_t();
SELECT definer_delete();
SELECT * FROM t FOR UPDATE;
SET ROLE regress_powerful;
SET SESSION AUTHORIZATION regress_sponsor;
SET agent_guard.enabled = off;
SELECT set_config('agent_guard.enabled', 'off', false);
RESET agent_guard.enabled;
DROP EXTENSION agent_guard;
UPDATE agent_guard.agent_registry SET note = 'mine now';
SELECT agent_guard.register_agent('regress_bot', 'regress_bot');
SELECT agent_guard.unregister_agent('regress_bot');
SECURITY LABEL FOR agent_guard ON ROLE regress_bot IS NULL;
ALTER ROLE regress_bot SET agent_guard.enabled = off;
ALTER SYSTEM SET agent_guard.enabled = off;
LOAD 'plpgsql';
GRANT regress_powerful TO regress_sponsor;
VACUUM t;
SELECT pg_reload_conf();
SELECT nextval('s');
INSERT INTO audit_me VALUES (1);
-- session housekeeping still works, and the data is untouched
BEGIN;
SET LOCAL work_mem = '8MB';
SHOW work_mem;
ROLLBACK;
SELECT count(*) AS rows_left FROM t;

\c - postgres
-- the trigger case: the agent's insert is refused before the trigger could write elsewhere
SELECT count(*) AS log_rows FROM t_log;
SELECT count(*) AS rows_left FROM t;
-- a human session can do everything it could without agent_guard
DELETE FROM t WHERE id = 5;
SET agent_guard.enabled = on;
VACUUM t;
SELECT count(*) FROM t;
DROP TABLE t, t_log, audit_me;
DROP SEQUENCE s;
DROP PROCEDURE purge_t();
DROP FUNCTION definer_delete(), log_delete();
DROP ROLE regress_bot, regress_powerful, regress_sponsor;
