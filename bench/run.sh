#!/usr/bin/env bash
# agent_guard benchmark harness: pgbench throughput/latency of
#   (a) no preloaded library                      client bench_human
#   (b) shared_preload_libraries = 'agent_guard'  client bench_human
#   (c) shared_preload_libraries = 'agent_guard'  client bench_agent (registered agent)
#   (d) shared_preload_libraries = 'pgaudit', pgaudit.log = 'all'   client bench_human
#   (e) like (c), but the agent's audit records are all synchronous (agent_guard.audit_durability = 'sync')
# for a select-only (pgbench -S) and a write mix (pgbench -N) workload,
# interleaved in rounds on one cluster, reporting medians and TPS ratios
# to (a). See BENCHMARKS.md. Run as root from anywhere: bash bench/run.sh --help
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
ROOT="$BENCH_REPO_ROOT"

usage() {
  cat <<'EOF'
Usage: bash bench/run.sh [options]

  --no-install          do not build/install the extension (use the installed agent_guard.so)
  --scale N             pgbench -i scale factor (default 10)
  --rounds N            rounds; every configuration runs once per round (default 3)
  --time S              seconds per measured pgbench run, -T (default 15)
  --clients N           pgbench -c (default 2)
  --jobs N              pgbench -j (default 2)
  --warmup S            unrecorded select-only warm-up after each server start (default 5, 0 = none)
  --protocol P          pgbench -M: simple|extended|prepared (default simple)
  --configs LIST        comma-separated subset of a,b,c,d,e (default a,b,c,d,e)
  --workloads LIST      comma-separated subset of select,write (default select,write)
  --agent-writes        also run the write mix for (c) (it is expected to be refused);
                        same as AG_BENCH_AGENT_WRITES=1
  --synchronous-commit on|off   (default off, to keep fsync noise out of the write mix)
  --data-dir DIR        cluster data dir, re-created on every run
                        (default: [bench_cluster] data_dir in pgrx.toml,
                        /var/tmp/agent_guard/bench-cluster)
  --no-lock             do not take scripts/test.sh's lock while installing (see below)
  --port P              port (default: [bench_cluster] port in pgrx.toml)
  --keep-logs           keep server logs between configurations (pgaudit logs are large)
  -h, --help

The server runs from a private snapshot of the PostgreSQL install (DATADIR-pg,
i.e. /var/tmp/agent_guard/bench-cluster-pg; env AG_BENCH_PGDIR) holding its own copy of
agent_guard.so/.control/.sql, taken right after the install step, so other
people re-installing the extension during the run do not affect it. While
installing and taking the snapshot the run holds scripts/test.sh's lock file
(test.lock next to the test cluster's data dir).

Environment: AG_BENCH_DATADIR / AG_BENCH_PORT are the defaults of --data-dir / --port.
AG_BENCH_REGISTER_SQL overrides the SQL that registers bench_agent
(default: SELECT agent_guard.register_agent('bench_agent', 'bench_sponsor')).
EOF
}

# ---------------------------------------------------------------- options
INSTALL=1
SCALE=10
ROUNDS=3
DURATION=15
CLIENTS=2
JOBS=2
WARMUP=5
PROTOCOL=simple
CONFIGS="a,b,c,d,e"
WORKLOADS="select,write"
AGENT_WRITES="${AG_BENCH_AGENT_WRITES:-0}"
SYNC_COMMIT=off
DATADIR="${AG_BENCH_DATADIR:-$(ag_config bench_cluster data_dir 2>/dev/null || echo /var/tmp/agent_guard/bench-cluster)}"
[[ "$DATADIR" = /* ]] || DATADIR="$ROOT/$DATADIR"
LOCK=1
PORT="${AG_BENCH_PORT:-$(ag_config bench_cluster port 2>/dev/null || echo 28817)}"
KEEP_LOGS=0
REGISTER_SQL="${AG_BENCH_REGISTER_SQL:-SELECT agent_guard.register_agent('bench_agent', 'bench_sponsor')}"
ORIG_ARGS="$*"

need() { [[ $# -ge 2 && -n "$2" ]] || bench_die "option $1 needs a value"; }
posint() { [[ "$2" =~ ^[0-9]+$ ]] || bench_die "option $1 needs a non-negative integer, got '$2'"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-install) INSTALL=0; shift ;;
    --scale) need "$@"; posint "$1" "$2"; SCALE=$2; shift 2 ;;
    --rounds) need "$@"; posint "$1" "$2"; ROUNDS=$2; shift 2 ;;
    --time) need "$@"; posint "$1" "$2"; DURATION=$2; shift 2 ;;
    --clients) need "$@"; posint "$1" "$2"; CLIENTS=$2; shift 2 ;;
    --jobs) need "$@"; posint "$1" "$2"; JOBS=$2; shift 2 ;;
    --warmup) need "$@"; posint "$1" "$2"; WARMUP=$2; shift 2 ;;
    --protocol) need "$@"; PROTOCOL=$2; shift 2 ;;
    --configs) need "$@"; CONFIGS=$2; shift 2 ;;
    --workloads) need "$@"; WORKLOADS=$2; shift 2 ;;
    --agent-writes) AGENT_WRITES=1; shift ;;
    --synchronous-commit) need "$@"; SYNC_COMMIT=$2; shift 2 ;;
    --data-dir) need "$@"; DATADIR=$2; shift 2 ;;
    --port) need "$@"; posint "$1" "$2"; PORT=$2; shift 2 ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    --no-lock) LOCK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; bench_die "unknown option: $1" ;;
  esac
done
(( ROUNDS >= 1 && DURATION >= 1 && CLIENTS >= 1 && JOBS >= 1 && SCALE >= 1 )) \
  || bench_die "--rounds, --time, --clients, --jobs and --scale must be >= 1"
[[ "$PROTOCOL" =~ ^(simple|extended|prepared)$ ]] || bench_die "--protocol: simple|extended|prepared"
[[ "$SYNC_COMMIT" =~ ^(on|off)$ ]] || bench_die "--synchronous-commit: on|off"
[[ "$DATADIR" = /* ]] || DATADIR="$(pwd)/$DATADIR"
IFS=, read -r -a CONFIG_LIST <<<"$CONFIGS"
IFS=, read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
for c in "${CONFIG_LIST[@]}"; do [[ "$c" =~ ^[abcde]$ ]] || bench_die "--configs: unknown config '$c'"; done
for w in "${WORKLOAD_LIST[@]}"; do [[ "$w" =~ ^(select|write)$ ]] || bench_die "--workloads: unknown workload '$w'"; done

export BENCH_DATADIR="$DATADIR" BENCH_PORT="$PORT" BENCH_SYNC_COMMIT="$SYNC_COMMIT"
DB=agent_guard_bench
PGBENCH="$BENCH_BINDIR/pgbench"
PKGLIBDIR="$("$BENCH_PG_CONFIG" --pkglibdir)"

TS="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS_DIR="$HERE/results"
TSV="$RESULTS_DIR/$TS.tsv"
REPORT="$RESULTS_DIR/$TS.md"
RAWDIR="$RESULTS_DIR/$TS.raw"       # full pgbench output of every run
mkdir -p "$RESULTS_DIR" "$RAWDIR"

NOTES=()
note() { NOTES+=("$*"); bench_log "note: $*"; }

config_label() {
  case $1 in
    a) echo "(a) no library" ;;
    b) echo "(b) agent_guard, human" ;;
    c) echo "(c) agent_guard, agent" ;;
    d) echo "(d) pgaudit log=all" ;;
    e) echo "(e) agent_guard, agent, sync audit" ;;
  esac
}
config_client() {
  case $1 in
    c) echo bench_agent ;;
    e) echo bench_agent_sync ;;
    *) echo bench_human ;;
  esac
}
# (b), (c) and (e) run with agent_guard loaded; (c) and (e) as registered agents.
uses_guard() { [[ $1 == b || $1 == c || $1 == e ]]; }
is_agent_config() { [[ $1 == c || $1 == e ]]; }
workload_flag() { [[ $1 == select ]] && echo -S || echo -N; }
workload_label() { [[ $1 == select ]] && echo "select-only (-S)" || echo "simple-update (-N)"; }

# ---------------------------------------------------------------- cleanup
cleanup() {
  local rc=$?
  set +e
  if [[ -f "$DATADIR/postmaster.pid" ]]; then
    bench_log "stopping bench cluster ($DATADIR)"
    bench_stop "$DATADIR" fast
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- checks
# One benchmark per data dir at a time: a second run waits (fd 8, held to the end).
mkdir -p "$(dirname "$DATADIR")"
exec 8>"$DATADIR.lock"
if ! flock -n 8; then
  bench_log "another bench/run.sh is using $DATADIR; waiting for it"
  flock 8
fi
[[ $EUID -eq 0 || "$(id -un)" == postgres ]] || bench_die "run as root (the server is run as the postgres OS user)"
id postgres >/dev/null 2>&1 || bench_die "no postgres OS user"
[[ -x "$PGBENCH" ]] || bench_die "pgbench not found in $BENCH_BINDIR"
has_config() { [[ ",$CONFIGS," == *",$1,"* ]]; }
has_workload() { [[ ",$WORKLOADS," == *",$1,"* ]]; }

if (( LOCK )); then
  if declare -F ag_cluster_datadir >/dev/null && lockdir="$(dirname "$(ag_cluster_datadir test 2>/dev/null)")" \
      && [[ "$lockdir" = /* ]]; then :; else lockdir=/var/tmp/agent_guard; fi
  LOCKFILE="$lockdir/test.lock"
  mkdir -p "$lockdir"
  exec 9>"$LOCKFILE"
  if ! flock -n 9; then
    bench_log "waiting for $LOCKFILE (a scripts/test.sh run is using the installed extension)"
    flock 9
  fi
  bench_log "holding $LOCKFILE while installing and snapshotting the extension (--no-lock to skip)"
fi

if (( INSTALL )); then
  bench_log "building and installing agent_guard (release)"
  if [[ -f "$ROOT/scripts/install-extension.sh" ]]; then
    install_cmd=(bash "$ROOT/scripts/install-extension.sh" --release)
  else
    install_cmd=(cargo pgrx install --package agent_guard --release --pg-config "$BENCH_PG_CONFIG")
  fi
  bench_log "${install_cmd[*]}"
  if ! (cd "$ROOT" && "${install_cmd[@]}") >"$RAWDIR/install.log" 2>&1; then
    tail -n 40 "$RAWDIR/install.log" >&2
    bench_die "cargo pgrx install --release failed (full log: $RAWDIR/install.log). If src/ is mid-edit, retry later or use --no-install with an already installed copy."
  fi
fi
if has_config b || has_config c; then
  [[ -f "$PKGLIBDIR/agent_guard.so" ]] \
    || bench_die "$PKGLIBDIR/agent_guard.so is not installed (run without --no-install)"
fi
if has_config d; then
  [[ -f "$PKGLIBDIR/pgaudit.so" ]] \
    || bench_die "$PKGLIBDIR/pgaudit.so missing: apt-get install -y postgresql-15-pgaudit"
fi

# The server runs from a private snapshot of the PostgreSQL install with its
# own copy of agent_guard.so/.control/.sql, so concurrent re-installs by others
# neither change the build under test nor crash the server (see bench/lib.sh).
PRIV_PG="${AG_BENCH_PGDIR:-$DATADIR-pg}"   # per data dir: runs on other data dirs don't share it
bench_private_install "$PRIV_PG"
SYS_PKGLIBDIR="$PKGLIBDIR"
PKGLIBDIR="$BENCH_PRIV_LIBDIR"
if (( INSTALL )) && [[ -f "$ROOT/target/release/libagent_guard.so" && -f "$PKGLIBDIR/agent_guard.so" ]] \
    && ! cmp -s "$ROOT/target/release/libagent_guard.so" "$PKGLIBDIR/agent_guard.so"; then
  cp -p "$ROOT/target/release/libagent_guard.so" "$PKGLIBDIR/agent_guard.so"
  NOTES+=("the installed agent_guard.so was replaced by someone else right after our install; the snapshot uses target/release/libagent_guard.so (the SQL script is the installed one)")
fi
if (( LOCK )); then
  flock -u 9; exec 9>&-
  bench_log "released $LOCKFILE; the server runs from the snapshot in $PRIV_PG"
fi

# ---------------------------------------------------------------- machine
git_rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commits yet')"
git_dirty="$( { git -C "$ROOT" status --porcelain 2>/dev/null || true; } | wc -l | tr -d ' ')"
so_sha() { [[ -f "$PKGLIBDIR/agent_guard.so" ]] && sha256sum "$PKGLIBDIR/agent_guard.so" | cut -c1-12 || echo none; }
SO_SHA0="$(so_sha)"     # the build under test (the snapshot's copy)
CUR_SO="-"              # build loaded by the running server ("-": not loaded)
so_id="not installed"
if [[ -f "$PKGLIBDIR/agent_guard.so" ]]; then
  so_id="sha256 $SO_SHA0, built $(date -u -r "$PKGLIBDIR/agent_guard.so" +%Y-%m-%dT%H:%M:%SZ), $(du -m "$PKGLIBDIR/agent_guard.so" | cut -f1) MB, $( (( INSTALL )) && echo "release build installed by this run" || echo "as installed (--no-install)"); the server loads a private copy from $PKGLIBDIR"
  if command -v readelf >/dev/null && readelf -S "$PKGLIBDIR/agent_guard.so" 2>/dev/null | grep -q '\.debug_info'; then
    so_id+=", has debug info (a debug build?)"
  fi
fi
MACHINE=(
  "date (UTC): $TS"
  "host: $(uname -srm), $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
  "cpu: nproc=$(nproc), $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
  "memory: $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  "postgres: $("$BENCH_BINDIR/postgres" --version)"
  "pgbench: $("$PGBENCH" --version)"
  "pgaudit: $(sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\(.*\)'/\1/p" "$("$BENCH_PG_CONFIG" --sharedir)/extension/pgaudit.control" 2>/dev/null || echo '?')"
  "git: $git_rev ($git_dirty uncommitted paths)"
  "agent_guard.so: $so_id"
)

SETTINGS="scale=$SCALE rounds=$ROUNDS time=${DURATION}s clients=$CLIENTS jobs=$JOBS protocol=$PROTOCOL warmup=${WARMUP}s synchronous_commit=$SYNC_COMMIT shared_buffers=256MB"

# ---------------------------------------------------------------- cluster setup
bench_log "initialising bench cluster in $DATADIR (port $PORT)"
bench_initdb "$DATADIR" "$PORT"
bench_set_config "$DATADIR" "shared_preload_libraries = ''"
bench_start "$DATADIR" || bench_die "bench cluster failed to start for setup"

bench_psql postgres postgres -c "CREATE DATABASE $DB"
bench_log "pgbench -i -s $SCALE"
"$PGBENCH" -i -s "$SCALE" -q -h "$DATADIR" -p "$PORT" -U postgres "$DB" >"$RAWDIR/pgbench-init.log" 2>&1 \
  || { tail -n 20 "$RAWDIR/pgbench-init.log" >&2; bench_die "pgbench -i failed"; }

bench_psql postgres "$DB" <<SQL
DO \$\$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['bench_human', 'bench_sponsor', 'bench_agent', 'bench_agent_sync'] LOOP
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', r);
    END IF;
  END LOOP;
END
\$\$;
GRANT CONNECT ON DATABASE $DB TO bench_human, bench_sponsor, bench_agent, bench_agent_sync;
GRANT USAGE ON SCHEMA public TO bench_human, bench_agent, bench_agent_sync;
ALTER ROLE bench_agent_sync SET agent_guard.audit_durability = 'sync';
GRANT SELECT, INSERT, UPDATE, DELETE
  ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history
  TO bench_human, bench_agent, bench_agent_sync;
VACUUM ANALYZE;
SQL
bench_stop "$DATADIR"

# ---------------------------------------------------------------- per-config server
# Settings that differ between configurations (everything else is in postgresql.conf).
config_conf() {
  case $1 in
    a) echo "shared_preload_libraries = ''" ;;
    b|c|e) echo "shared_preload_libraries = 'agent_guard'" ;;
    d) printf '%s\n' "shared_preload_libraries = 'pgaudit'" "pgaudit.log = 'all'" ;;
  esac
}

AGENT_STATE=unknown    # unknown | ok | missing | failed (of the latest (c) attempt)
AGENT_PROBE_DONE=0
C_MISSING_ROUNDS=""
AUDIT_STATS_NOTED=0

# Bring the server up for config $1 and prepare the database; return 1 to skip the config.
start_config() {
  local cfg=$1 spl lines=()
  mapfile -t lines < <(config_conf "$cfg")
  bench_set_config "$DATADIR" "${lines[@]}"
  if ! bench_start "$DATADIR"; then
    bench_die "server failed to start for config $(config_label "$cfg") with: ${lines[*]} (partial results: $TSV)"
  fi
  CUR_SO="-"
  if uses_guard "$cfg"; then
    CUR_SO="$(so_sha)"
    local loaded
    loaded="$(bench_loaded_libs "$DATADIR" | grep '/agent_guard\.so$' || true)"
    [[ "$loaded" == "$PKGLIBDIR/agent_guard.so" ]] \
      || bench_die "config $cfg: the server loaded '${loaded:-no agent_guard.so}', expected the snapshot $PKGLIBDIR/agent_guard.so"
  fi
  spl="$(bench_psql postgres "$DB" -Atc "SHOW shared_preload_libraries")"
  case $cfg in
    a) [[ -z "$spl" ]] ;;
    b|c|e) [[ "$spl" == agent_guard ]] ;;
    d) [[ "$spl" == pgaudit ]] ;;
  esac || bench_die "config $cfg: unexpected shared_preload_libraries='$spl'"

  # (a) and (d) run no DDL at all: with a library not preloaded, DDL could fire
  # another extension's event triggers and load it. agent_guard is created at
  # the start of (b)/(c) and dropped at their end (while still preloaded), so
  # (a) and (d) see a database without agent_guard objects.
  case $cfg in
    a|d)
      if [[ -n "$(bench_psql postgres "$DB" -Atc "SELECT 1 FROM pg_extension WHERE extname = 'agent_guard'")" ]]; then
        note "config $cfg ran with the agent_guard extension still created in the database (its library not loaded)"
      fi
      ;;
    b|c|e)
      bench_psql postgres "$DB" -c "CREATE EXTENSION IF NOT EXISTS agent_guard" \
        || bench_die "CREATE EXTENSION agent_guard failed (config $cfg)"
      ;;
  esac
  # No CREATE EXTENSION pgaudit: logging does not need it, and its event
  # triggers would make DDL fail in configs where pgaudit is not preloaded.

  if [[ $cfg == e ]]; then
    bench_psql postgres "$DB" -c "SELECT agent_guard.register_agent('bench_agent_sync', 'bench_sponsor')" >/dev/null \
      || { note "(e) skipped in round $round: registering bench_agent_sync failed"; return 1; }
  fi
  if [[ $cfg == c ]]; then
    local n err
    n="$(bench_psql postgres "$DB" -Atc "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'agent_guard' AND p.proname = 'register_agent'")"
    if [[ "$n" == 0 ]]; then
      AGENT_STATE=missing
      C_MISSING_ROUNDS+="${C_MISSING_ROUNDS:+,}$round"
      return 1
    fi
    if ! err="$(bench_psql postgres "$DB" -c "$REGISTER_SQL" 2>&1 >/dev/null)"; then
      if grep -qiE 'already|exists|duplicate' <<<"$err"; then
        :   # registered by an earlier round
      else
        AGENT_STATE=failed
        note "(c) skipped in round $round: registering bench_agent failed: $(head -n1 <<<"$err")"
        return 1
      fi
    fi
    AGENT_STATE=ok
    if (( ! AGENT_PROBE_DONE )); then
      AGENT_PROBE_DONE=1
      if err="$(bench_psql bench_agent "$DB" -c "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1" 2>&1)"; then
        note "(c) probe: a plain UPDATE by bench_agent was NOT refused (agent_guard did not treat it as an agent write)"
      else
        note "(c) probe: a plain UPDATE by bench_agent was refused as expected: $(grep -m1 -E 'ERROR|FATAL' <<<"$err" || head -n1 <<<"$err")"
      fi
    fi
  fi
  if (( WARMUP > 0 )); then
    "$PGBENCH" -n -S -M "$PROTOCOL" -T "$WARMUP" -c "$CLIENTS" -j "$JOBS" \
      -h "$DATADIR" -p "$PORT" -U "$(config_client "$cfg")" "$DB" >"$RAWDIR/warmup-$cfg.log" 2>&1 \
      || note "round $round: warm-up for config $cfg failed: $(grep -m1 -iE 'error|fatal|abort' "$RAWDIR/warmup-$cfg.log" || true)"
    if ! bench_running "$DATADIR"; then
      crash_note "$round" "$cfg"
      return 1
    fi
  fi
  if [[ $cfg == d ]]; then sleep 1; fi
  if [[ $cfg == d ]] && ! grep -q 'AUDIT:' "$DATADIR"/log/*.log 2>/dev/null; then
    bench_die "config d: pgaudit is loaded but wrote no AUDIT: lines to the server log"
  fi
  return 0
}

stop_config() {
  local cfg=$1 err
  if ! bench_running "$DATADIR"; then
    # It died: keep its server log for inspection.
    mkdir -p "$RAWDIR/serverlog-died-r$round-$cfg"
    mv "$DATADIR"/log/* "$RAWDIR/serverlog-died-r$round-$cfg/" 2>/dev/null || true
    cp "$DATADIR/pg_ctl.log" "$RAWDIR/serverlog-died-r$round-$cfg/" 2>/dev/null || true
    return 0
  fi
  if uses_guard "$cfg"; then
    if ! err="$(bench_psql postgres "$DB" -c "DROP EXTENSION IF EXISTS agent_guard CASCADE" 2>&1)"; then
      note "config $cfg: DROP EXTENSION agent_guard failed: $(head -n1 <<<"$err")"
    fi
  fi
  bench_stop "$DATADIR" || bench_die "could not stop the server"
  if (( ! KEEP_LOGS )); then rm -f "$DATADIR"/log/*.log; fi
}

# Same maintenance before every measured run, done as superuser:
# pgbench itself runs with -n because the clients are not table owners.
pre_run_maintenance() {
  bench_psql postgres "$DB" >/dev/null <<'SQL'
TRUNCATE pgbench_history;
VACUUM pgbench_branches, pgbench_tellers, pgbench_accounts;
CHECKPOINT;
SQL
}

printf 'ts_utc\tround\tconfig\tclient\tworkload\tprotocol\tclients\tjobs\tduration_s\trc\ttps\tlatency_ms\ttransactions\tfailed_tx\tserver_log_bytes\tagent_guard_so\tloadavg_1m\terror\n' >"$TSV"

run_one() {
  local round=$1 cfg=$2 wl=$3 client out rc tps lat txn failed err logb0 logb1 load1
  client="$(config_client "$cfg")"
  out="$RAWDIR/r$round-$cfg-$wl.log"
  if ! pre_run_maintenance 2>"$out.maint.err"; then
    if bench_running "$DATADIR"; then
      cat "$out.maint.err" >&2
      bench_die "maintenance before run failed (round $round config $cfg)"
    fi
    server_died "$round" "$cfg" "$wl" "$client"
    return 1
  fi
  rm -f "$out.maint.err"
  logb0="$(bench_server_log_bytes "$DATADIR")"
  bench_log "round $round: $(config_label "$cfg"), $(workload_label "$wl"), ${DURATION}s"
  rc=0
  "$PGBENCH" -n "$(workload_flag "$wl")" -M "$PROTOCOL" -T "$DURATION" -c "$CLIENTS" -j "$JOBS" \
    -h "$DATADIR" -p "$PORT" -U "$client" "$DB" >"$out" 2>&1 || rc=$?
  load1="$(cut -d' ' -f1 /proc/loadavg)"   # ~2*clients from the run itself; more = other load on the machine
  if uses_guard "$cfg" && bench_running "$DATADIR"; then
    local stats
    stats="$(bench_psql postgres "$DB" -Atc "SELECT agent_guard.audit_stats()" 2>/dev/null || true)"
    if [[ -n "$stats" ]]; then
      printf '\n---- agent_guard.audit_stats() after the run ----\n%s\n' "$stats" >>"$out"
      if [[ $cfg == c ]] && (( ! AUDIT_STATS_NOTED )); then
        AUDIT_STATS_NOTED=1
        note "round $round (c) $wl: agent_guard.audit_stats() right after the run: $(tr -s '\n\t ' ' ' <<<"$stats" | cut -c1-400)"
      fi
    fi
  fi
  sleep 1   # let the logging collector drain before measuring the log size
  logb1="$(bench_server_log_bytes "$DATADIR")"
  tps="$(sed -nE 's/^tps = ([0-9.]+) \((without initial connection time|excluding connections establishing)\).*/\1/p' "$out" | tail -n1)"
  lat="$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$out" | tail -n1)"
  txn="$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$out" | tail -n1)"
  failed="$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$out" | tail -n1)"
  err="$(grep -m1 -iE 'error|fatal|abort' "$out" | tr '\t' ' ' | cut -c1-300 || true)"
  if [[ $rc -ne 0 || -z "$tps" || -n "$err" ]]; then
    {
      echo; echo "---- server log errors (tail) ----"
      bench_server_log_tail "$DATADIR" 20 'ERROR|FATAL|PANIC'
    } >>"$out"
    bench_log "round $round config $cfg $wl: pgbench rc=$rc ${err:+($err)}"
    [[ $rc -ne 0 || -z "$tps" ]] && tps=""
    if ! bench_running "$DATADIR"; then
      err="server died during the run: ${err:-}"
      crash_note "$round" "$cfg"
    fi
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$round" "$cfg" "$client" "$wl" "$PROTOCOL" "$CLIENTS" "$JOBS" \
    "$DURATION" "$rc" "${tps:-NA}" "${lat:-NA}" "${txn:-NA}" "${failed:-NA}" "$((logb1 - logb0))" "$CUR_SO" "$load1" "${err:-}" >>"$TSV"
  bench_running "$DATADIR"
}

crash_note() {
  note "round $1 config $2: the server died; this run is recorded as failed, the config's other workloads are skipped this round, and its server log is kept in bench/results/$TS.raw/serverlog-died-r$1-$2/"
}

# Record a run that could not start because the server is gone.
server_died() {
  local round=$1 cfg=$2 wl=$3 client=$4
  crash_note "$round" "$cfg"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$round" "$cfg" "$client" "$wl" "$PROTOCOL" "$CLIENTS" "$JOBS" \
    "$DURATION" "-1" NA NA NA NA 0 "$CUR_SO" "$(cut -d' ' -f1 /proc/loadavg)" "server not running before the run (died)" >>"$TSV"
}

# ---------------------------------------------------------------- rounds
n_cfg=${#CONFIG_LIST[@]}
for (( round = 1; round <= ROUNDS; round++ )); do
  # Rotate the order each round so no configuration always runs first/last.
  for (( k = 0; k < n_cfg; k++ )); do
    cfg="${CONFIG_LIST[$(( (k + round - 1) % n_cfg ))]}"
    if ! start_config "$cfg"; then
      stop_config "$cfg"
      continue
    fi
    for wl in "${WORKLOAD_LIST[@]}"; do
      if is_agent_config "$cfg" && [[ $wl == write ]] && (( ! AGENT_WRITES )); then
        continue
      fi
      if ! run_one "$round" "$cfg" "$wl"; then
        break    # server died: skip this config's other workloads this round
      fi
    done
    stop_config "$cfg"
  done
done

if has_config c; then
  if [[ -n "$C_MISSING_ROUNDS" ]]; then
    note "(c) skipped in round(s) $C_MISSING_ROUNDS: agent_guard.register_agent does not exist in the installed extension (will be filled in once agent registration exists)"
  fi
  if has_workload write && (( ! AGENT_WRITES )); then
    note "(c) runs select-only: agent writes are refused by agent_guard without a grant (use --agent-writes to run -N anyway)"
  fi
fi
n_foreign="$(awk -F'\t' -v want="$SO_SHA0" 'NR > 1 && $16 != "-" && $16 != want' "$TSV" | wc -l | tr -d ' ')"
if (( n_foreign > 0 )); then
  note "$n_foreign (b)/(c) run(s) loaded a different agent_guard.so than $SO_SHA0 (the snapshot changed?); they are in the TSV but excluded from the medians"
fi
if has_config d; then
  note "(d) pgaudit logs to files in $DATADIR/log via the logging collector; server_log_bytes in the TSV is the log volume per run"
fi

# ---------------------------------------------------------------- summary
summary_table() {
  # Medians per (config, workload) over successful rounds; ratio = median TPS / median TPS of (a).
  awk -F'\t' -v want="$SO_SHA0" '
    function median(list,    n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { t = a[i] + 0; j = i - 1
        while (j >= 1 && a[j] + 0 > t) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
      if (n == 0) return ""
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function label(c) {
      return c == "a" ? "(a) no library" : c == "b" ? "(b) agent_guard, human" : \
             c == "c" ? "(c) agent_guard, agent" : c == "d" ? "(d) pgaudit log=all" : \
             "(e) agent_guard, agent, sync audit"
    }
    NR == 1 { next }
    {
      k = $3 SUBSEP $5; runs[k]++
      if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
      if ($16 != "-" && $16 != want) next   # another build of agent_guard.so
      if ($11 != "NA") { ok[k]++; tps[k] = tps[k] " " $11; if ($12 != "NA") lat[k] = lat[k] " " $12
                         rt[$2 SUBSEP $3 SUBSEP $5] = $11; rounds[$2] = 1 }
    }
    END {
      print "| config | workload | ok runs | median TPS | median latency ms | TPS ratio vs (a) | paired ratio: median [min-max] |"
      print "|---|---|---|---:|---:|---:|---|"
      for (c = 1; c <= 5; c++) { cfg = substr("abcde", c, 1)
        for (w = 1; w <= 2; w++) { wl = (w == 1) ? "select" : "write"; k = cfg SUBSEP wl
          if (!(k in runs)) continue
          mt = median(tps[k]); ml = median(lat[k]); base = median(tps["a" SUBSEP wl])
          ratio = (mt != "" && base != "" && base > 0) ? sprintf("%.3f", mt / base) : "n/a"
          lo = ""; hi = ""; qs = ""
          for (r in rounds) {
            x = rt[r SUBSEP cfg SUBSEP wl]; b = rt[r SUBSEP "a" SUBSEP wl]
            if (x == "" || b == "" || b + 0 <= 0) continue
            q = x / b; qs = qs " " q
            if (lo == "" || q < lo) lo = q; if (hi == "" || q > hi) hi = q
          }
          range = (lo == "") ? "n/a" : sprintf("%.3f [%.3f-%.3f]", median(qs), lo, hi)
          printf "| %s | %s | %d/%d | %s | %s | %s | %s |\n", label(cfg), \
            (wl == "select" ? "select-only (-S)" : "simple-update (-N)"), ok[k], runs[k], \
            (mt == "" ? "n/a" : sprintf("%.1f", mt)), (ml == "" ? "n/a" : sprintf("%.3f", ml)), ratio, range
        }
      }
    }' "$TSV"
}

{
  echo "## agent_guard benchmark $TS"
  echo
  echo "Command: \`bash bench/run.sh${ORIG_ARGS:+ $ORIG_ARGS}\`"
  echo
  echo "Machine:"
  printf -- '- %s\n' "${MACHINE[@]}"
  echo
  echo "Settings: $SETTINGS"
  echo
  summary_table
  echo
  if [[ $(awk -F'\t' 'NR > 1 && ($10 != 0 || $11 == "NA" || $18 != "")' "$TSV" | wc -l) -gt 0 ]]; then
    echo "pgbench errors (raw output in bench/results/$TS.raw/):"
    awk -F'\t' 'NR > 1 && ($10 != 0 || $11 == "NA" || $18 != "") { printf "- round %s config %s %s: rc=%s failed_tx=%s %s\n", $2, $3, $5, $10, $14, $18 }' "$TSV"
    echo
  fi
  if (( ${#NOTES[@]} )); then
    echo "Notes:"
    printf -- '- %s\n' "${NOTES[@]}"
    echo
  fi
  echo "Raw results: bench/results/$TS.tsv"
} | tee "$REPORT"
