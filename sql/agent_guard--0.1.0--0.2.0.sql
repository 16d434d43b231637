-- agent_guard 0.1.0 -> 0.2.0, run by ALTER EXTENSION agent_guard UPDATE.
-- Every change of the install script between the two versions, in order;
-- scripts/upgrade-test.sh checks that the result equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION agent_guard UPDATE" to load this file. \quit

-- classify(): the cast to oid is qualified (nothing resolves through the
-- caller's search_path but the statement under test).
CREATE OR REPLACE FUNCTION agent_guard.classify(sql text, as_role regrole DEFAULT NULL)
RETURNS TABLE (
    statement_no      int,
    command           text,
    risk              text,
    objects           text[],
    sensitive_columns text[],
    decision          text,
    reason            text
)
LANGUAGE sql VOLATILE
-- runs with the caller's search_path: names in sql resolve as they would when run
AS $$ SELECT * FROM agent_guard._classify(sql, as_role::pg_catalog.oid) $$;

-- masking_rules and masking_taints: computed from the catalog by the library
-- (the same definition the hooks use, read without running a query).
CREATE FUNCTION agent_guard."_masking_rules"() RETURNS TABLE (
	"relation" oid,
	"attnum" smallint,
	"column_name" TEXT,
	"column_type" TEXT,
	"rule" TEXT,
	"inherited_from" oid,
	"generated_from" TEXT,
	"masking_view" oid
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'masking_rules_srf_wrapper';

CREATE FUNCTION agent_guard."_masking_taints"() RETURNS TABLE (
	"relation" oid,
	"built_from" oid[],
	"labelled" bool
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'masking_taints_srf_wrapper';

-- (dropped and made again: column_name's collation changes from "C" to the default)
DROP VIEW agent_guard.masking_taints;
DROP VIEW agent_guard.masking_rules;

CREATE VIEW agent_guard.masking_rules AS
SELECT r.relation::pg_catalog.regclass       AS relation,
       r.attnum,
       r.column_name::pg_catalog.name         AS column_name,
       r.column_type,
       r.rule,
       r.inherited_from::pg_catalog.regclass AS inherited_from,
       r.generated_from::pg_catalog.name      AS generated_from,
       r.masking_view::pg_catalog.regclass   AS masking_view
FROM agent_guard._masking_rules() r;

COMMENT ON VIEW agent_guard.masking_rules IS
    'Masked columns (labelled, generated from labelled columns, or inherited by partitions and children), their rules and masking views';
GRANT SELECT ON agent_guard.masking_rules TO PUBLIC;

CREATE VIEW agent_guard.masking_taints AS
SELECT t.relation::pg_catalog.regclass      AS relation,
       t.built_from::pg_catalog.regclass[] AS built_from,
       t.labelled
FROM agent_guard._masking_taints() t;

COMMENT ON VIEW agent_guard.masking_taints IS
    'Materialized views built from masked columns: agents may not read those without labels of their own, nor refresh any';
GRANT SELECT ON agent_guard.masking_taints TO PUBLIC;
