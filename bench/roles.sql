-- The roles of bench/masking.sh and bench/audit-cpu.sh: a human, an agent
-- (registered by the caller) and the agent's sponsor. Idempotent.
SET client_min_messages = error;
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_human') THEN CREATE ROLE bench_human LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_agent') THEN CREATE ROLE bench_agent LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_sponsor') THEN CREATE ROLE bench_sponsor LOGIN; END IF;
END
$$;
