-- Integrity-constraint violations (SQLSTATE class 23) quote the offending
-- row in their DETAIL, real values of masked columns included. In agent
-- sessions the DETAIL is replaced as the error is raised: a PL/pgSQL
-- EXCEPTION handler that catches it (GET STACKED DIAGNOSTICS) gets the
-- replacement too, and so does a session whose log_min_messages keeps errors
-- out of the server log (emit_log_hook is not called for them). Humans see
-- PostgreSQL's DETAIL unchanged.
CREATE EXTENSION IF NOT EXISTS agent_guard;
SET client_min_messages = warning;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_approver LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_bot LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, ssn text UNIQUE CHECK (ssn <> 'x'));
INSERT INTO customers VALUES (1, 'Maria', '214-13-5506'), (2, 'James', '350-38-3286');
SECURITY LABEL FOR agent_guard ON COLUMN customers.name IS 'SENSITIVE';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'SENSITIVE';
CREATE TABLE refs (ssn text REFERENCES customers (ssn));
INSERT INTO refs VALUES ('214-13-5506');
GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO regress_bot;
-- what a caught violation's DETAIL says, and a re-raise of it
CREATE FUNCTION public.caught_detail(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN integrity_constraint_violation THEN
  GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
  RETURN d;
END $$;
CREATE FUNCTION public.reraised(stmt text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
  EXECUTE stmt;
EXCEPTION WHEN integrity_constraint_violation THEN
  GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
  RAISE EXCEPTION 'caught: %', d;
END $$;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');
RESET client_min_messages;
\c - regress_bot
SELECT agent_guard.request_access('write', ARRAY['customers']::regclass[], 'fix rows');
\c - regress_approver
SELECT agent_guard.approve(1) AS approved;

-- ---- humans: PostgreSQL's DETAIL ----
\c - postgres
SELECT public.caught_detail($$UPDATE customers SET ssn = 'x' WHERE id = 1$$);
SELECT public.caught_detail($$INSERT INTO customers VALUES (3, 'Zoe', '214-13-5506')$$);

-- ---- the agent: never the row ----
\c - regress_bot
-- check (the row's masked name and ssn), unique, foreign key, not null
SELECT public.caught_detail($$UPDATE customers SET ssn = 'x' WHERE id = 1$$);
SELECT public.caught_detail($$UPDATE customers SET id = 2 WHERE id = 1$$);
SELECT public.caught_detail($$INSERT INTO customers VALUES (3, 'Zoe', '214-13-5506')$$);
SELECT public.caught_detail($$DELETE FROM customers WHERE id = 1$$);
SELECT public.caught_detail($$UPDATE customers SET name = NULL WHERE id = 2$$);
SELECT public.reraised($$UPDATE customers SET ssn = 'x' WHERE id = 1$$);
-- in a DO block
DO $$ DECLARE d text;
BEGIN
  UPDATE customers SET ssn = 'x' WHERE id = 2;
EXCEPTION WHEN check_violation THEN
  GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
  RAISE NOTICE 'caught: %', d;
END $$;
-- uncaught
UPDATE customers SET ssn = 'x' WHERE id = 1;
-- a session whose errors are not logged (emit_log_hook never sees them, so
-- a failed statement would leave no record and no redaction): only session
-- housekeeping runs, whichever route set it (role setting here; the startup
-- packet of a superuser agent, a function's SET clause alike)
\c - postgres
ALTER ROLE regress_bot SET log_min_messages = fatal;
\c - regress_bot
SHOW log_min_messages;
SELECT 1/0;
UPDATE customers SET ssn = 'x' WHERE id = 1;
\c - postgres
ALTER ROLE regress_bot SET log_min_messages = log;
\c - regress_bot
SELECT count(*) FROM customers;
\c - postgres
ALTER ROLE regress_bot RESET log_min_messages;
\c - regress_bot
SELECT 1/0;
\c - postgres
-- the refusals are in the trail
SELECT command, decision, outcome, sqlstate, statement_text FROM agent_guard.audit_log
WHERE agent = 'regress_bot' AND decision = 'denied' ORDER BY id;
SELECT * FROM customers ORDER BY id;
DROP TABLE refs, customers;
DROP FUNCTION public.caught_detail(text), public.reraised(text);
