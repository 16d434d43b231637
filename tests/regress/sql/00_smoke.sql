-- Smoke test: the extension loads and reports a version.
CREATE EXTENSION IF NOT EXISTS agent_guard;
SELECT agent_guard.version() IS NOT NULL AS has_version;
