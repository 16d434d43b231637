-- agent_guard.classify() and enforcement reach the same verdict from the
-- same code: each statement below is classified, then run by the agent, and
-- the trail records the same risk.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_bot LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com');
SECURITY LABEL FOR agent_guard ON COLUMN customers.email IS 'SENSITIVE';
GRANT SELECT ON customers TO regress_bot;
CREATE TABLE cases (n int PRIMARY KEY, sql text);
INSERT INTO cases VALUES
  (1, 'COPY (SELECT email FROM customers) TO STDOUT'),
  (2, 'COPY (SELECT name FROM customers) TO STDOUT'),
  (3, 'SELECT set_config(''agent_guard.enabled'', ''off'', false)'),
  (4, 'SELECT set_config(''agent_guard.audit_durability'', ''async'', false)'),
  (5, 'SELECT set_config(''work_mem'', ''8MB'', false)'),
  (6, 'EXPLAIN (COSTS OFF) SELECT pg_stat_reset()'),
  (7, 'SELECT pg_notify(''agent_guard'', ''x'')'),
  (8, 'SELECT 1 FROM customers WHERE set_config(''agent_guard.request_lifetime'', ''1d'', true) IS NULL');
GRANT SELECT ON cases TO regress_bot;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');
-- every record written before the statement goes on (a stricter setting than the server's is honoured)
ALTER ROLE regress_bot SET agent_guard.audit_durability = sync;

\c - regress_bot
SELECT n, c.command, c.risk, c.decision FROM cases, agent_guard.classify(sql) c ORDER BY n;
COPY (SELECT email FROM customers) TO STDOUT;
COPY (SELECT name FROM customers) TO STDOUT;
SELECT set_config('agent_guard.enabled', 'off', false);
SELECT set_config('agent_guard.audit_durability', 'async', false);
SELECT set_config('work_mem', '8MB', false);
EXPLAIN (COSTS OFF) SELECT pg_stat_reset();
SELECT pg_notify('agent_guard', 'x');
SELECT 1 FROM customers WHERE set_config('agent_guard.request_lifetime', '1d', true) IS NULL;

\c - postgres
-- what the trail recorded for them (nested statements indented)
SELECT repeat('  ', nesting_level) || command AS command, risk, decision
FROM agent_guard.audit_log
WHERE agent = 'regress_bot' AND statement_text NOT LIKE '%classify%'
ORDER BY id;
ALTER ROLE regress_bot RESET ALL;
DROP TABLE cases, customers;
DROP ROLE regress_bot, regress_sponsor;
