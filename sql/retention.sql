-- ---- retention (issue 14.6b): agent_guard.audit_log is partitioned ----
-- audit_log is PARTITION BY RANGE (id) (sql/audit.sql). Each partition holds
-- the ids of one period (a day by default, agent_guard.audit_partition_span):
-- the audit writer opens the next period's partition ahead of time, starting
-- at the current partition's upper bound, and moves the id sequence to it
-- once the period has begun (src/audit/retention.rs). So a partition is an
-- exact prefix of the hash chain whose rows all started before the next
-- partition's start, and agent_guard.apply_retention() drops whole
-- partitions, leaving a purge anchor, without a DELETE. A partition's name
-- says when its period starts (UTC): audit_log_YYYYMMDD_HHMMSS.

-- Partitions of audit_log, in id order, with their bounds and start.
CREATE FUNCTION agent_guard._audit_partitions(
    OUT relid oid, OUT relname text, OUT lo bigint, OUT hi bigint, OUT starts timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT c.oid, c.relname::text,
       CASE WHEN m[1] = 'MINVALUE' THEN NULL ELSE m[1]::bigint END,
       CASE WHEN m[2] = 'MAXVALUE' THEN NULL ELSE m[2]::bigint END,
       CASE WHEN c.relname ~ '^audit_log_[0-9]{8}_[0-9]{6}(_[0-9]+)?$' THEN
           pg_catalog.make_timestamptz(pg_catalog.substr(c.relname, 11, 4)::int, pg_catalog.substr(c.relname, 15, 2)::int,
                                       pg_catalog.substr(c.relname, 17, 2)::int, pg_catalog.substr(c.relname, 20, 2)::int,
                                       pg_catalog.substr(c.relname, 22, 2)::int, pg_catalog.substr(c.relname, 24, 2)::float8, 'UTC')
       END
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid,
LATERAL pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                '^FOR VALUES FROM \(''?([^'')]*)''?\) TO \(''?([^'')]*)''?\)$') AS m
WHERE i.inhparent = 'agent_guard.audit_log'::pg_catalog.regclass
  AND m IS NOT NULL  -- not the DEFAULT partition
ORDER BY 3 NULLS FIRST
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_partitions() FROM PUBLIC;

-- Statement-level triggers of a partitioned table do not fire for a
-- statement that names a partition (nor for TRUNCATE of one): every
-- partition gets audit_log's append-only trigger of its own.
CREATE FUNCTION agent_guard._protect_audit_partition(part regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION agent_guard._protect_audit()', part);
END
$$;
REVOKE ALL ON FUNCTION agent_guard._protect_audit_partition(regclass) FROM PUBLIC;

-- audit_log (the parent) has no indexes or keys of its own: every partition
-- has its own, those of audit_log_default (the template), named
-- <partition>_<name after audit_log_>. So pg_dump dumps a partition created
-- at run time with its indexes, and the restore's ATTACH PARTITION (into a
-- fresh CREATE EXTENSION) creates none that the dump's CREATE INDEX would
-- then collide with. Ids stay unique: the partitions' ranges are disjoint.
CREATE FUNCTION agent_guard._copy_audit_indexes(part regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    tmpl oid := 'agent_guard.audit_log_default'::pg_catalog.regclass;
    name text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = part);
BEGIN
    FOR r IN SELECT co.conname, pg_catalog.pg_get_constraintdef(co.oid) AS def
             FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = tmpl AND co.contype IN ('p', 'u') ORDER BY co.conname LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', part,
                                  name || '_' || pg_catalog.regexp_replace(r.conname, '^audit_log_default_', ''), r.def);
    END LOOP;
    FOR r IN SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid) AS def
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = tmpl
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid)
             ORDER BY c.relname LOOP
        EXECUTE pg_catalog.regexp_replace(r.def,
            '^CREATE (UNIQUE )?INDEX \S+ ON agent_guard\.audit_log_default ',
            'CREATE \1INDEX ' || pg_catalog.quote_ident(name || '_' || pg_catalog.regexp_replace(r.relname, '^audit_log_default_', ''))
            || ' ON ' || part::text || ' ');
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._copy_audit_indexes(regclass) FROM PUBLIC;

-- Once, at installation: the indexes and keys sql/audit.sql declares on
-- audit_log become the template's (audit_log_default's).
CREATE FUNCTION agent_guard._audit_indexes_to_default() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    d text;
    defs text[] := '{}';
    parent oid := 'agent_guard.audit_log'::pg_catalog.regclass;
BEGIN
    FOR r IN SELECT co.conname, pg_catalog.pg_get_constraintdef(co.oid) AS def
             FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = parent AND co.contype IN ('p', 'u') ORDER BY co.conname LOOP
        defs := defs || pg_catalog.format('ALTER TABLE agent_guard.audit_log_default ADD CONSTRAINT %I %s',
                                          'audit_log_default_' || pg_catalog.regexp_replace(r.conname, '^audit_log_', ''), r.def);
    END LOOP;
    FOR r IN SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid) AS def
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = parent
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid)
             ORDER BY c.relname LOOP
        defs := defs || pg_catalog.regexp_replace(r.def,
            '^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?agent_guard\.audit_log ',
            'CREATE \1INDEX ' || pg_catalog.quote_ident('audit_log_default_' || pg_catalog.regexp_replace(r.relname, '^audit_log_', ''))
            || ' ON agent_guard.audit_log_default ');
        EXECUTE pg_catalog.format('DROP INDEX agent_guard.%I', r.relname);
    END LOOP;
    FOR r IN SELECT co.conname FROM pg_catalog.pg_constraint co
             WHERE co.conrelid = parent AND co.contype IN ('p', 'u') LOOP
        EXECUTE pg_catalog.format('ALTER TABLE agent_guard.audit_log DROP CONSTRAINT %I', r.conname);
    END LOOP;
    CREATE TABLE agent_guard.audit_log_default PARTITION OF agent_guard.audit_log DEFAULT;
    FOREACH d IN ARRAY defs LOOP
        EXECUTE d;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_indexes_to_default() FROM PUBLIC;

-- A new partition for ids [lo, hi) whose period starts at `starts`. As
-- session_replication_role = replica, so that no event trigger (masking's
-- view sync) runs inside the audit writer for agent_guard's own table.
CREATE FUNCTION agent_guard._add_audit_partition(starts timestamptz, lo bigint, hi bigint) RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
AS $$
DECLARE
    part text := 'audit_log_' || pg_catalog.to_char(starts AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS');
    rel oid;
BEGIN
    IF pg_catalog.to_regclass('agent_guard.' || part) IS NOT NULL THEN
        part := part || '_' || lo;
    END IF;
    EXECUTE pg_catalog.format(
        'CREATE TABLE agent_guard.%I PARTITION OF agent_guard.audit_log FOR VALUES FROM (%s) TO (%s)',
        part, lo, hi);
    rel := pg_catalog.format('agent_guard.%I', part)::pg_catalog.regclass;
    PERFORM agent_guard._protect_audit_partition(rel);
    PERFORM agent_guard._copy_audit_indexes(rel);
    RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._add_audit_partition(timestamptz, bigint, bigint) FROM PUBLIC;

-- The next period's partition, unless that waits for a lock: creating a
-- partition locks audit_log (and its DEFAULT partition) exclusively, and the
-- writer must not stall behind a long read of the trail (it tries again with
-- its next batch; until then the current partition takes the rows).
CREATE FUNCTION agent_guard._try_add_audit_partition(starts timestamptz, lo bigint, hi bigint) RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
AS $$
BEGIN
    RETURN agent_guard._add_audit_partition(starts, lo, hi);
EXCEPTION WHEN lock_not_available THEN
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._try_add_audit_partition(timestamptz, bigint, bigint) FROM PUBLIC;

-- The audit writer, before a batch of `batch_rows` rows: the partition the
-- next ids go to (created if missing), the sequence moved to the partition
-- whose period has begun, and the next period's partition created ahead.
CREATE FUNCTION agent_guard._audit_partition_for(batch_rows bigint, span_seconds integer) RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- ids per partition: 10^12 rows in a period before the next one opens early
    block CONSTANT bigint := 1000000000000;
    span interval := pg_catalog.make_interval(secs => greatest(span_seconds, 1));
    now_ timestamptz := pg_catalog.clock_timestamp();
    nxt bigint;
    called boolean;
    cur record;
    later record;
BEGIN
    SELECT s.last_value, s.is_called INTO nxt, called FROM agent_guard.audit_log_id_seq s;
    IF called THEN nxt := nxt + 1; END IF;
    SELECT * INTO cur FROM agent_guard._audit_partitions() p
    WHERE coalesce(p.lo, nxt) <= nxt AND nxt < coalesce(p.hi, nxt + 1);
    IF NOT FOUND THEN
        -- first rows (or the ids ran past every partition): a partition from
        -- here, up to the next one if there is one
        SELECT * INTO later FROM agent_guard._audit_partitions() p WHERE p.lo > nxt ORDER BY p.lo LIMIT 1;
        PERFORM agent_guard._add_audit_partition(
            pg_catalog.date_trunc('second', now_) + interval '1 second', nxt,
            CASE WHEN later.lo IS NULL OR later.lo - nxt > block THEN nxt + block ELSE later.lo END);
        SELECT * INTO cur FROM agent_guard._audit_partitions() p WHERE p.lo = nxt;
    END IF;
    -- a later period has begun: its partition takes the next ids
    SELECT * INTO later FROM agent_guard._audit_partitions() p
    WHERE p.lo >= cur.hi AND p.starts <= now_ ORDER BY p.lo DESC LIMIT 1;
    IF FOUND THEN
        PERFORM pg_catalog.setval('agent_guard.audit_log_id_seq', later.lo, false);
        cur := later;
        nxt := later.lo;
    END IF;
    -- the batch does not fit: the next partition opens now
    IF cur.hi IS NOT NULL AND nxt + batch_rows > cur.hi THEN
        SELECT * INTO later FROM agent_guard._audit_partitions() p WHERE p.lo >= cur.hi ORDER BY p.lo LIMIT 1;
        IF NOT FOUND THEN
            PERFORM agent_guard._add_audit_partition(
                pg_catalog.date_trunc('second', now_) + interval '1 second', cur.hi, cur.hi + block);
            SELECT * INTO later FROM agent_guard._audit_partitions() p WHERE p.lo = cur.hi;
        END IF;
        PERFORM pg_catalog.setval('agent_guard.audit_log_id_seq', later.lo, false);
        cur := later;
    END IF;
    -- the next period's partition exists before its first row arrives
    IF cur.hi IS NOT NULL AND NOT EXISTS (SELECT 1 FROM agent_guard._audit_partitions() p WHERE p.lo >= cur.hi) THEN
        PERFORM agent_guard._try_add_audit_partition(
            pg_catalog.date_bin(span, now_, '2000-01-01 00:00:00+00') + span, cur.hi, cur.hi + block);
    END IF;
    RETURN cur.relid;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_partition_for(bigint, integer) FROM PUBLIC;

-- apply_retention()'s drop of expired partitions (src/audit/retention.rs),
-- as replica for the same reason, in one statement: the drop locks
-- audit_log exclusively until the transaction ends, and the writer then
-- waits, so no statement of this transaction that waits for its own audit
-- record may follow it.
CREATE FUNCTION agent_guard._drop_audit_partitions(parts regclass[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
SET lock_timeout = '2s'
AS $$
BEGIN
    EXECUTE 'DROP TABLE ' || (SELECT pg_catalog.string_agg(p::text, ', ') FROM pg_catalog.unnest(parts) p);
END
$$;
REVOKE ALL ON FUNCTION agent_guard._drop_audit_partitions(regclass[]) FROM PUBLIC;

-- Whether retention could take audit_log's exclusive lock now (tried for
-- 200 ms in a subtransaction, then given back at once): a partition is
-- dropped only when no long reader (pg_dump, a large verify_audit()) holds
-- the trail, so the writer never queues behind a drop waiting for one.
CREATE FUNCTION agent_guard._audit_log_lockable() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
AS $$
BEGIN
    BEGIN
        LOCK TABLE agent_guard.audit_log IN ACCESS EXCLUSIVE MODE;
        -- roll the subtransaction back: the lock goes with it
        RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'agent_guard: lock probe';
    EXCEPTION
        WHEN lock_not_available THEN RETURN false;
        WHEN raise_exception THEN RETURN true;
    END;
END
$$;
REVOKE ALL ON FUNCTION agent_guard._audit_log_lockable() FROM PUBLIC;

-- Ids outside every range partition (none, as the writer creates them
-- before its rows): a safety net, so that no insert ever fails for want of
-- a partition. Part of the dump like audit_log.
SELECT agent_guard._audit_indexes_to_default();
REVOKE ALL ON agent_guard.audit_log_default FROM PUBLIC;
SELECT agent_guard._protect_audit_partition('agent_guard.audit_log_default');
SELECT pg_catalog.pg_extension_config_dump('agent_guard.audit_log_default', '');

REVOKE ALL ON FUNCTION agent_guard.apply_retention() FROM PUBLIC;
-- ---- end of retention ----
