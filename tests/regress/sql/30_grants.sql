-- Just-in-time grants in one session at a time: requests, decisions, coverage.
-- (Concurrent sessions: tests/integration/tests/approval_flow.rs.)
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_sponsor LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_bob LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_carol LOGIN;
-- the agent is even a member of agent_guard_approver: it still may not decide
CREATE ROLE regress_bot LOGIN IN ROLE agent_guard_approver;
CREATE TABLE orders (id int PRIMARY KEY, amount int);
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
CREATE TABLE t_log (what text);
CREATE TABLE audit_me (id int);
CREATE TABLE notes (id int);
ALTER TABLE notes OWNER TO regress_bot;
CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t_log VALUES ('row ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER audit_me_log AFTER INSERT ON audit_me FOR EACH ROW EXECUTE FUNCTION log_it();
GRANT ALL ON orders, t_log, audit_me TO regress_bot;
GRANT CREATE ON SCHEMA public TO regress_bot;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');

\c - regress_bot
-- refused, with a ready-to-run request in the hint
DELETE FROM orders WHERE amount < 3;
-- what can never be requested, and malformed requests
SELECT agent_guard.request_access('admin');
SELECT agent_guard.request_access('privilege', ARRAY['orders']::regclass[]);
SELECT agent_guard.request_access('read');
SELECT agent_guard.request_access('delete');
SELECT agent_guard.request_access('write', ARRAY['agent_guard.access_requests']::regclass[]);
SELECT agent_guard.request_access('write', statement => 'DELETE FROM orders; DELETE FROM t_log');
SELECT agent_guard.request_access('write', statement => 'DELETE FROM orders WHERE');
SELECT agent_guard.request_access('write', ttl => '-1 minute');
-- requests: 1 one statement, 2 audit_me only, 3 ddl on notes, 4 any write, 5 and 6 to deny and let expire
/* request_id='ci-4711' */ SELECT agent_guard.request_access('write', ARRAY['public.orders']::regclass[], reason => 'drop test rows', statement => $q$DELETE FROM orders WHERE amount < 3$q$);
SELECT agent_guard.request_access('write', ARRAY['audit_me']::regclass[], 'insert an audited row');
SELECT agent_guard.request_access('ddl', ARRAY['notes']::regclass[], 'add a column');
SELECT agent_guard.request_access('write', reason => 'anything');
SELECT agent_guard.request_access('write', reason => 'to be denied');
SELECT agent_guard.request_access('write', reason => 'to expire');
-- an agent cannot decide, even as a member of agent_guard_approver
SELECT agent_guard.approve(1);
SELECT agent_guard.deny(1);
SELECT agent_guard.revoke(1);
-- nor write into agent_guard's tables or change its settings
UPDATE agent_guard.access_requests SET status = 'approved';
SET agent_guard.require_distinct_sponsor = off;
SELECT request, state, risk, objects, statement, reason, request_id FROM agent_guard.my_requests ORDER BY request;

\c - regress_carol
-- not an approver
SELECT agent_guard.approve(1);
SELECT agent_guard.revoke(1);
SELECT * FROM agent_guard.pending_requests;
-- not an agent
SELECT agent_guard.request_access('write');
SET agent_guard.require_distinct_sponsor = off;

\c - regress_sponsor
SELECT request, requester, agent, sponsor, risk, objects, statement, reason, ttl, request_id
FROM agent_guard.pending_requests ORDER BY request;
-- under require_distinct_sponsor = ddl the sponsor may approve writes, not ddl
SHOW agent_guard.require_distinct_sponsor;
SELECT agent_guard.approve(3);
SELECT agent_guard.approve(1, note => 'fine');

\c - regress_bob
SELECT agent_guard.approve(1);
SELECT agent_guard.approve(2);
SELECT agent_guard.deny(5, 'no');
SELECT agent_guard.approve(5);
SELECT agent_guard.revoke(5);
SELECT agent_guard.approve(999);
SELECT agent_guard.approve(6, ttl => '-1 second');
SELECT grant_id, requester, risk, objects, statement, approved_by, max_statements, uses, uses_left,
       time_left > interval '0' AS time_left
FROM agent_guard.active_grants ORDER BY grant_id;

\c - postgres
-- a request nobody decided in time expires
UPDATE agent_guard.access_requests SET answer_by = pg_catalog.clock_timestamp() - interval '1 second' WHERE id = 6;
\c - regress_bob
SELECT agent_guard.approve(6);
SELECT request, state FROM agent_guard.requests ORDER BY request;

\c - regress_bot
-- the single-statement grant: a different statement is refused, the same one
-- (whitespace, comments, case, literal formatting aside) runs once
DELETE FROM orders WHERE amount < 4;
delete   from ORDERS
  where amount<003 -- the approved statement
;
DELETE FROM orders WHERE amount < 3;
-- grant 2 covers audit_me, but its trigger writes t_log too: refused, and the hint asks for both
INSERT INTO audit_me VALUES (1);

\c - regress_bob
SELECT agent_guard.approve(4, ttl => '1 hour', max_statements => 5);

\c - regress_bot
-- grant 4 allows any write but no schema change
UPDATE orders SET amount = amount + 1 WHERE id = 10;
INSERT INTO audit_me VALUES (2);
ALTER TABLE notes ADD COLUMN note text;
-- classify() shows what a grant covers without using it
SELECT decision, reason FROM agent_guard.classify('UPDATE orders SET amount = 0');
SELECT request, state, uses FROM agent_guard.my_requests WHERE request IN (1, 4) ORDER BY request;

\c - regress_bob
SELECT agent_guard.revoke(4, 'enough');
SELECT agent_guard.revoke(4);
SELECT agent_guard.approve(3);

\c - regress_bot
-- revoked: refused again
UPDATE orders SET amount = amount + 1 WHERE id = 10;
-- grant 3: ddl on notes; relations created under it become covered
ALTER TABLE notes ADD COLUMN note text;
INSERT INTO notes VALUES (1, 'checked');
CREATE TABLE regress_new (id int);
INSERT INTO regress_new VALUES (1);
CREATE INDEX regress_new_id ON regress_new (id);
DROP INDEX regress_new_id;
DROP TABLE regress_new;
-- but not other relations, nor objects that are not relations
UPDATE t_log SET what = 'x';
CREATE FUNCTION regress_f() RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT request, state, uses, cardinality(created_objects) AS created FROM agent_guard.my_requests WHERE request = 3;

\c - regress_sponsor
-- the sponsor may revoke
SELECT agent_guard.revoke(3, 'done');

\c - regress_bot
SELECT agent_guard.request_access('write', ARRAY['orders']::regclass[], ttl => '1 second') AS request \gset
\c - regress_sponsor
SET agent_guard.require_distinct_sponsor = always;
RESET agent_guard.require_distinct_sponsor;
\c - postgres
-- stricter: the sponsor may not approve anything
ALTER ROLE regress_sponsor SET agent_guard.require_distinct_sponsor = always;
\c - regress_sponsor
SELECT agent_guard.approve(:request);
\c - regress_bob
SELECT agent_guard.approve(:request) = :request AS approved;
\c - regress_bot
UPDATE orders SET amount = 0 WHERE id = 10;
SELECT pg_sleep(1.2);
-- expired: refused again
UPDATE orders SET amount = 1 WHERE id = 10;

\c - postgres
SELECT request, state, uses FROM agent_guard.requests ORDER BY request;
SELECT count(*) AS log_rows FROM t_log;
SELECT id, amount FROM orders WHERE id IN (1, 2, 3, 4, 10) ORDER BY id;
SELECT * FROM notes;
ALTER ROLE regress_sponsor RESET agent_guard.require_distinct_sponsor;
DROP TABLE orders, t_log, audit_me, notes;
DROP FUNCTION log_it();
