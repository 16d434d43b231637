-- PostgreSQL's own errors pass agent_guard's hooks untouched: SQLSTATE
-- (custom ones too), CONTEXT and statement position, for humans and agents,
-- in a database with the extension and in one without it.
CREATE EXTENSION IF NOT EXISTS agent_guard;
\set SHOW_CONTEXT always
\set regress_db :DBNAME
CREATE ROLE regress_fid_sponsor LOGIN;
CREATE ROLE regress_fid_bot LOGIN;
CREATE TABLE fid_t (id int);
GRANT SELECT ON fid_t TO PUBLIC;
SELECT agent_guard.register_agent('regress_fid_bot', 'regress_fid_sponsor') IS NOT NULL AS registered;
-- The same objects in a database without agent_guard.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS regress_fid_noext;
RESET client_min_messages;
CREATE DATABASE regress_fid_noext TEMPLATE template0;
\set setup 'CREATE FUNCTION raise_custom() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION ''custom failure'' USING ERRCODE = ''U9999'', DETAIL = ''the detail'', HINT = ''the hint''; END $$; CREATE PROCEDURE raise_custom_proc() LANGUAGE plpgsql AS $$ BEGIN PERFORM raise_custom(); END $$; CREATE FUNCTION raise_at_plan(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION ''custom failure at plan time'' USING ERRCODE = ''U9998''; END $$; CREATE FUNCTION catch_all() RETURNS SETOF text LANGUAGE plpgsql AS $f$ DECLARE st text; ctx text; x int; BEGIN BEGIN PERFORM raise_custom(); EXCEPTION WHEN SQLSTATE ''U9999'' THEN GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, ctx = PG_EXCEPTION_CONTEXT; RETURN NEXT ''executor: caught '' || st || '' / '' || ctx; END; BEGIN CALL raise_custom_proc(); EXCEPTION WHEN SQLSTATE ''U9999'' THEN GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, ctx = PG_EXCEPTION_CONTEXT; RETURN NEXT ''utility: caught '' || st || '' / '' || ctx; END; BEGIN EXECUTE ''SELECT raise_at_plan(1)'' INTO x; EXCEPTION WHEN SQLSTATE ''U9998'' THEN GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, ctx = PG_EXCEPTION_CONTEXT; RETURN NEXT ''planner: caught '' || st || '' / '' || ctx; END; BEGIN EXECUTE ''SELECT 1/0''; EXCEPTION WHEN division_by_zero THEN GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE; RETURN NEXT ''division: caught '' || st; END; END $f$;'
:setup
\c regress_fid_noext
:setup
\c :regress_db
-- As a human, with the extension.
SELECT * FROM catch_all();
SELECT raise_custom();
CALL raise_custom_proc();
SELECT raise_at_plan(1);
SELECT id,
       1/0
FROM fid_t, (VALUES (1)) v(x);
SELECT no_such_column FROM fid_t;
\set VERBOSITY sqlstate
SELECT raise_custom();
\set VERBOSITY default
-- As a human, without the extension.
\c regress_fid_noext
SELECT * FROM catch_all();
SELECT raise_custom();
SELECT id,
       1/0
FROM (VALUES (1)) v(id);
-- As an agent, with the extension: the same errors, the same fidelity.
\c :regress_db regress_fid_bot
SELECT agent_guard.is_agent_session();
SELECT * FROM catch_all();
SELECT raise_custom();
CALL raise_custom_proc();
SELECT raise_at_plan(1);
SELECT id,
       1/0
FROM fid_t, (VALUES (1)) v(x);
SELECT no_such_column FROM fid_t;
\set VERBOSITY sqlstate
SELECT raise_custom();
\set VERBOSITY default
-- agent_guard's own refusal keeps its SQLSTATE, DETAIL and HINT.
\set VERBOSITY sqlstate
DELETE FROM fid_t;
\set VERBOSITY default
\c :regress_db postgres
DROP DATABASE regress_fid_noext;
