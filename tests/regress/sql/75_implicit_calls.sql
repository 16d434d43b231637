-- The function rule holds for every call an agent's statement causes, also
-- for the functions PostgreSQL calls without an executor check of its own:
-- trigger functions fired by an agent's approved write (event-trigger
-- functions take the same path; PL/Python, the untrusted language installed
-- here, cannot write event triggers). A trigger in an untrusted language is
-- administration for the agent, as a direct call of it is; a trigger in a
-- trusted language runs.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE EXTENSION IF NOT EXISTS plpython3u;
CREATE ROLE regress_sponsor LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_bot LOGIN;
CREATE TABLE py_guarded (id int, note text);
CREATE TABLE pl_guarded (id int, note text);
GRANT INSERT, SELECT ON py_guarded, pl_guarded TO regress_bot;
CREATE FUNCTION py_stamp() RETURNS trigger LANGUAGE plpython3u AS $$
import os
TD["new"]["note"] = "written by os pid %d" % os.getpid()
return "MODIFY"
$$;
CREATE FUNCTION pl_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := 'stamped'; RETURN NEW; END $$;
CREATE FUNCTION copy_note(i int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO py_guarded VALUES (i, 'nested'); END $$;
CREATE TRIGGER py_stamp BEFORE INSERT ON py_guarded FOR EACH ROW EXECUTE FUNCTION py_stamp();
CREATE TRIGGER pl_stamp BEFORE INSERT ON pl_guarded FOR EACH ROW EXECUTE FUNCTION pl_stamp();
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');

\c - regress_bot
SELECT agent_guard.request_access('write', ARRAY['py_guarded', 'pl_guarded']::regclass[], 'load notes') AS write_request \gset

\c - regress_sponsor
SELECT agent_guard.approve(:write_request) > 0 AS approved;

\c - regress_bot
-- the write is approved, but its trigger is untrusted code: refused
INSERT INTO py_guarded VALUES (1, 'x');
-- a trusted trigger runs
INSERT INTO pl_guarded VALUES (1, 'x');
SELECT id, note FROM pl_guarded;
-- however the write reaches the table: nested in a function, by COPY
SELECT copy_note(3);
COPY py_guarded FROM stdin;
4	z
\.

\c - postgres
SELECT count(*) AS py_rows FROM py_guarded;
SELECT command, risk, decision, reason
FROM agent_guard.audit_log WHERE agent = 'regress_bot' AND decision = 'denied'
ORDER BY id;
-- a human's statements fire the same triggers as without agent_guard
INSERT INTO py_guarded VALUES (2, 'x');
SELECT id, note LIKE 'written by os pid %' AS stamped FROM py_guarded;
SELECT agent_guard.unregister_agent('regress_bot');
DROP TABLE py_guarded, pl_guarded;
DROP FUNCTION py_stamp(), pl_stamp(), copy_note(int);
DROP ROLE regress_bot, regress_sponsor;
