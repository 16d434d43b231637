-- agent_guard.classify(): every category, from PostgreSQL's own trees.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text, email text);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, amount numeric);
CREATE VIEW customer_names AS SELECT id, name FROM customers;
CREATE VIEW customer_ssns AS SELECT id, ssn FROM customers;
CREATE VIEW ssns_on_view AS SELECT ssn FROM customer_ssns;
CREATE FUNCTION add_order(c int) RETURNS void LANGUAGE sql AS $$ INSERT INTO orders(customer_id, amount) VALUES (c, 1) $$;
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'SENSITIVE';
PREPARE del_orders AS DELETE FROM orders;
PREPARE read_names AS SELECT name FROM customers;

-- Unknown labels are refused when written.
SECURITY LABEL FOR agent_guard ON COLUMN customers.email IS 'SECRET';

CREATE FUNCTION show(sql text) RETURNS TABLE (n int, command text, risk text, objects text[], sensitive text[])
LANGUAGE sql AS $$ SELECT statement_no, command, risk, objects, sensitive_columns FROM agent_guard.classify(sql) $$;

-- session
SELECT * FROM show('BEGIN; SET work_mem = ''8MB''; SHOW work_mem; RESET work_mem; DISCARD PLANS; LISTEN ch; DEALLOCATE read_names; COMMIT; SET agent_guard.request_id = ''r1''; SET ROLE NONE');
-- read
SELECT * FROM show('SELECT 1; SELECT name FROM customers; VALUES (1), (2); SELECT * FROM customer_names; EXPLAIN DELETE FROM orders; COPY orders TO STDOUT; SELECT o.amount FROM orders o JOIN customers c ON c.id = o.customer_id');
-- sensitive_read: target list, WHERE, ORDER BY, through views, COPY of the table
SELECT * FROM show('SELECT ssn FROM customers; SELECT id FROM customers WHERE ssn = ''123-45-6789''; SELECT id FROM customers ORDER BY ssn; SELECT * FROM customer_ssns; SELECT * FROM ssns_on_view; COPY customers TO STDOUT; SELECT * FROM customers; SELECT c FROM customers c');
-- write
SELECT * FROM show('INSERT INTO orders(customer_id, amount) VALUES (1, 2); UPDATE orders SET amount = 0; DELETE FROM orders; TRUNCATE orders; COPY orders FROM STDIN; WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d; EXPLAIN ANALYZE DELETE FROM orders; SELECT * FROM orders FOR UPDATE; SELECT nextval(''orders_id_seq''); EXECUTE del_orders');
SELECT * FROM show('MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN DELETE; INSERT INTO customers(id) VALUES (1) ON CONFLICT (id) DO UPDATE SET name = ''x''');
-- ddl
SELECT * FROM show('CREATE TABLE x (a int); CREATE INDEX ON orders (amount); CREATE VIEW v AS SELECT 1; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS ''SELECT 1''; DROP TABLE orders; ALTER TABLE orders ADD COLUMN note text; CREATE SCHEMA s; CREATE SEQUENCE q; COMMENT ON TABLE orders IS ''x''; CREATE TABLE y AS SELECT 1; SELECT 1 AS a INTO z; REFRESH MATERIALIZED VIEW mv');
-- privilege
SELECT * FROM show('GRANT SELECT ON orders TO PUBLIC; REVOKE ALL ON orders FROM PUBLIC; CREATE ROLE regress_x; ALTER ROLE regress_x NOLOGIN; DROP ROLE regress_x; ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC; ALTER TABLE orders OWNER TO CURRENT_USER; SET ROLE regress_x; SET SESSION AUTHORIZATION regress_x; SECURITY LABEL FOR agent_guard ON COLUMN orders.amount IS ''SENSITIVE''; CREATE POLICY p ON orders USING (true); ALTER TABLE orders ENABLE ROW LEVEL SECURITY');
-- admin
SELECT * FROM show('ALTER SYSTEM SET work_mem = ''1MB''; LOAD ''plpgsql''; COPY orders FROM ''/tmp/x''; COPY orders TO PROGRAM ''cat''; CREATE DATABASE d; CREATE EXTENSION hstore; VACUUM orders; CLUSTER orders; REINDEX TABLE orders; CHECKPOINT; SELECT pg_read_file(''postgresql.conf''); SELECT pg_terminate_backend(1); SELECT pg_reload_conf(); SET agent_guard.enabled = off; SET session_replication_role = replica');

-- The query inside a utility statement and calls with a constant setting name
-- are judged as enforcement judges them (tests/regress/sql/74_classify_matches_runtime.sql).
SELECT * FROM show('COPY (SELECT ssn FROM customers) TO STDOUT; COPY (SELECT name FROM customers) TO STDOUT; SELECT set_config(''agent_guard.enabled'', ''off'', false); SELECT set_config(''work_mem'', ''8MB'', false); EXPLAIN SELECT pg_read_file(''x''); CREATE TABLE y2 AS SELECT pg_read_file(''x''); DECLARE c CURSOR FOR SELECT pg_stat_reset()');

-- A function call is classified when it runs; its statements are classified then.
CREATE PROCEDURE nothing() LANGUAGE sql AS $$ SELECT 1 $$;
SELECT * FROM show('SELECT add_order(1); CALL nothing(); DO $$ BEGIN NULL; END $$; DO LANGUAGE plpgsql $$ BEGIN NULL; END $$');

-- SQL that does not parse is a clear error.
SELECT * FROM agent_guard.classify('SELEC 1');
