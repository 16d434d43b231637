-- agent_guard demo cast (loaded by demo/run.sh as postgres, after dataset.sql).
--   alice   a human: the sponsor who runs the CI agent and answers for it
--   bob     a human: the approver who signs off risky requests
--   ci_bot  an AI agent's service account; like most service accounts it
--           inherited broad rights: it may read and change every table
-- Roles are cluster-wide, so re-running the demo keeps them (created if absent).
-- The trust-auth demo cluster lets each of them log in without a password.

DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['alice', 'bob', 'ci_bot'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', r);
    END IF;
  END LOOP;
END
$$;

-- a previous run of the demo disabled alice: she starts active
ALTER ROLE alice LOGIN VALID UNTIL 'infinity';

COMMENT ON ROLE alice  IS 'human: sponsor of the ci_bot agent';
COMMENT ON ROLE bob    IS 'human: approver of risky requests';
COMMENT ON ROLE ci_bot IS 'AI agent service account (CI bot)';

GRANT CONNECT ON DATABASE agent_guard_demo TO alice, bob, ci_bot;
GRANT USAGE ON SCHEMA public TO alice, bob, ci_bot;

-- bob approves agents' requests for just-in-time grants.
GRANT agent_guard_approver TO bob;

-- The humans can look at the data.
GRANT SELECT ON customers, orders TO alice, bob;

-- The agent got everything a service account usually gets.
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO ci_bot;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ci_bot;

-- Start the story with ci_bot unregistered (registrations are cluster-wide
-- role labels, so they outlive a dropped demo database).
SELECT agent_guard.unregister_agent('ci_bot')
WHERE EXISTS (SELECT 1 FROM agent_guard.agents WHERE agent = 'ci_bot'::regrole);
