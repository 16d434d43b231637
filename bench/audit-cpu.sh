#!/usr/bin/env bash
# What auditing an agent's statement costs in CPU: pgbench select-only run by
# a human and by a registered agent (asynchronous audit) in turn on one
# cluster, interleaved in rounds; for each run, the CPU time (user + system,
# from /proc/<pid>/stat) that the two backends, the database's audit writer
# and pgbench itself spent per transaction. CPU per transaction is steadier
# than TPS on a shared machine. See BENCHMARKS.md ("CPU per statement").
#
#   bash bench/audit-cpu.sh [--no-install] [--rounds N] [--time S] [--port P] [--data-dir DIR]
#
# Defaults: 5 rounds of 10 s per role, pgbench -c 2 -j 2 -S (scale 10, over
# the unix socket, as bench/run.sh), port
# 28819, /var/tmp/agent_guard/audit-cpu-bench (re-created). Builds and
# installs the release build first unless --no-install. Run as root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../scripts/lib.sh"

install=1
rounds=5
seconds=10
port=${AG_CPU_BENCH_PORT:-28819}
datadir=${AG_CPU_BENCH_DATADIR:-/var/tmp/agent_guard/audit-cpu-bench}
while [ $# -gt 0 ]; do
  case $1 in
    --no-install) install=0 ;;
    --rounds) rounds=$2; shift ;;
    --time) seconds=$2; shift ;;
    --port) port=$2; shift ;;
    --data-dir) datadir=$2; shift ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "bench/audit-cpu.sh: unknown argument $1" ;;
  esac
  shift
done
[ "$seconds" -ge 5 ] || ag_die "--time must be at least 5 seconds"

bindir=$(ag_bindir)
[ "$install" = 1 ] && bash "$here/../scripts/install-extension.sh" --release
if ag_cluster_running "$datadir"; then ag_cluster_stop "$datadir" fast; fi
rm -rf "$datadir"
ag_cluster_start "$datadir" "$port" \
  "shared_preload_libraries = 'agent_guard'" \
  "shared_buffers = '256MB'" "synchronous_commit = off" "max_connections = 50"
trap 'ag_cluster_stop "$datadir" fast >/dev/null 2>&1 || true' EXIT

psql_() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" "$@"; }
psql_ -U postgres -d postgres -c "DROP DATABASE IF EXISTS cpu_bench" -c "CREATE DATABASE cpu_bench"
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s 10 -q cpu_bench >/dev/null 2>&1
psql_ -U postgres -d cpu_bench -f "$here/roles.sql"
psql_ -U postgres -d cpu_bench <<'SQL'
SET client_min_messages = error;
CREATE EXTENSION agent_guard;
GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers TO bench_human, bench_agent;
SELECT agent_guard.register_agent('bench_agent', 'bench_sponsor') \g /dev/null
SQL

# user + system clock ticks of a process (0 if it is gone)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)

# One run: prints "tps backend_us writer_us pgbench_us" per transaction.
run() {
  local role=$1 out pb t0 t1 b0=0 b1=0 w0=0 w1=0 c0 c1 p backends writer
  out=$(mktemp)
  "$bindir/pgbench" -h "$datadir" -p "$port" -U "$role" -n -S -c 2 -j 2 -T "$seconds" cpu_bench >"$out" 2>&1 &
  pb=$!
  sleep 1.5   # connections made, writer started
  backends=$(pgrep -f "postgres: $role cpu_bench" || true)
  writer=$(pgrep -f "agent_guard audit writer" | head -1 || true)
  t0=$(date +%s.%N); c0=$(ticks "$pb")
  for p in $backends; do b0=$((b0 + $(ticks "$p"))); done
  [ -n "$writer" ] && w0=$(ticks "$writer")
  sleep $((seconds - 3))
  t1=$(date +%s.%N); c1=$(ticks "$pb")
  for p in $backends; do b1=$((b1 + $(ticks "$p"))); done
  [ -n "$writer" ] && w1=$(ticks "$writer")
  wait "$pb"
  local tps
  tps=$(awk '/^tps = .*without initial/ {print $3}' "$out")
  rm -f "$out"
  [ -n "$tps" ] || ag_die "pgbench as $role failed"
  # a writer of the human's run is only finishing the agent's previous rows
  [ "$role" = bench_human ] && w1=$w0
  python3 -c "
tps = $tps; n = tps * ($t1 - $t0); us = 1e6 / $hz
print(f'{tps:.0f} {($b1 - $b0) * us / n:.2f} {($w1 - $w0) * us / n:.2f} {($c1 - $c0) * us / n:.2f}')"
}

results=$(mktemp)
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="bench_human bench_agent"; else order="bench_agent bench_human"; fi
  for role in $order; do
    line=$(run "$role")
    echo "$r $role $line" | tee -a "$results" >&2
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, role, tps, be, wr, pb in rows:
    by.setdefault(role, []).append((float(tps), float(be), float(wr), float(pb)))
med = lambda xs: statistics.median(xs)
print("| session | median TPS | backends µs/stmt | audit writer µs/stmt | pgbench µs/stmt | total µs/stmt |")
print("|---|---:|---:|---:|---:|---:|")
tot = {}
for role in ("bench_human", "bench_agent"):
    v = by[role]
    t, b, w, p = (med([x[i] for x in v]) for i in range(4))
    tot[role] = (t, b + w + p)
    print(f"| {role} | {t:.0f} | {b:.1f} | {w:.1f} | {p:.1f} | {b + w + p:.1f} |")
h, a = tot["bench_human"], tot["bench_agent"]
print(f"\nagent/human: TPS {a[0] / h[0]:.2f}, CPU per statement {a[1] / h[1]:.2f}x")
PY
rm -f "$results"
