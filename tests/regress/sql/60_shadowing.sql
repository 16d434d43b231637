-- Nothing agent_guard runs internally resolves to an object outside pg_catalog
-- and its own schema. Operators and functions planted in public, which every
-- session of this database searches before pg_catalog, record each call in
-- public.shadow_calls: no session start (human, superuser, agent), hook,
-- audit record (the writer included), registry, grant, masking, review or
-- verification function may call any of them. And a session's first
-- statement is its own: agent_guard takes no snapshot before it.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_human LOGIN;
CREATE ROLE regress_root LOGIN SUPERUSER;
CREATE ROLE regress_sponsor LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_bot LOGIN;
CREATE ROLE regress_bot2 LOGIN;
SET client_min_messages = error;  -- (discovery notices are not this test's subject)
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text);
CREATE TABLE orders (id int PRIMARY KEY, amount int);
RESET client_min_messages;
INSERT INTO customers VALUES (1, 'Ann', '123-45-6789');
INSERT INTO orders SELECT g, g FROM generate_series(1, 5) g;
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'SENSITIVE';
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO PUBLIC;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');

-- ---- the shadows -------------------------------------------------------------
CREATE TABLE public.shadow_calls (what text, by_role name DEFAULT current_user);
CREATE FUNCTION public.shadow_called(what text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE WARNING 'shadow % called', what;
    INSERT INTO public.shadow_calls (what) VALUES (what);
END $$;

-- operators: exact matches for what internal SQL compares
CREATE FUNCTION public.shadow_eq(a pg_catalog.oid, b pg_catalog.oid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(oid,oid)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.oid, RIGHTARG = pg_catalog.oid, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.oid, b pg_catalog.regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(oid,regclass)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.oid, RIGHTARG = pg_catalog.regclass, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.regclass, b pg_catalog.oid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(regclass,oid)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.regclass, RIGHTARG = pg_catalog.oid, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.text, b pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(text,text)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.name, b pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(name,text)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.name, RIGHTARG = pg_catalog.text, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.name, b pg_catalog.name) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(name,name)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.name, RIGHTARG = pg_catalog.name, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.int2, b pg_catalog.int4) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(int2,int4)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.int2, RIGHTARG = pg_catalog.int4, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_eq(a pg_catalog.int8, b pg_catalog.int8) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('=(int8,int8)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int8, FUNCTION = public.shadow_eq);
CREATE FUNCTION public.shadow_lt(a pg_catalog.int8, b pg_catalog.int8) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('<(int8,int8)'); RETURN a OPERATOR(pg_catalog.<) b; END $$;
CREATE OPERATOR public.< (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int8, FUNCTION = public.shadow_lt);
CREATE FUNCTION public.shadow_gt(a pg_catalog.int8, b pg_catalog.int8) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('>(int8,int8)'); RETURN a OPERATOR(pg_catalog.>) b; END $$;
CREATE OPERATOR public.> (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int8, FUNCTION = public.shadow_gt);
CREATE FUNCTION public.shadow_gt(a pg_catalog.timestamptz, b pg_catalog.timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('>(timestamptz,timestamptz)'); RETURN a OPERATOR(pg_catalog.>) b; END $$;
CREATE OPERATOR public.> (LEFTARG = pg_catalog.timestamptz, RIGHTARG = pg_catalog.timestamptz, FUNCTION = public.shadow_gt);
CREATE FUNCTION public.shadow_cat(a pg_catalog.text, b pg_catalog.text) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('||(text,text)'); RETURN a OPERATOR(pg_catalog.||) b; END $$;
CREATE OPERATOR public.|| (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = public.shadow_cat);
CREATE FUNCTION public.shadow_get(a pg_catalog.jsonb, b pg_catalog.text) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('->>(jsonb,text)'); RETURN a OPERATOR(pg_catalog.->>) b; END $$;
CREATE OPERATOR public.->> (LEFTARG = pg_catalog.jsonb, RIGHTARG = pg_catalog.text, FUNCTION = public.shadow_get);

-- functions PostgreSQL has in pg_catalog, in case a name lost its qualification
CREATE FUNCTION public.host(a pg_catalog.inet) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('host(inet)'); RETURN pg_catalog.host(a); END $$;
CREATE FUNCTION public.inet_client_addr() RETURNS pg_catalog.inet LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('inet_client_addr()'); RETURN pg_catalog.inet_client_addr(); END $$;
CREATE FUNCTION public.quote_ident(a pg_catalog.text) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('quote_ident(text)'); RETURN pg_catalog.quote_ident(a); END $$;
CREATE FUNCTION public.lower(a pg_catalog.text) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('lower(text)'); RETURN pg_catalog.lower(a); END $$;
CREATE FUNCTION public.now() RETURNS pg_catalog.timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.clock_timestamp() RETURNS pg_catalog.timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION public.current_database() RETURNS pg_catalog.name LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('current_database()'); RETURN pg_catalog.current_database(); END $$;
CREATE FUNCTION public.format_type(a pg_catalog.oid, b pg_catalog.int4) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('format_type(oid,int4)'); RETURN pg_catalog.format_type(a, b); END $$;
CREATE FUNCTION public.to_regprocedure(a pg_catalog.text) RETURNS pg_catalog.regprocedure LANGUAGE plpgsql AS $$
BEGIN PERFORM public.shadow_called('to_regprocedure(text)'); RETURN pg_catalog.to_regprocedure(a); END $$;
-- and a type: an unqualified cast to oid would find this one
CREATE DOMAIN public.oid AS pg_catalog.int8;

-- every new session of this database searches public first; humans are
-- audited too, and every record is written before its statement runs
DO $$ BEGIN
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET search_path = public, pg_catalog', pg_catalog.current_database());
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET agent_guard.audit_non_agents = ''all''', pg_catalog.current_database());
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET agent_guard.audit_durability = sync', pg_catalog.current_database());
END $$;

-- ---- a human -----------------------------------------------------------------
\c - regress_human
-- the session's first statements are its own: no snapshot was taken before them
BEGIN;
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;
SHOW transaction_isolation;
COMMIT;
START TRANSACTION ISOLATION LEVEL REPEATABLE READ;
SELECT pg_catalog.count(*) FROM orders;
ROLLBACK AND CHAIN;
SHOW transaction_isolation;
ROLLBACK;
SHOW search_path;
SELECT agent_guard.current_context() OPERATOR(pg_catalog.->>) 'client_addr' AS client_addr,
       agent_guard.current_context() OPERATOR(pg_catalog.->>) 'is_agent' AS is_agent;
SELECT name, ssn FROM customers;
DO $$ BEGIN PERFORM pg_catalog.count(*) FROM orders; END $$;
CREATE TEMP TABLE scratch (id int);
DROP TABLE scratch;

-- ---- a superuser: DDL on a masked table, the registry, masking upkeep, review --
\c - regress_root
BEGIN;
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;
SHOW transaction_isolation;
COMMIT;
ALTER TABLE customers ADD COLUMN email text;
SECURITY LABEL FOR agent_guard ON COLUMN customers.email IS 'MASKED WITH FUNCTION agent_guard.email(email)';
SELECT relation, attnum, column_name, rule, masking_view IS NOT NULL AS has_view
FROM agent_guard.masking_rules ORDER BY attnum;
SELECT agent_guard.refresh_masking_views();
SELECT agent_guard.register_agent('regress_bot2', 'regress_sponsor', kind => 'ci-job');
SELECT agent::text, sponsor::text, kind FROM agent_guard.agents ORDER BY 1;
SELECT agent_guard.unregister_agent('regress_bot2');
SELECT relation, column_name, suggested_label FROM agent_guard.suggest_sensitive() ORDER BY 1, 2;
SELECT statement_no, command, risk, decision FROM agent_guard.classify('DELETE FROM orders', as_role => 'regress_bot');
SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 AS reviewed FROM agent_guard.access_review();

-- ---- the agent ---------------------------------------------------------------
\c - regress_bot
\set VERBOSITY terse
BEGIN;
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;
SHOW transaction_isolation;
COMMIT;
SELECT agent_guard.current_context() OPERATOR(pg_catalog.->>) 'client_addr' AS client_addr,
       agent_guard.current_context() OPERATOR(pg_catalog.->>) 'is_agent' AS is_agent;
SELECT id, name, ssn, email FROM customers;
COPY customers TO STDOUT;
DELETE FROM orders WHERE id OPERATOR(pg_catalog.=) 1;
SELECT agent_guard.request_access('write', ARRAY['public.orders']::pg_catalog.regclass[], reason => 'remove order 1');
SELECT request, state, risk FROM agent_guard.my_requests;

\c - regress_sponsor
SELECT agent_guard.approve(1, note => 'fine');

\c - regress_bot
\set VERBOSITY terse
DELETE FROM orders WHERE id OPERATOR(pg_catalog.=) 1;
UPDATE orders SET amount = 0 WHERE id OPERATOR(pg_catalog.=) 2;

\c - regress_sponsor
SELECT agent_guard.revoke(1);

-- ---- verification ------------------------------------------------------------
\c - regress_root
SELECT intact FROM agent_guard.verify_audit();
SELECT agent_guard.purge_audit(pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 day');
SELECT intact FROM agent_guard.verify_audit();
SET search_path = pg_catalog, public;
-- everyone was recorded, from the client's address
SELECT s.session_user_name, min(s.client_addr) AS client_addr, count(*) > 0 AS recorded
FROM agent_guard.audit_log a JOIN agent_guard.audit_sessions s ON s.id = a.session_id
WHERE s.session_user_name IN ('regress_human', 'regress_root', 'regress_bot', 'regress_sponsor')
GROUP BY 1 ORDER BY 1;
-- and not one shadow was called
SELECT what, by_role FROM public.shadow_calls;
