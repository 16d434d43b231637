-- Refuse to install when the library is not preloaded: without its hooks
-- agent_guard could not enforce anything, and a silent no-op is worse than an error.
DO $$
BEGIN
    IF NOT agent_guard._preloaded() THEN
        RAISE EXCEPTION 'agent_guard must be loaded via shared_preload_libraries'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add agent_guard to shared_preload_libraries in postgresql.conf '
                         '(ALTER SYSTEM SET shared_preload_libraries = ''agent_guard''), '
                         'restart the server, then run CREATE EXTENSION agent_guard again.';
    END IF;
END
$$;
