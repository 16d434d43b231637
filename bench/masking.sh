#!/usr/bin/env bash
# Masking overhead: the same SELECT of 100,000 customer rows with three masked
# columns (ssn: partial, card_number: card_number, email: email), run by a
# human (real values) and by a registered agent (masked values), side by side
# on one cluster, interleaved in rounds; reports the median latency of each
# and their ratio. See BENCHMARKS.md ("Masking").
#
#   bash bench/masking.sh [--no-install] [--rounds N] [--time S] [--rows N] [--port P] [--data-dir DIR]
#
# Defaults: 9 rounds of 5 s per role, 100000 rows, port 28818,
# /var/tmp/agent_guard/mask-bench (re-created). Builds and installs the
# release build first unless --no-install. Run as root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../scripts/lib.sh"

install=1
rounds=9
seconds=5
rows=100000
port=${AG_MASK_BENCH_PORT:-28818}
datadir=${AG_MASK_BENCH_DATADIR:-/var/tmp/agent_guard/mask-bench}
while [ $# -gt 0 ]; do
  case $1 in
    --no-install) install=0 ;;
    --rounds) rounds=$2; shift ;;
    --time) seconds=$2; shift ;;
    --rows) rows=$2; shift ;;
    --port) port=$2; shift ;;
    --data-dir) datadir=$2; shift ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "bench/masking.sh: unknown argument $1" ;;
  esac
  shift
done

bindir=$(ag_bindir)
[ "$install" = 1 ] && bash "$here/../scripts/install-extension.sh" --release
if ag_cluster_running "$datadir"; then ag_cluster_stop "$datadir" fast; fi
rm -rf "$datadir"
ag_cluster_start "$datadir" "$port" \
  "shared_preload_libraries = 'agent_guard'" \
  "log_statement = 'none'" "log_min_messages = warning" \
  "shared_buffers = '256MB'" "jit = off"

psql_() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" "$@"; }
psql_ -U postgres -d postgres -c "DROP DATABASE IF EXISTS mask_bench" -c "CREATE DATABASE mask_bench"
psql_ -U postgres -d mask_bench -f "$here/roles.sql"
psql_ -U postgres -d mask_bench <<SQL
SET client_min_messages = error;
CREATE EXTENSION agent_guard;
-- a shop's customers: twelve columns, three of them regulated
CREATE TABLE customers (
  id int PRIMARY KEY, name text, email text, phone text, ssn text, card_number text,
  street text, city text, postal_code text, country text, status text, created_at timestamptz);
INSERT INTO customers
SELECT g, 'Customer ' || g, 'customer' || g || '@example.com', '+1 415 555 ' || lpad((g % 10000)::text, 4, '0'),
       lpad((g % 899 + 100)::text, 3, '0') || '-' || lpad((g % 89 + 10)::text, 2, '0') || '-' || lpad((g % 8999 + 1000)::text, 4, '0'),
       '4' || lpad((g::bigint * 7919 % 1000000000000000)::text, 15, '0'),
       g || ' Market Street', 'City ' || (g % 500), lpad((g % 99999)::text, 5, '0'), 'US',
       (ARRAY['active', 'dormant', 'closed'])[g % 3 + 1], '2020-01-01'::timestamptz + g * interval '1 minute'
FROM generate_series(1, $rows) g;
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.card_number IS 'MASKED WITH FUNCTION agent_guard.card_number(card_number)';
SECURITY LABEL FOR agent_guard ON COLUMN customers.email IS 'MASKED WITH FUNCTION agent_guard.email(email)';
GRANT SELECT ON customers TO bench_human, bench_agent;
SELECT agent_guard.register_agent('bench_agent', 'bench_sponsor');
VACUUM ANALYZE customers;
SQL

query=$(mktemp)
trap 'rm -f "$query"' EXIT
echo "SELECT * FROM customers;" >"$query"
# what each role reads
psql_ -U bench_human -d mask_bench -c "SELECT id, email, ssn, card_number FROM customers WHERE id = 1"
psql_ -U bench_agent -d mask_bench -c "SELECT id, email, ssn, card_number FROM customers WHERE id = 1"

run() { # role -> average latency in ms
  "$bindir/pgbench" -n -h 127.0.0.1 -p "$port" -U "$1" -f "$query" -T "$seconds" mask_bench 2>/dev/null \
    | awk '/latency average/ {print $4}'
}
run bench_human >/dev/null; run bench_agent >/dev/null   # warm-up
human=() agent=()
for r in $(seq 1 "$rounds"); do
  # alternate who goes first, so neither always runs on a warmer cache
  if [ $((r % 2)) = 1 ]; then human+=("$(run bench_human)"); agent+=("$(run bench_agent)")
  else agent+=("$(run bench_agent)"); human+=("$(run bench_human)"); fi
  printf 'round %d: human %s ms, agent %s ms\n' "$r" "${human[-1]}" "${agent[-1]}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mh=$(median "${human[@]}"); ma=$(median "${agent[@]}")

# Server CPU per SELECT: the backend's user+system time (/proc/PID/stat) over
# 20 executions in one session, read while the session sleeps before and
# after them. Unlike latency, it does not count time spent waiting for a
# busy CPU or for the client, so it is steadier on a shared machine.
cpu_run() { # role [sql] -> server CPU ms per execution
  local role=$1 sql=${2:-"SELECT * FROM customers;"} app="mask_bench_cpu_$1_$$" pid="" t0="" t1="" q i
  q=$(mktemp)
  for i in $(seq 1 20); do echo "$sql"; done >"$q"
  PGAPPNAME=$app "$bindir/psql" -X -q -At -h 127.0.0.1 -p "$port" -U "$role" -d mask_bench \
    -c "SELECT pg_sleep(1.5)" -f "$q" -c "SELECT pg_sleep(1.6)" >/dev/null &
  local client=$!
  for i in $(seq 1 1200); do
    read -r pid query < <(psql_ -U postgres -d mask_bench -At -F ' ' -c \
      "SELECT pid, query FROM pg_stat_activity WHERE application_name = '$app'")
    if [ -z "$t0" ] && [ "$query" = "SELECT pg_sleep(1.5)" ]; then
      t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    elif [ -n "$t0" ] && [ "$query" = "SELECT pg_sleep(1.6)" ]; then
      t1=$(awk '{print $14 + $15}' "/proc/$pid/stat"); break
    fi
    sleep 0.1
  done
  wait "$client"; rm -f "$q"
  [ -n "$t1" ] || { echo "nan"; return; }
  echo "($t1 - $t0) * 1000 / $(getconf CLK_TCK) / 20" | bc -l
}
# a reference point: the human applying PostgreSQL's own upper() to the same three columns
upper="SELECT id, name, upper(email), phone, upper(ssn), upper(card_number), street, city, postal_code, country, status, created_at FROM customers;"
ch=() ca=() cu=()
for r in $(seq 1 5); do
  ch+=("$(cpu_run bench_human)"); ca+=("$(cpu_run bench_agent)"); cu+=("$(cpu_run bench_human "$upper")")
  printf 'cpu round %d: human %.1f ms, agent %.1f ms, human with upper() on the three columns %.1f ms\n' \
    "$r" "${ch[-1]}" "${ca[-1]}" "${cu[-1]}"
done
mch=$(median "${ch[@]}"); mca=$(median "${ca[@]}"); mcu=$(median "${cu[@]}")

echo
echo "SELECT * FROM customers ($rows rows, 12 columns, 3 masked), pgbench -T $seconds x $rounds rounds, interleaved"
printf 'median latency:    human %s ms, agent %s ms, ratio agent/human %.2f\n' "$mh" "$ma" "$(echo "$ma / $mh" | bc -l)"
printf 'median server CPU: human %.1f ms, agent %.1f ms per SELECT, ratio agent/human %.2f\n' "$mch" "$mca" "$(echo "$mca / $mch" | bc -l)"
printf '  (human with upper() on the same three columns: %.1f ms, ratio %.2f)\n' "$mcu" "$(echo "$mcu / $mch" | bc -l)"
echo "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}')"
ag_cluster_stop "$datadir" fast >/dev/null
