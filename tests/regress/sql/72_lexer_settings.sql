-- Agents' statements are read one way only: with standard_conforming_strings
-- on and backslash_quote at safe_encoding, whichever route would set them
-- otherwise (SET, set_config(), role settings, the startup packet). So the
-- statement an approver reads is the statement that runs.
CREATE EXTENSION IF NOT EXISTS agent_guard;
CREATE ROLE regress_sponsor LOGIN IN ROLE agent_guard_approver;
CREATE ROLE regress_bot LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 10) g;
GRANT ALL ON customers TO regress_bot;
SELECT agent_guard.register_agent('regress_bot', 'regress_sponsor');

\c - regress_bot
-- changing how literals are read is administration
SET standard_conforming_strings = off;
SET standard_conforming_strings TO false;
SET LOCAL backslash_quote = on;
-- the defaults may be set
SET standard_conforming_strings = on;
SET backslash_quote = safe_encoding;
RESET standard_conforming_strings;
-- the attack: this reads as "delete customer 1" with the default setting, and
-- deletes every row with standard_conforming_strings off
SELECT agent_guard.request_access('write', statement => $q$DELETE FROM customers WHERE id = 1 AND name <> 'a\' AND id = 1 -- ' OR true$q$);
-- a statement that reads the same either way may be requested
SELECT agent_guard.request_access('write', statement => 'DELETE FROM customers WHERE id = 1');

\c - regress_sponsor
SELECT agent_guard.approve(1);

\c - regress_bot
-- set_config() goes through: then nothing but housekeeping runs
SELECT set_config('standard_conforming_strings', 'off', false);
SELECT count(*) FROM customers;
DELETE FROM customers WHERE id = 1;
SELECT agent_guard.request_access('write');
SHOW standard_conforming_strings;
RESET standard_conforming_strings;
-- back to the default, the approved statement runs
DELETE FROM customers WHERE id = 1;

-- role settings and the startup packet change nothing either
\c - postgres
ALTER ROLE regress_bot SET backslash_quote = on;
\c - regress_bot
SHOW backslash_quote;
SELECT count(*) FROM customers;
SET backslash_quote = safe_encoding;
SELECT count(*) FROM customers;
\c - postgres
ALTER ROLE regress_bot RESET ALL;
\c -reuse-previous=on 'user=regress_bot options=-cstandard_conforming_strings=off'
SHOW standard_conforming_strings;
SELECT count(*) FROM customers;
SET standard_conforming_strings = on;
SELECT count(*) FROM customers;
\c -reuse-previous=on 'user=postgres options='
SHOW standard_conforming_strings;
SELECT count(*) AS customers_left FROM customers;
SELECT command, risk, decision FROM agent_guard.audit_log
WHERE agent = 'regress_bot' AND decision = 'denied' ORDER BY id;
DROP TABLE customers;
DROP ROLE regress_bot, regress_sponsor;
