-- Access review: kinds, findings, the report in both formats, who may run it.
-- (Concurrent sessions and activity samples: tests/integration/tests/access_review.rs.)
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_alice LOGIN IN ROLE agent_guard_approver;   -- sponsor, also approves
CREATE ROLE regress_carol LOGIN;                                -- sponsor who leaves
CREATE ROLE regress_approver LOGIN IN ROLE agent_guard_approver;  -- a second pair of eyes
CREATE ROLE regress_bot LOGIN;                                  -- agent, active sponsor
CREATE ROLE regress_orphan LOGIN;                               -- agent whose sponsor leaves
CREATE ROLE regress_root LOGIN SUPERUSER;                       -- agent holding superuser
CREATE ROLE regress_ci LOGIN;                                   -- unregistered, used by a CI runner
CREATE ROLE regress_bots NOLOGIN;                               -- a registered group
CREATE ROLE regress_member LOGIN IN ROLE regress_bots;
CREATE ROLE regress_ops NOLOGIN IN ROLE pg_write_server_files;
GRANT regress_ops TO regress_member;
CREATE ROLE regress_reviewer LOGIN IN ROLE agent_guard_admin;
CREATE ROLE regress_nobody LOGIN;
CREATE TABLE orders (id int PRIMARY KEY, amount int);
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
SET client_min_messages = error;  -- (discovery notices are not this test's subject)
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text);
RESET client_min_messages;
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'SENSITIVE';
GRANT SELECT, INSERT, UPDATE, DELETE ON orders, customers TO regress_bot, regress_orphan, regress_ci;
GRANT SELECT ON orders TO regress_bots;
SELECT agent_guard.register_agent('regress_bot', 'regress_alice');
SELECT agent_guard.register_agent('regress_orphan', 'regress_carol');
SELECT agent_guard.register_agent('regress_root', 'regress_alice');
SELECT agent_guard.register_agent('regress_bots', 'regress_alice');
-- the CI account's statements go to the trail (as if audit_non_agents were 'all')
ALTER ROLE regress_ci SET agent_guard.audit_non_agents = 'all';
-- every record is written before its statement runs, so the review sees them all
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET agent_guard.audit_durability = sync', current_database());
END $$;

\c - regress_ci
SET application_name = 'gitlab-runner';
SELECT count(*) FROM orders;

\c - regress_bot
SELECT count(*) FROM orders;
-- refused; then the approval chain: request, its sponsor approves, the write
DELETE FROM orders WHERE id = 1;
\set VERBOSITY terse
/* request_id='job-7' */ SELECT agent_guard.request_access('write', ARRAY['public.orders']::regclass[], reason => 'remove order 1', statement => $q$DELETE FROM orders WHERE id = 1$q$);

\c - regress_alice
SELECT agent_guard.approve(1, note => 'fine');

\c - regress_bot
/* request_id='job-7' */ DELETE FROM orders WHERE id = 1;

\c - regress_root
\set VERBOSITY terse
ALTER SYSTEM SET work_mem = '1GB';
-- an agent session may not run the review, even as a superuser
SELECT count(*) FROM agent_guard.access_review();
SELECT agent_guard.access_review_report();
SELECT agent_guard.sample_activity();

\c - regress_nobody
\set VERBOSITY terse
SELECT count(*) FROM agent_guard.access_review();
SELECT agent_guard.access_review_report('json');
SELECT * FROM agent_guard.activity_samples;

\c - postgres
-- the sponsor leaves
ALTER ROLE regress_carol NOLOGIN;

-- one row per login role and registered group: kind, sponsor, findings (most serious first)
SELECT role, kind, agent, sponsor, sponsor_status, can_login, superuser, can_write, can_ddl, top_severity,
       (SELECT string_agg((f->>'code') || ' ' || (f->>'severity'), ', ')
        FROM jsonb_array_elements(findings) f
        WHERE f->>'code' <> 'agent_connects_without_guard') AS findings
FROM agent_guard.access_review()
WHERE role::text LIKE 'regress\_%'
ORDER BY role;

-- what each did and left unused
SELECT role, risks_used, commands_used, objects_used, unused_rights, statements_by_risk, refusals,
       grants_requested, grants_approved, approved_by, application_names, machine_signals,
       pg_roles, member_of, table_privileges
FROM agent_guard.access_review()
WHERE role::text LIKE 'regress\_%'
ORDER BY role;

-- the fixes
SELECT role, f->>'code' AS code, f->>'fix' AS fix
FROM agent_guard.access_review(), jsonb_array_elements(findings) f
WHERE role::text IN ('regress_orphan', 'regress_root', 'regress_ci', 'regress_member', 'regress_bot')
  AND f->>'code' IN ('orphaned_agent', 'agent_unused_admin_rights', 'unregistered_machine_role',
                     'sponsor_sole_approver', 'unlabelled_sensitive_columns')
ORDER BY role, code;

-- template1 never has agent_guard: every agent that can log in may connect there
SELECT role, bool_or(f->>'code' = 'agent_connects_without_guard' AND f->>'finding' LIKE '%template1%') AS flagged
FROM agent_guard.access_review(), jsonb_array_elements(findings) f
WHERE role::text LIKE 'regress\_%' AND kind = 'agent'
GROUP BY role ORDER BY role;

-- a member of agent_guard_admin may run it
\c - regress_reviewer
SELECT count(*) > 0 AS reviewed FROM agent_guard.access_review() WHERE role::text LIKE 'regress\_%';

\c - postgres
-- the report: json
\set VERBOSITY terse
SELECT agent_guard.access_review_report('pdf');
SELECT doc->>'title' AS title, doc->'scope'->>'database' AS database, doc->'scope'->>'generated_by' AS generated_by,
       (doc->'period'->>'to')::timestamptz - (doc->'period'->>'from')::timestamptz > interval '89 days' AS period_90_days,
       jsonb_typeof(doc->'actors') AS actors, (doc->'audit_chain'->>'intact')::boolean AS chain_intact
FROM (SELECT agent_guard.access_review_report('json')::jsonb AS doc) r;
-- the regress roles' findings in report order: the orphaned agent first
SELECT f->>'role' AS role, f->>'code' AS code, f->>'severity' AS severity
FROM (SELECT agent_guard.access_review_report('json')::jsonb AS doc) r,
     jsonb_array_elements(doc->'findings') f
WHERE f->>'role' LIKE 'regress\_%' AND f->>'code' <> 'agent_connects_without_guard'
LIMIT 4;
-- the approved write with its approval chain; the refusals
SELECT a->>'who' AS who, a->>'command' AS command, a->>'decision' AS decision, a->>'request_id' AS request_id,
       a->>'grant' AS grant_id, a->>'requested_by' AS requested_by, a->>'request_reason' AS reason,
       a->>'approved_by' AS approved_by, a->>'approval_note' AS note, a->>'statement' AS statement
FROM (SELECT agent_guard.access_review_report('json')::jsonb AS doc) r,
     jsonb_array_elements(doc->'high_risk_actions') a
WHERE a->>'who' LIKE 'regress\_%' AND a->>'command' NOT LIKE 'ACCESS REQUEST%'
ORDER BY (a->>'audit_id')::bigint;
SELECT c->>'table' AS "table", c->>'column' AS "column"
FROM (SELECT agent_guard.access_review_report('json')::jsonb AS doc) r,
     jsonb_array_elements(doc->'unlabelled_sensitive_columns') c;

-- the report: markdown (headings, and the approved write's row)
SELECT line FROM regexp_split_to_table(agent_guard.access_review_report(), E'\n') AS line
WHERE line LIKE '#%';
SELECT count(*) AS approved_write_rows
FROM regexp_split_to_table(agent_guard.access_review_report('markdown'), E'\n') AS line
WHERE line LIKE '%| regress\_bot | regress\_bot (regress\_alice) | write | DELETE | public.orders | allowed |%job-7 | #1 | regress\_bot at % / regress\_alice at % (fine) |%';
