#!/usr/bin/env bash
# Bytes the audit trail costs per agent statement: a registered agent runs
# N statements of three everyday shapes (a point lookup, the same with a
# sqlcommenter request id, a short join) through pgbench; once the writer
# has recorded every one, reports the heap, TOAST and index bytes of
# agent_guard.audit_log per row (and of agent_guard.audit_sessions, the
# session context stored once per session), and the average stored size of
# each column.
# See BENCHMARKS.md ("Audit storage").
#
#   bash bench/audit-bytes.sh [--no-install] [--statements N] [--port P] [--data-dir DIR]
#
# Defaults: 30000 statements, port 28819, /var/tmp/agent_guard/bytes-bench
# (re-created). Builds and installs the release build first unless
# --no-install. Run as root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../scripts/lib.sh"

install=1
statements=30000
port=${AG_BYTES_BENCH_PORT:-28819}
datadir=${AG_BYTES_BENCH_DATADIR:-/var/tmp/agent_guard/bytes-bench}
while [ $# -gt 0 ]; do
  case $1 in
    --no-install) install=0 ;;
    --statements) statements=$2; shift ;;
    --port) port=$2; shift ;;
    --data-dir) datadir=$2; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "bench/audit-bytes.sh: unknown argument $1" ;;
  esac
  shift
done

bindir=$(ag_bindir)
[ "$install" = 1 ] && bash "$here/../scripts/install-extension.sh" --release
if ag_cluster_running "$datadir"; then ag_cluster_stop "$datadir" fast; fi
rm -rf "$datadir"
ag_cluster_start "$datadir" "$port" \
  "shared_preload_libraries = 'agent_guard'" \
  "log_statement = 'none'" "log_min_messages = warning" "jit = off"
trap 'ag_cluster_stop "$datadir" fast >/dev/null 2>&1 || true' EXIT

psql_() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" "$@"; }
psql_ -U postgres -d postgres -c "CREATE DATABASE bytes_bench"
psql_ -U postgres -d bytes_bench -f "$here/roles.sql"
psql_ -U postgres -d bytes_bench <<'SQL'
SET client_min_messages = error;
CREATE EXTENSION agent_guard;
CREATE TABLE orders (id int PRIMARY KEY, customer int, total numeric, status text);
CREATE TABLE customers (id int PRIMARY KEY, name text, city text);
INSERT INTO customers SELECT g, 'Customer ' || g, 'City ' || (g % 50) FROM generate_series(1, 1000) g;
INSERT INTO orders SELECT g, g % 1000 + 1, g * 1.5, 'open' FROM generate_series(1, 10000) g;
GRANT SELECT ON orders, customers TO bench_agent;
SELECT agent_guard.register_agent('bench_agent', 'bench_sponsor');
VACUUM ANALYZE;
SQL

script=$(mktemp -d)
cat >"$script/lookup.sql" <<'SQL'
\set id random(1, 10000)
SELECT id, customer, total, status FROM orders WHERE id = :id;
SQL
cat >"$script/tagged.sql" <<'SQL'
\set id random(1, 10000)
/* request_id='job-4711',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' */ SELECT id, total FROM orders WHERE id = :id;
SQL
cat >"$script/join.sql" <<'SQL'
\set c random(1, 1000)
SELECT c.name, count(*), sum(o.total) FROM customers c JOIN orders o ON o.customer = c.id WHERE c.id = :c GROUP BY c.name;
SQL
per=$((statements / 3))
for f in lookup tagged join; do
  PGAPPNAME="ci-agent/1.4 (migrations)" "$bindir/pgbench" -n -h 127.0.0.1 -p "$port" -U bench_agent \
    -c 2 -t $((per / 2)) -f "$script/$f.sql" bytes_bench >/dev/null
done
rm -rf "$script"
want=$(( (per / 2) * 2 * 3 ))
for _ in $(seq 1 600); do
  n=$(psql_ -U postgres -d bytes_bench -At -c "SELECT count(*) FROM agent_guard.audit_log WHERE agent = 'bench_agent' AND transaction_outcome IS NOT NULL")
  [ "$n" -ge "$want" ] && break
  sleep 0.5
done
psql_ -U postgres -d bytes_bench -c "VACUUM agent_guard.audit_log" >/dev/null

echo "audit trail of $want agent statements (pgbench: point lookups, tagged lookups, joins), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}')"
psql_ -U postgres -d bytes_bench <<'SQL'
\pset footer off
SELECT count(*) AS rows,
       round(pg_relation_size('agent_guard.audit_log')::numeric / count(*)) AS heap_bytes_per_row,
       round((pg_total_relation_size('agent_guard.audit_log') - pg_relation_size('agent_guard.audit_log')
              - pg_indexes_size('agent_guard.audit_log'))::numeric / count(*)) AS toast_bytes_per_row,
       round(pg_indexes_size('agent_guard.audit_log')::numeric / count(*)) AS index_bytes_per_row,
       round(pg_total_relation_size('agent_guard.audit_log')::numeric / count(*)) AS total_bytes_per_row
FROM agent_guard.audit_log;
SELECT i.indexrelid::regclass AS index, round(pg_relation_size(i.indexrelid)::numeric / c.n) AS bytes_per_row
FROM pg_index i, (SELECT count(*) AS n FROM agent_guard.audit_log) c
WHERE i.indrelid = 'agent_guard.audit_log'::regclass ORDER BY 2 DESC;
SQL
# the session context stored once per session (agent_guard.audit_sessions,
# 0.2.0's layout; absent before it), per audit_log row
if [ "$(psql_ -U postgres -d bytes_bench -At -c "SELECT to_regclass('agent_guard.audit_sessions') IS NOT NULL")" = t ]; then
  psql_ -U postgres -d bytes_bench <<'SQL'
\pset footer off
SELECT (SELECT count(*) FROM agent_guard.audit_sessions) AS session_rows,
       round(pg_total_relation_size('agent_guard.audit_sessions')::numeric
             / (SELECT count(*) FROM agent_guard.audit_log), 1) AS session_bytes_per_row,
       round((pg_total_relation_size('agent_guard.audit_log') + pg_total_relation_size('agent_guard.audit_sessions'))::numeric
             / (SELECT count(*) FROM agent_guard.audit_log)) AS trail_bytes_per_row;
SQL
fi
# the average stored size of each column (pg_column_size of the datum)
cols=$(psql_ -U postgres -d bytes_bench -At -c "SELECT string_agg(format('round(avg(coalesce(pg_column_size(%1\$I), 0)), 1) AS %1\$I', attname), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'agent_guard.audit_log'::regclass AND attnum > 0 AND NOT attisdropped")
psql_ -U postgres -d bytes_bench -x -c "SELECT $cols FROM agent_guard.audit_log"
