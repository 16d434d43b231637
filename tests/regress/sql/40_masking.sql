-- Inline masking: labels, mask functions, masking views, what agents and
-- humans read, discovery. (Every read path with real clients, the audit trail
-- and the server log: tests/integration/tests/masking_paths.rs.)
CREATE EXTENSION IF NOT EXISTS agent_guard;
SET client_min_messages = warning;
CREATE ROLE regress_sponsor LOGIN;
CREATE ROLE regress_bot LOGIN;
CREATE ROLE regress_owner LOGIN;
CREATE ROLE regress_superbot LOGIN SUPERUSER;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text,
                        card_number varchar(19), birth_date date, salary numeric, note text);
INSERT INTO customers VALUES
  (1, 'Maria Hoffmann', 'maria@example.com', '214-13-5506', '4111 1111 1111 1111', '1984-07-21', 72400, 'vip'),
  (2, 'James Okafor', 'james@example.org', '350-38-3286', '5555555555554444', '1990-02-03', 51900, NULL);
GRANT SELECT ON customers TO regress_bot, regress_sponsor, regress_owner;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');
SELECT agent_guard.register_agent('regress_superbot', 'regress_sponsor');
RESET client_min_messages;

-- ---- labels: validated from PostgreSQL's parse tree when written ----
-- an untrusted function, an unqualified function, a subquery
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION public.leak(ssn)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION partial(ssn, 0, ''x'', 4)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.redact((SELECT ssn FROM customers LIMIT 1))';
-- agent_guard functions that are not masks, other columns, operators, statements, bad constants
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.approve(1)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.redact(name)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.redact(ssn || name)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.redact(ssn) FROM pg_authid';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.redact(ssn); DROP TABLE customers';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION pg_catalog.pg_read_file(''/etc/passwd'')';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.salary IS 'MASKED WITH VALUE ''lots''';
SECURITY LABEL FOR agent_guard ON COLUMN customers.salary IS 'MASKED WITH VALUE pg_catalog.random()';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH VALUE ssn';
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED BY agent_guard.redact(ssn)';
-- a view owned by another role, and a view on it
CREATE VIEW customer_view AS SELECT id, ssn FROM customers;
ALTER VIEW customer_view OWNER TO regress_owner;
CREATE VIEW customer_view_view AS SELECT ssn, id FROM customer_view;
GRANT SELECT ON customer_view, customer_view_view TO regress_bot;
SECURITY LABEL FOR agent_guard ON COLUMN customer_view.ssn IS 'SENSITIVE';
CREATE TEMP TABLE scratch_tmp (ssn text);
SECURITY LABEL FOR agent_guard ON COLUMN scratch_tmp.ssn IS 'SENSITIVE';
-- accepted forms
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.card_number IS 'masked with function agent_guard.card_number(card_number)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.email IS 'MASKED WITH FUNCTION agent_guard.email(email)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.birth_date IS 'SENSITIVE';
SECURITY LABEL FOR agent_guard ON COLUMN customers.salary IS 'MASKED WITH FUNCTION agent_guard.bucket(salary, 10000::numeric)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.note IS 'MASKED WITH VALUE ''(hidden)''';
SELECT relation, attnum, column_name, column_type, rule, inherited_from, generated_from, masking_view
FROM agent_guard.masking_rules ORDER BY relation::text, attnum;
-- the generated masking view: what agents read, deparsed by PostgreSQL
-- (column references unqualified, as PostgreSQL 16 and later print them)
SELECT regexp_replace(pg_catalog.pg_get_viewdef('agent_guard_masked.customers'::regclass, true), '\mcustomers\.', '', 'g') AS pg_get_viewdef;
SELECT reloptions FROM pg_class WHERE oid = 'agent_guard_masked.customers'::regclass;
SELECT agent_guard.mask_expression('customers', 'birth_date');

-- ---- mask functions ----
SELECT agent_guard.redact('214-13-5506'), agent_guard.partial('214-13-5506', 0, '***-**-', 4),
       agent_guard.partial('Maria', 1, '***', 0), agent_guard.partial('ab', 1, '***', 1),
       agent_guard.email('maria.hoffmann@example.com'), agent_guard.card_number('3782-822463-10005'),
       agent_guard.redact('Zoë'), agent_guard.redact(NULL);
SELECT agent_guard.generalize_date('1984-07-21'::date), agent_guard.generalize_date('1984-07-21'::date, 'month'),
       agent_guard.generalize_date('1984-07-21 10:00'::timestamp, 'month'),
       agent_guard.bucket(72400::numeric, 10000), agent_guard.bucket(-5, 10), agent_guard.bucket(123::bigint, 50),
       agent_guard.bucket(2.5::float8, 2);
-- the keyed hash is deterministic and keyed; its key is readable by its owner only
SELECT agent_guard.hash('214-13-5506') = agent_guard.hash('214-13-5506') AS deterministic,
       agent_guard.hash('214-13-5506') <> agent_guard.hash('350-38-3286') AS distinct_values,
       length(agent_guard.hash('x')) AS hex_digits;
SELECT has_table_privilege('regress_bot', 'agent_guard.masking_key', 'SELECT') AS agent_may_read_key;
-- none is SECURITY DEFINER
SELECT p.proname, p.prosecdef, p.provolatile
FROM pg_proc p WHERE p.pronamespace = 'agent_guard'::regnamespace
  AND p.proname IN ('redact', 'partial', 'email', 'card_number', 'hash', 'generalize_date', 'bucket')
ORDER BY 1, 2, 3;

-- ---- what each session reads ----
\c - regress_sponsor
SELECT * FROM customers ORDER BY id;
\c - regress_bot
SELECT * FROM customers ORDER BY id;
SELECT c FROM customers c ORDER BY id;
-- WHERE, ORDER BY and GROUP BY see masked values only
SELECT count(*) AS by_real_ssn FROM customers WHERE ssn = '214-13-5506';
SELECT count(*) AS by_real_prefix FROM customers WHERE ssn LIKE '214%';
SELECT ssn, count(*) FROM customers GROUP BY ssn ORDER BY ssn;
-- equal masked values group together; the hash keeps joins working
SELECT a.id, b.id FROM customers a JOIN customers b ON agent_guard.hash(a.ssn) = agent_guard.hash(b.ssn) ORDER BY 1;
-- through a view owned by another role and a view on a view
SELECT * FROM customer_view ORDER BY id;
SELECT * FROM customer_view_view ORDER BY id;
-- the plan shows the masks
EXPLAIN (VERBOSE, COSTS OFF) SELECT ssn FROM customers WHERE id = 1;
-- system columns pass through the masking (not with row locks)
SELECT ctid, tableoid::regclass, ssn FROM customers WHERE ctid = '(0,1)';
SELECT ctid, ssn FROM customers FOR UPDATE;
\c - postgres
ANALYZE customers;
SELECT attname, histogram_bounds IS NOT NULL AS has_histogram FROM pg_stats
WHERE tablename = 'customers' AND attname IN ('name', 'ssn') ORDER BY 1;
SELECT reltoastrelid::regclass AS toast FROM pg_class WHERE oid = 'customers'::regclass \gset
\c - regress_superbot
-- planner statistics show no sampled values to agents
SELECT attname, histogram_bounds IS NOT NULL AS has_histogram FROM pg_stats
WHERE tablename = 'customers' AND attname IN ('name', 'ssn') ORDER BY 1;
-- a superuser agent reads the hashing key as NULL, and no TOAST table of a masked relation
SELECT key IS NULL AS key_hidden FROM agent_guard.masking_key;
SELECT count(*) FROM :toast;
\c - postgres

-- ---- partitions inherit their parent's labels ----
CREATE TABLE payments (id int, card text, amount int) PARTITION BY RANGE (id);
CREATE TABLE payments_1 PARTITION OF payments FOR VALUES FROM (0) TO (100);
INSERT INTO payments VALUES (1, '4012888888881881', 10);
SECURITY LABEL FOR agent_guard ON COLUMN payments.card IS 'MASKED WITH FUNCTION agent_guard.card_number(card)';
CREATE TABLE payments_2 PARTITION OF payments FOR VALUES FROM (100) TO (200);
INSERT INTO payments VALUES (150, '4242424242424242', 20);
GRANT SELECT ON payments, payments_1, payments_2 TO regress_bot;
SELECT relation, column_name, inherited_from, masking_view IS NOT NULL AS has_view
FROM agent_guard.masking_rules WHERE relation::text LIKE 'payments%' ORDER BY 1;
\c - regress_bot
SELECT * FROM payments ORDER BY id;
SELECT * FROM payments_2;
\c - postgres
-- a partition that masks more than its parent cannot be read through the parent
SECURITY LABEL FOR agent_guard ON COLUMN payments_2.amount IS 'MASKED WITH VALUE 0';
\c - regress_bot
SELECT * FROM payments ORDER BY id;
SELECT id FROM payments ORDER BY id;
SELECT * FROM payments_2;
\c - postgres
SECURITY LABEL FOR agent_guard ON COLUMN payments_2.amount IS NULL;

-- ---- materialized views built from masked columns ----
CREATE MATERIALIZED VIEW customer_cards AS SELECT id, card_number FROM customers;
CREATE MATERIALIZED VIEW customer_names AS SELECT id, name FROM customers;
GRANT SELECT ON customer_cards, customer_names TO regress_bot;
SELECT * FROM agent_guard.masking_taints;
\c - regress_bot
SELECT * FROM customer_cards;
SELECT count(*) FROM customer_cards;
SELECT * FROM customer_names ORDER BY id;
\c - postgres
SECURITY LABEL FOR agent_guard ON COLUMN customer_cards.card_number IS 'MASKED WITH FUNCTION agent_guard.card_number(card_number)';
\c - regress_bot
SELECT * FROM customer_cards ORDER BY id;
-- refreshed by an agent, it would be computed from masked values
REFRESH MATERIALIZED VIEW customer_cards;
\c - postgres

-- ---- schema changes keep the masking views in step ----
ALTER TABLE customers ALTER COLUMN email TYPE varchar(100);
ALTER TABLE customers RENAME COLUMN ssn TO tax_number;
ALTER TABLE customers DROP COLUMN note;
SELECT regexp_replace(pg_catalog.pg_get_viewdef('agent_guard_masked.customers'::regclass, true), '\mcustomers\.', '', 'g') AS pg_get_viewdef;
\c - regress_bot
SELECT * FROM customers ORDER BY id;
\c - postgres
-- a generated column computed from a masked column is masked too
ALTER TABLE customers ADD COLUMN ssn_last4 text GENERATED ALWAYS AS (right(tax_number, 4)) STORED;
SELECT column_name, rule, generated_from FROM agent_guard.masking_rules
WHERE relation = 'customers'::regclass AND column_name = 'ssn_last4';
\c - regress_bot
SELECT id, tax_number, ssn_last4 FROM customers ORDER BY id;
\c - postgres
ALTER TABLE customers DROP COLUMN ssn_last4;
-- a label removed: the column is no longer masked
SECURITY LABEL FOR agent_guard ON COLUMN customers.salary IS NULL;
SELECT column_name FROM agent_guard.masking_rules WHERE relation = 'customers'::regclass ORDER BY attnum;
-- dropping a masked table needs no CASCADE
CREATE TABLE scratch (id int, ssn text);
SECURITY LABEL FOR agent_guard ON COLUMN scratch.ssn IS 'SENSITIVE';
DROP TABLE scratch;
SELECT relname FROM pg_class WHERE relnamespace = 'agent_guard_masked'::regnamespace ORDER BY 1;

-- ---- discovery ----
-- a migration adding a column that looks sensitive by name says so only when
-- the DBA asks (agent_guard.discovery_messages, default off)
SHOW agent_guard.discovery_messages;
SET agent_guard.discovery_messages = warning;
ALTER TABLE customers ADD COLUMN phone text;
SET agent_guard.discovery_messages = notice;
CREATE TABLE orders (id int, ref text, iban text, amount int);
RESET agent_guard.discovery_messages;
INSERT INTO orders SELECT g, (ARRAY['4111111111111111', '5555555555554444', '4012888888881881'])[g % 3 + 1], NULL, g
FROM generate_series(1, 30) g;
-- by name and by content (the card numbers under the innocent name "ref")
SELECT relation, column_name, data_type, reason, suggested_label
FROM agent_guard.suggest_sensitive('public') ORDER BY relation::text, column_name;
SELECT statement FROM agent_guard.suggest_sensitive('public', 10) WHERE column_name = 'ref';
\c - regress_bot
-- agents sample only what they may read, masked
SELECT relation, column_name, reason FROM agent_guard.suggest_sensitive('public') ORDER BY 1, 2;

-- ---- agents cannot change masking ----
SECURITY LABEL FOR agent_guard ON COLUMN customers.tax_number IS NULL;
SELECT agent_guard.refresh_masking_views();
SELECT agent_guard.rotate_masking_key();
SELECT agent_guard._masking_sync(NULL, false);
DROP VIEW agent_guard_masked.customers;
\c - postgres
SELECT agent_guard.refresh_masking_views();
DROP TABLE orders, payments;
DROP MATERIALIZED VIEW customer_cards, customer_names;
DROP VIEW customer_view_view, customer_view;
DROP TABLE customers;
SELECT count(*) AS masking_views_left FROM pg_class WHERE relnamespace = 'agent_guard_masked'::regnamespace;
-- DROP EXTENSION is not blocked by the masking views; labels outlive it and
-- the views come back with the extension
CREATE TABLE kept (id int, ssn text);
SECURITY LABEL FOR agent_guard ON COLUMN kept.ssn IS 'SENSITIVE';
-- (the trail holds rows: the drop needs its confirmation in the same transaction)
BEGIN;
SELECT set_config('agent_guard.confirm_drop_trail', current_database(), true) IS NOT NULL AS confirmed;
DROP EXTENSION agent_guard;
COMMIT;
CREATE EXTENSION agent_guard;
SELECT relation, masking_view FROM agent_guard.masking_rules;
SELECT agent_guard.refresh_masking_views();
SELECT relation, masking_view FROM agent_guard.masking_rules;
DROP TABLE kept;
