-- classify(): what agent_guard would decide, without running anything.

CREATE FUNCTION agent_guard.classify(sql text, as_role regrole DEFAULT NULL)
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

COMMENT ON FUNCTION agent_guard.classify(text, regrole) IS
    'Classify each statement by risk and say whether the calling session (or as_role) may run it now; executes nothing';
