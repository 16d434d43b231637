-- A human's materialized view population keeps its parallel plan when its
-- query runs no user-defined code in workers (scans and PostgreSQL's own
-- functions only), and is still recorded: a view populated in parallel from
-- a masked column reads masked for agents. A population that calls a
-- user-defined function (whose nested statements a worker would run out of
-- sight) is planned without parallelism and records what the function read.
CREATE EXTENSION IF NOT EXISTS agent_guard;
SET client_min_messages = warning;
CREATE ROLE regress_mv_sponsor LOGIN;
CREATE ROLE regress_mv_bot LOGIN;
CREATE TABLE mv_people (id int, ssn text, city text);
INSERT INTO mv_people SELECT g, lpad((g * 7919 % 1000000000)::text, 9, '0'), 'city ' || (g % 7)
FROM generate_series(1, 60000) g;
ANALYZE mv_people;
SECURITY LABEL FOR agent_guard ON COLUMN mv_people.ssn IS 'SENSITIVE';
CREATE FUNCTION public.mv_lookup(int) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT ssn FROM public.mv_people WHERE id = $1 $$;
-- the parallel plan of an EXPLAIN ANALYZE'd population, without what varies
CREATE FUNCTION public.mv_plan(q text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE l text;
BEGIN
    FOR l IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ' || q LOOP
        IF l ~ 'Gather|Workers Planned|Seq Scan|Aggregate' THEN
            RETURN NEXT btrim(regexp_replace(regexp_replace(l, '->', ''), ' \(actual .*\)', ''));
        END IF;
    END LOOP;
END $$;
SELECT agent_guard.register_agent('regress_mv_bot', 'regress_mv_sponsor');
GRANT SELECT ON ALL TABLES IN SCHEMA public TO regress_mv_bot;
RESET client_min_messages;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
-- scans and built-in functions: parallel, and recorded
SELECT * FROM public.mv_plan($$CREATE MATERIALIZED VIEW mv_par AS
    SELECT city, max(ssn) AS top_ssn, count(*) AS n FROM mv_people GROUP BY city$$);
-- a user-defined function: serial, and recorded
SELECT * FROM public.mv_plan($$CREATE MATERIALIZED VIEW mv_fn AS
    SELECT id, public.mv_lookup(id) AS s FROM mv_people WHERE id % 10000 = 0$$);
REFRESH MATERIALIZED VIEW mv_par;
GRANT SELECT ON mv_par, mv_fn TO regress_mv_bot;
-- both populations read the masked column: both views are tainted
SELECT relation::text, built_from::text, recorded FROM agent_guard.masking_taints
WHERE relation::text LIKE 'mv\_%' ORDER BY 1;
-- the human reads real values
SELECT city, length(top_ssn) AS len, n FROM mv_par ORDER BY city LIMIT 2;
\c - regress_mv_bot
SELECT city, top_ssn, n FROM mv_par ORDER BY city LIMIT 2;
SELECT id, s FROM mv_fn ORDER BY id LIMIT 2;
\c - postgres
DROP MATERIALIZED VIEW mv_par, mv_fn;
DROP FUNCTION public.mv_plan(text), public.mv_lookup(int);
DROP TABLE mv_people;
