-- Schema changes by an agent with an approved DDL grant that would evaluate
-- expressions over the real values of masked columns (their errors, the
-- functions they call, the values they store) or take masks away from stored
-- values (DETACH PARTITION, NO INHERIT, DROP EXPRESSION) are refused; plain
-- column lists and expressions over unmasked columns pass; humans unchanged.
CREATE EXTENSION IF NOT EXISTS agent_guard;
SET client_min_messages = warning;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_approver LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_bot LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text, amount int);
INSERT INTO customers VALUES (1, 'Maria', '214-13-5506', 10), (2, 'James', '350-38-3286', 20);
ALTER TABLE customers ADD COLUMN last4 text GENERATED ALWAYS AS (right(ssn, 4)) STORED;
SECURITY LABEL FOR agent_guard ON COLUMN customers.name IS 'SENSITIVE';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'SENSITIVE';
-- a partitioned table and an inheritance parent, labelled on the parent only
CREATE TABLE pt (k text, ssn text, note text) PARTITION BY LIST (k);
CREATE TABLE pt_a PARTITION OF pt FOR VALUES IN ('a');
CREATE TABLE pt_b PARTITION OF pt FOR VALUES IN ('b');
INSERT INTO pt VALUES ('a', '214-13-5506', 'n1'), ('b', '350-38-3286', 'n2');
SECURITY LABEL FOR agent_guard ON COLUMN pt.ssn IS 'SENSITIVE';
-- pt_b has labels of its own: its inherited one again, and one pt lacks
SECURITY LABEL FOR agent_guard ON COLUMN pt_b.ssn IS 'SENSITIVE';
SECURITY LABEL FOR agent_guard ON COLUMN pt_b.note IS 'SENSITIVE';
CREATE TABLE par (id int, ssn text);
CREATE TABLE chi () INHERITS (par);
INSERT INTO chi VALUES (1, '214-13-5506');
SECURITY LABEL FOR agent_guard ON COLUMN par.ssn IS 'SENSITIVE';
-- a human's function that reports its argument
CREATE FUNCTION public.checked(text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
AS $$ BEGIN RAISE NOTICE 'checked %', $1; RETURN true; END $$;
CREATE FUNCTION public.checked_domain(text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
AS $$ BEGIN RAISE NOTICE 'domain checked %', $1; RETURN true; END $$;
-- a masked column of a domain the agent owns, and a domain a human wrote
CREATE DOMAIN public.secret_t AS text;
CREATE DOMAIN public.ssn_t AS text CHECK (public.checked_domain(VALUE));
CREATE TABLE holder (id int, v public.secret_t);
INSERT INTO holder VALUES (1, 'Maria');
SECURITY LABEL FOR agent_guard ON COLUMN holder.v IS 'SENSITIVE';
-- the agent owns the tables and holds an approved DDL grant on them
ALTER TABLE customers OWNER TO regress_bot;
ALTER TABLE pt OWNER TO regress_bot;
ALTER TABLE pt_a OWNER TO regress_bot;
ALTER TABLE pt_b OWNER TO regress_bot;
ALTER TABLE par OWNER TO regress_bot;
ALTER TABLE chi OWNER TO regress_bot;
ALTER TABLE holder OWNER TO regress_bot;
ALTER DOMAIN public.secret_t OWNER TO regress_bot;
GRANT CREATE ON SCHEMA public TO regress_bot;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');
RESET client_min_messages;
\c - regress_bot
SELECT agent_guard.request_access('ddl', ARRAY['customers', 'pt', 'pt_a', 'pt_b', 'par', 'chi', 'holder']::regclass[], 'migration');
\c - regress_approver
SELECT agent_guard.approve(1) AS approved;
\c - regress_bot
SELECT * FROM customers ORDER BY id;

-- ---- expressions over masked columns: refused ----
CREATE INDEX ON customers ((name::int));
CREATE INDEX ON customers ((public.checked(ssn)));
CREATE INDEX ON customers (id) WHERE name::int > 0;
CREATE INDEX ON customers ((customers::text));
ALTER TABLE customers ADD CONSTRAINT c1 CHECK (name::date IS NOT NULL);
ALTER TABLE customers ADD CONSTRAINT c2 CHECK (public.checked(customers.ssn)) NOT VALID;
ALTER TABLE customers ADD CONSTRAINT c3 EXCLUDE USING btree ((name::int) WITH =);
ALTER TABLE customers ADD COLUMN g int GENERATED ALWAYS AS (name::int) STORED;
ALTER TABLE customers ADD COLUMN h text CHECK (h <> name);
ALTER TABLE customers ALTER COLUMN name TYPE int USING name::int;
-- converting the stored values of a masked column: input functions quote
-- what they cannot read (regclass: relation "Maria" does not exist), domain
-- checks and casts receive every value
ALTER TABLE customers ALTER COLUMN name TYPE regclass;
ALTER TABLE customers ALTER COLUMN ssn TYPE public.ssn_t USING ssn;
ALTER TABLE pt ALTER COLUMN ssn TYPE public.ssn_t;
-- copying real values into a column that is not masked
ALTER TABLE customers ALTER COLUMN amount TYPE text USING ssn;
-- through the parent, to the parent's and to a partition's own label
CREATE INDEX ON pt ((ssn::int));
CREATE INDEX ON pt ((note::int));
-- nested in a function, too
DO $$ BEGIN EXECUTE 'CREATE INDEX ON customers ((name::int))'; END $$;
-- ---- masks taken away: refused ----
ALTER TABLE customers ALTER COLUMN last4 DROP EXPRESSION;
ALTER TABLE pt DETACH PARTITION pt_a;
ALTER TABLE chi NO INHERIT par;
-- ---- what evaluates nothing over masked values: allowed ----
CREATE INDEX customers_ssn_idx ON customers (ssn);
CREATE INDEX customers_amount_idx ON customers ((amount * 2)) WHERE amount > 0;
ALTER TABLE customers ADD CONSTRAINT amount_positive CHECK (amount > 0);
ALTER TABLE customers ADD COLUMN note text CHECK (note <> '');
ALTER TABLE customers ALTER COLUMN name TYPE varchar(20);
ALTER TABLE customers ALTER COLUMN name TYPE text USING name;
-- a partition with labels of its own keeps them
ALTER TABLE pt DETACH PARTITION pt_b;
SELECT * FROM pt_b;
-- every read is still masked
SELECT id, name, ssn, last4 FROM customers ORDER BY id;
SELECT * FROM pt ORDER BY k;
SELECT * FROM chi;

-- ---- a grant for any schema change: a check on the domain of a masked
-- column (evaluated now, or at later writes when NOT VALID) is refused ----
SELECT agent_guard.request_access('ddl', reason => 'domain migration');
\c - regress_approver
SELECT agent_guard.approve(2) AS approved;
\c - regress_bot
ALTER DOMAIN public.secret_t ADD CONSTRAINT sc CHECK (public.checked(VALUE));
ALTER DOMAIN public.secret_t ADD CONSTRAINT sc CHECK (public.checked(VALUE)) NOT VALID;
ALTER DOMAIN public.secret_t SET DEFAULT 'none';
ALTER DOMAIN public.secret_t ADD CONSTRAINT nn CHECK (VALUE IS NOT NULL) NOT VALID;
ALTER DOMAIN public.secret_t VALIDATE CONSTRAINT nn;
SELECT * FROM holder;
-- code that receives whole rows of a masked relation: it would run over the
-- real rows in every session that writes it (humans' included)
CREATE FUNCTION public.bot_keep() RETURNS trigger LANGUAGE plpgsql
AS $$ BEGIN RAISE NOTICE 'row %', NEW; RETURN NEW; END $$;
CREATE TRIGGER keep BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION public.bot_keep();
CREATE TRIGGER keep AFTER UPDATE ON pt FOR EACH ROW EXECUTE FUNCTION public.bot_keep();
CREATE TRIGGER keep AFTER UPDATE ON customers REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION public.bot_keep();
CREATE RULE keep AS ON UPDATE TO customers DO ALSO NOTIFY keep;
-- nor through a new parent: its row-level triggers are cloned onto a partition
CREATE TABLE public.apar (k text, ssn text, note text) PARTITION BY LIST (k);
CREATE TRIGGER keep AFTER UPDATE ON public.apar FOR EACH ROW EXECUTE FUNCTION public.bot_keep();
ALTER TABLE public.apar ATTACH PARTITION pt_b FOR VALUES IN ('b');
DROP TABLE public.apar;
-- a statement-level trigger receives no row: allowed
CREATE TRIGGER stmt AFTER UPDATE ON customers FOR EACH STATEMENT EXECUTE FUNCTION public.bot_keep();
DROP TRIGGER stmt ON customers;

-- ---- humans are not affected ----
\c - postgres
CREATE INDEX customers_name_idx ON customers ((length(name)));
ALTER TABLE pt DETACH PARTITION pt_a;
SELECT * FROM pt_a;
-- the agent's refusals are in the trail
SELECT command, risk, decision, nesting_level, left(reason, 60) AS reason FROM agent_guard.audit_log
WHERE agent = 'regress_bot' AND decision = 'denied' ORDER BY id;
DROP TABLE customers, pt, pt_a, pt_b, chi, par, holder;
DROP DOMAIN public.secret_t, public.ssn_t;
DROP FUNCTION public.checked(text), public.checked_domain(text), public.bot_keep();
