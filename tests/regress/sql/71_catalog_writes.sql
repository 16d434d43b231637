-- Writes and schema changes of PostgreSQL's catalogs (pg_catalog, pg_toast,
-- information_schema) and of agent_guard's own objects are administration:
-- never requestable, never approvable, never covered by a grant — not even
-- for a superuser agent, which could otherwise delete its own registration.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_sponsor LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_su_bot LOGIN SUPERUSER;
CREATE TABLE orders (id int);
INSERT INTO orders VALUES (1), (2);
SELECT agent_guard.register_agent('regress_su_bot', 'regress_sponsor');

\c - regress_su_bot
-- the attack: a write grant on pg_shseclabel, then DELETE of the agent's label
SELECT agent_guard.request_access('write', ARRAY['pg_catalog.pg_shseclabel']::regclass[], 'clean up labels');
SELECT agent_guard.request_access('write', ARRAY['pg_catalog.pg_authid']::regclass[]);
SELECT agent_guard.request_access('ddl', ARRAY['information_schema.sql_features']::regclass[]);
SELECT agent_guard.request_access('write', ARRAY['pg_toast.pg_toast_2619']::regclass[]);
SELECT agent_guard.request_access('write', ARRAY['agent_guard.access_requests']::regclass[]);
-- request 1: any write, approved below
SELECT agent_guard.request_access('write', reason => 'any write');

\c - postgres
-- a request naming a catalog that got into the table some other way is not approvable
INSERT INTO agent_guard.access_requests (agent, agent_name, login, login_name, sponsor, sponsor_name, risk, objects, reason, ttl, answer_by)
SELECT agent, agent_name, login, login_name, sponsor, sponsor_name, risk, ARRAY['pg_catalog.pg_shseclabel'::regclass], 'forged', ttl, answer_by
FROM agent_guard.access_requests WHERE id = 1;

\c - regress_sponsor
SELECT agent_guard.approve(2);
SELECT agent_guard.approve(1);

\c - regress_su_bot
-- the grant covers ordinary tables
DELETE FROM orders WHERE id = 1;
-- but no catalog, and nothing of agent_guard's
DELETE FROM pg_catalog.pg_shseclabel WHERE provider = 'agent_guard';
UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = 'regress_sponsor';
INSERT INTO pg_catalog.pg_description VALUES (1, 1, 0, 'x');
WITH d AS (DELETE FROM pg_catalog.pg_shseclabel RETURNING 1) SELECT count(*) FROM d;
TRUNCATE pg_catalog.pg_shseclabel;
COPY pg_catalog.pg_description FROM STDIN;
1	1	0	x
\.
SELECT * FROM pg_catalog.pg_shseclabel FOR UPDATE;
DELETE FROM agent_guard.access_requests;
UPDATE agent_guard.agent_registry SET note = 'mine';
CREATE TABLE pg_catalog.mine (id int);
CREATE TABLE information_schema.mine (id int);
-- reading catalogs is fine
SELECT count(*) > 0 AS labelled FROM pg_catalog.pg_shseclabel WHERE provider = 'agent_guard';
SELECT agent_guard.is_agent_session();

\c - postgres
SELECT statement_no, risk FROM agent_guard.classify('DELETE FROM pg_catalog.pg_shseclabel; UPDATE information_schema.sql_features SET comments = NULL; DELETE FROM orders');
SELECT count(*) AS orders_left FROM orders;
SELECT count(*) AS agent_labels FROM pg_catalog.pg_shseclabel l JOIN pg_catalog.pg_roles r ON r.oid = l.objoid WHERE r.rolname = 'regress_su_bot';
SELECT command, risk, decision FROM agent_guard.audit_log
WHERE agent = 'regress_su_bot' AND decision = 'denied' ORDER BY id;
SELECT agent_guard.revoke(1);
DROP TABLE orders;
DROP ROLE regress_su_bot, regress_sponsor;
