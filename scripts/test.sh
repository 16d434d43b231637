#!/usr/bin/env bash
# agent_guard's whole test suite (the README's test command; CI runs it).
#
#   bash scripts/test.sh [--layer core|pgrx|regress|integration|postgres|upgrade]... [--no-setup] [--no-install]
#
# Layers, in this order:
#   core         cargo test -p agent_guard_core            (pure Rust logic)
#   pgrx         cargo pgrx test pg15 -p agent_guard --runas postgres --pgdata ...
#                (#[pg_test]s inside a throw-away cluster pgrx starts itself)
#   regress      scripts/regress.sh: tests/regress/sql/*.sql vs expected/*.out
#                with pg_regress, against the test cluster (pgrx.toml [test_cluster])
#   integration  cargo test -p agent_guard_integration: real clients against
#                the test cluster (env AG_PGHOST/AG_PGPORT/AG_PGUSER/AG_PGDATA/AG_PGBINDIR)
#   postgres     scripts/postgres-suite.sh: PostgreSQL's own regression suite
#                (parallel_schedule) without agent_guard (A), preloaded (B) and
#                preloaded + created + audit_non_agents = 'all' (C); B and C must
#                equal A test by test (tests/postgres/allowlist-MAJOR.txt); and
#                pgaudit's own regression test with agent_guard preloaded beside it
#   upgrade      scripts/upgrade-test.sh: every released version (releases.txt),
#                built from its commit and used, then upgraded in place with
#                ALTER EXTENSION UPDATE (own cluster, pgrx.toml [upgrade_cluster])
# Before regress/integration/postgres the (debug) extension is built and
# installed (scripts/install-extension.sh; after the pgrx layer, which installs
# its own test build; once per run). regress/integration get a fresh test
# cluster started with shared_preload_libraries = 'agent_guard'; it is stopped
# at the end. The postgres layer starts its own temporary instances.
#
# Options: --layer L (repeatable; default: all), --no-setup (skip scripts/setup.sh),
#          --no-install (regress/integration: use the extension as installed).
# Env:     AG_TEST_PORT, AG_TEST_DATADIR (test cluster), AG_PGRX_TEST_DATADIR,
#          AG_KEEP_CLUSTER=1 (reuse the test cluster's data instead of a fresh initdb,
#          and leave it running at the end: then `bash scripts/regress.sh NAME`
#          re-runs single regress files against it),
#          AG_REGRESS_ONLY="NAME ..." (regress layer: only these files).
# Output: each layer's own output, then one summary line per layer, then
# exactly one last line "N passed, M failed" (all layers summed; a layer that
# fails to build or run counts as at least one failure). Exit 0 only if M = 0.
# Full logs: target/agent_guard-test/LAYER.log.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

root=$(ag_root)
cd "$root" || exit 1

all_layers=(core pgrx regress integration postgres upgrade)
layers=()
do_setup=1
do_install=1
while [ $# -gt 0 ]; do
  case $1 in
    --layer)
      [ $# -ge 2 ] || ag_die "--layer needs one of: ${all_layers[*]}"
      case $2 in core|pgrx|regress|integration|postgres|upgrade) layers+=("$2") ;; *) ag_die "unknown layer '$2' (one of: ${all_layers[*]})" ;; esac
      shift ;;
    --layer=*)
      set -- --layer "${1#--layer=}" "${@:2}"; continue ;;
    --no-setup) do_setup=0 ;;
    --no-install) do_install=0 ;;
    -h|--help) sed -n '2,38p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ ${#layers[@]} -gt 0 ] || layers=("${all_layers[@]}")
want() { local l; for l in "${layers[@]}"; do [ "$l" = "$1" ] && return 0; done; return 1; }

logdir="$root/target/agent_guard-test"
mkdir -p "$logdir"

# One run at a time per machine: runs share the test cluster, its port and
# the installed extension. A second run waits for the first. Fd 9 holds the
# lock; it is closed for every child (servers must not inherit it).
lockdir=$(dirname "$(ag_cluster_datadir test)")
mkdir -p "$lockdir" && chmod 755 "$lockdir" 2>/dev/null
exec 9>"$lockdir/test.lock"
if ! flock -n 9; then
  ag_log "another scripts/test.sh run holds $lockdir/test.lock; waiting for it"
  flock 9
fi

total_passed=0
total_failed=0
summary=()

# record LAYER PASSED FAILED NOTE
record() {
  total_passed=$((total_passed + $2))
  total_failed=$((total_failed + $3))
  summary+=("$(printf '%-12s %4d passed, %4d failed%s' "$1" "$2" "$3" "${4:+  ($4)}")")
}

finish() {
  echo
  ag_log "summary (logs: target/agent_guard-test/)"
  local s
  for s in "${summary[@]}"; do echo "  layer $s"; done
  echo "$total_passed passed, $total_failed failed"
  [ "$total_failed" -eq 0 ]
  exit $?
}

strip_ansi() { sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g'; }

# Sum libtest's "test result: ok. N passed; M failed; ..." lines of a log.
cargo_counts() {
  strip_ansi <"$1" | awk '
    /^test result: / {
      for (i = 1; i <= NF; i++) {
        if ($(i+1) ~ /^passed;?$/) p += $i
        if ($(i+1) ~ /^failed;?$/) f += $i
      }
    }
    END { printf "%d %d\n", p, f }'
}

# run_cargo_layer NAME CMD... : run, tee to the log, record counts.
run_cargo_layer() {
  local name=$1 log="$logdir/$1.log" rc p f note=""
  shift
  ag_log "layer $name: $*"
  "$@" 2>&1 9>&- | tee "$log"
  rc=${PIPESTATUS[0]}
  read -r p f < <(cargo_counts "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; note="exit $rc: build or run error, see target/agent_guard-test/$name.log"
  elif [ "$rc" -ne 0 ]; then note="exit $rc"
  elif [ "$p" -eq 0 ]; then note="no tests ran"; fi
  record "$name" "$p" "$f" "$note"
}

# ---- setup ---------------------------------------------------------------------
if [ $do_setup = 1 ]; then
  if ! bash "$root/scripts/setup.sh" 9>&-; then
    record setup 0 1 "scripts/setup.sh failed"
    finish
  fi
fi
command -v cargo >/dev/null 2>&1 || { record setup 0 1 "cargo not found"; finish; }

# ---- layer 1: core -------------------------------------------------------------
if want core; then
  run_cargo_layer core cargo test -p agent_guard_core --no-fail-fast
fi

# ---- layer 2: pgrx ---------------------------------------------------------------
if want pgrx; then
  pgrx_data=${AG_PGRX_TEST_DATADIR:-$(ag_config pgrx_test data_dir)}
  mkdir -p "$(dirname "$pgrx_data")" && chmod 755 "$(dirname "$pgrx_data")"
  mkdir -p "$pgrx_data" && chown postgres:postgres "$pgrx_data" && chmod 755 "$pgrx_data"
  # Clean up after earlier runs that were killed: pgrx names its data dirs
  # <major>-<pid of the test binary>; leave those of live processes alone.
  for d in "$pgrx_data"/*-*/; do
    [ -d "$d" ] || continue
    d=${d%/}; owner=${d##*-}
    if [[ $owner =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null; then continue; fi
    ag_cluster_stop "$d" immediate >/dev/null 2>&1 || true
    rm -rf "$d"
  done
  ag_detach_installed_lib || true   # pgrx installs its test build with `cp`
  run_cargo_layer pgrx cargo pgrx test "pg$(ag_config postgres major)" -p agent_guard \
    --runas postgres --pgdata "$pgrx_data"
fi

# ---- the installed extension (regress, integration, postgres) -------------------
# Build and install the debug extension once per run (unless --no-install).
install_state=todo
install_note=""
ensure_installed() {
  if [ $do_install = 0 ] || [ $install_state = done ]; then return 0; fi
  if [ $install_state = failed ]; then return 1; fi
  ag_log "build + install the extension (debug) for regress/integration/postgres"
  if bash "$root/scripts/install-extension.sh" >"$logdir/install.log" 2>&1 9>&-; then
    install_state=done; return 0
  fi
  tail -n 60 "$logdir/install.log"
  install_state=failed
  install_note="extension build/install failed, see target/agent_guard-test/install.log"
  return 1
}

# ---- layers 3 and 4: regress, integration (need the test cluster) --------------
if want regress || want integration; then
  datadir=$(ag_cluster_datadir test)
  port=$(ag_cluster_port test)
  cluster_ok=1
  note=""
  if ! ensure_installed; then
    cluster_ok=0; note=$install_note
  fi
  if [ $cluster_ok = 1 ]; then
    if [ "${AG_KEEP_CLUSTER:-0}" != 1 ]; then
      ag_cluster_stop "$datadir" immediate >/dev/null 2>&1
      rm -rf "$datadir"
    fi
    ag_log "start test cluster $datadir on 127.0.0.1:$port"
    trap '[ "${AG_KEEP_CLUSTER:-0}" = 1 ] || ag_cluster_stop "$datadir" fast' EXIT
    if ! ag_cluster_start "$datadir" "$port" \
        "shared_preload_libraries = 'agent_guard'" \
        "log_statement = 'none'" \
        "log_min_messages = warning" \
        "log_min_error_statement = error" \
        "fsync = off" \
        "max_connections = 200"; then
      cluster_ok=0; note="test cluster failed to start (see above and $datadir/server.log)"
    fi
  fi

  if want regress; then
    if [ $cluster_ok = 1 ]; then
      ag_log "layer regress: scripts/regress.sh"
      # shellcheck disable=SC2086
      AG_TEST_PORT=$port bash "$root/scripts/regress.sh" ${AG_REGRESS_ONLY:-} 2>&1 9>&- | tee "$logdir/regress.log"
      rc=${PIPESTATUS[0]}
      line=$(strip_ansi <"$logdir/regress.log" | grep -E '^regress: [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
      p=$(printf '%s' "$line" | awk '{print $2}'); f=$(printf '%s' "$line" | awk '{print $4}')
      p=${p:-0}; f=${f:-0}; rnote=""
      if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; rnote="regress runner error (exit $rc)"; fi
      record regress "$p" "$f" "$rnote"
    else
      record regress 0 1 "$note"
    fi
  fi

  if want integration; then
    if [ $cluster_ok = 1 ]; then
      AG_PGHOST=127.0.0.1 AG_PGPORT=$port AG_PGUSER=postgres AG_PGDATA=$datadir \
      AG_PGBINDIR=$(ag_bindir) AG_PGDATABASE=agent_guard_it \
        run_cargo_layer integration cargo test -p agent_guard_integration --no-fail-fast
    else
      record integration 0 1 "$note"
    fi
  fi

  if [ $cluster_ok = 1 ] && [ "${AG_KEEP_CLUSTER:-0}" != 1 ]; then
    ag_log "stop test cluster"
    ag_cluster_stop "$datadir" fast
  fi
  trap - EXIT
fi

# ---- layer 5: postgres (PostgreSQL's and pgaudit's own regression suites) ------
if want postgres; then
  if ensure_installed; then
    ag_log "layer postgres: scripts/postgres-suite.sh"
    t0=$(date +%s)
    bash "$root/scripts/postgres-suite.sh" 2>&1 9>&- | tee "$logdir/postgres.log"
    rc=${PIPESTATUS[0]}
    secs=$(( $(date +%s) - t0 ))
    line=$(strip_ansi <"$logdir/postgres.log" | grep -E '^postgres: [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    p=$(printf '%s' "$line" | awk '{print $2}'); f=$(printf '%s' "$line" | awk '{print $4}')
    p=${p:-0}; f=${f:-0}; pnote="$secs s"
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; pnote="$secs s, postgres-suite.sh error (exit $rc)"; fi
    record postgres "$p" "$f" "$pnote"
  else
    record postgres 0 1 "$install_note"
  fi
fi

# ---- layer 6: upgrade (installs released versions, then this tree's build) -----
if want upgrade; then
  ag_log "layer upgrade: scripts/upgrade-test.sh"
  bash "$root/scripts/upgrade-test.sh" 2>&1 9>&- | tee "$logdir/upgrade.log"
  rc=${PIPESTATUS[0]}
  line=$(strip_ansi <"$logdir/upgrade.log" | grep -E '^upgrade: [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  p=$(printf '%s' "$line" | awk '{print $2}'); f=$(printf '%s' "$line" | awk '{print $4}')
  p=${p:-0}; f=${f:-0}; unote=""
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; unote="upgrade runner error (exit $rc)"; fi
  record upgrade "$p" "$f" "$unote"
fi

finish
