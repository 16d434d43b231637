-- Agents cannot forge events on the approvers' channel, and two-phase commit
-- (whose prepared transactions outlive the session and whose COMMIT/ROLLBACK
-- PREPARED finish other sessions' transactions) is administration.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_bot LOGIN;
CREATE ROLE regress_su_bot LOGIN SUPERUSER;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');
SELECT agent_guard.register_agent('regress_su_bot', 'regress_sponsor');

\c - regress_bot
NOTIFY agent_guard, '{"event": "approve", "request": 1}';
NOTIFY "agent_guard";
SELECT pg_notify('agent_guard', '{"event": "approve", "request": 1}');
SELECT pg_notify('jobs', 'x');
-- other channels are the agent's business
NOTIFY jobs, 'x';
NOTIFY "Agent_Guard", 'not the approvers'' channel';
LISTEN jobs;
UNLISTEN *;
BEGIN;
PREPARE TRANSACTION 'regress_gid';
ROLLBACK;
COMMIT PREPARED 'regress_gid';
ROLLBACK PREPARED 'regress_gid';
-- advisory locks are kept (README, "Risk categories")
SELECT pg_advisory_lock(4711) IS NULL AS locked;
SELECT pg_advisory_unlock(4711);

\c - regress_su_bot
NOTIFY agent_guard;
SELECT pg_notify('agent_guard', 'x');
COMMIT PREPARED 'regress_gid';
ROLLBACK PREPARED 'regress_gid';

\c - postgres
SELECT statement_no, command, risk FROM agent_guard.classify('NOTIFY agent_guard; NOTIFY jobs; SELECT pg_notify(''jobs'', ''x''); PREPARE TRANSACTION ''g''; COMMIT PREPARED ''g''; ROLLBACK PREPARED ''g''; COMMIT');
SELECT agent, command, risk, decision FROM agent_guard.audit_log
WHERE agent IN ('regress_bot', 'regress_su_bot') AND decision = 'denied' ORDER BY id;
DROP ROLE regress_bot, regress_su_bot, regress_sponsor;
