#!/usr/bin/env bash
# agent_guard's whole test suite (the README's test command; CI runs it).
#
#   bash scripts/test.sh [--pg MAJOR]... [--no-setup] [--no-install]
#        [--layer core|pgrx|regress|integration|postgres|upgrade|package]...
#
# Layers, in this order (core once; the others once per PostgreSQL major):
#   core         cargo test -p agent_guard_core            (pure Rust logic)
#   pgrx         cargo pgrx test pgNN -p agent_guard --runas postgres --pgdata ...
#                (#[pg_test]s inside a throw-away cluster pgrx starts itself)
#   regress      scripts/regress.sh: tests/regress/sql/*.sql vs expected/*.out
#                with pg_regress, against the test cluster (pgrx.toml [test_cluster])
#   integration  cargo test -p agent_guard_integration: real clients against
#                the test cluster (env AG_PGHOST/AG_PGPORT/AG_PGUSER/AG_PGDATA/AG_PGBINDIR)
#   postgres     scripts/postgres-suite.sh: the major's own regression suite
#                (parallel_schedule) without agent_guard (A), preloaded (B) and
#                preloaded + created + audit_non_agents = 'all' (C); B and C must
#                equal A test by test (tests/postgres/allowlist-MAJOR.txt); and
#                pgaudit's own regression test with agent_guard preloaded beside it
#   upgrade      scripts/upgrade-test.sh: every released version (releases.txt)
#                that supports the major, built from its commit and used, then
#                upgraded in place with ALTER EXTENSION UPDATE (own cluster,
#                pgrx.toml [upgrade_cluster]); a major no release supports
#                reports the layer as skipped (0 passed, 0 failed, and why)
#   package      scripts/package-test.sh: builds the .deb (scripts/package.sh),
#                removes the dev-installed files, installs the package (dpkg -i
#                for Debian's postgresql-MAJOR; a copy of its files for a server
#                built from source), checks the server maps the packaged
#                library, runs the regress files against it, removes it again
# Majors: --pg MAJOR (repeatable) picks them; default: every major of pgrx.toml
# [postgres] tested_majors installed here (scripts/lib.sh ag_installed_majors:
# Debian's package, or a server scripts/build-postgres.sh built). For each, the
# scripts use that server (ag_use_major: AG_PG_CONFIG/AG_PG_MAJOR), its
# pg_regress and binaries, and a test cluster of its own (data dir suffixed
# -MAJOR for majors other than the packaged one; same port, one at a time).
# Before regress/integration/postgres the (debug) extension is built and
# installed into that server (scripts/install-extension.sh; after the pgrx
# layer, which installs its own test build; once per major and run).
# regress/integration get a fresh test cluster started with
# shared_preload_libraries = 'agent_guard'; it is stopped at the end. The
# postgres layer starts its own temporary instances. upgrade and package leave
# the dev build installed again.
#
# Options: --layer L (repeatable; default: all), --no-setup (skip scripts/setup.sh),
#          --no-install (regress/integration: use the extension as installed).
# Env:     AG_TEST_PORT, AG_TEST_DATADIR (test cluster), AG_PGRX_TEST_DATADIR,
#          AG_KEEP_CLUSTER=1 (reuse the test cluster's data instead of a fresh initdb,
#          and leave it running at the end: then `bash scripts/regress.sh NAME`
#          re-runs single regress files against it),
#          AG_REGRESS_ONLY="NAME ..." (regress layer: only these files).
# Output: each layer's own output, then one summary line per layer and major
# with its duration, then exactly one last line "N passed, M failed" (all
# layers of all majors summed; a layer that fails to build or run counts as
# at least one failure; a requested major that is not installed counts as one
# failure). Exit 0 only if M = 0.
# Full logs: target/agent_guard-test/LAYER.log (core) and LAYER-pgMAJOR.log.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

root=$(ag_root)
cd "$root" || exit 1

all_layers=(core pgrx regress integration postgres upgrade package)
layers=()
majors=()
do_setup=1
do_install=1
while [ $# -gt 0 ]; do
  case $1 in
    --layer)
      [ $# -ge 2 ] || ag_die "--layer needs one of: ${all_layers[*]}"
      case $2 in core|pgrx|regress|integration|postgres|upgrade|package) layers+=("$2") ;; *) ag_die "unknown layer '$2' (one of: ${all_layers[*]})" ;; esac
      shift ;;
    --layer=*)
      set -- --layer "${1#--layer=}" "${@:2}"; continue ;;
    --pg)
      [ $# -ge 2 ] || ag_die "--pg needs a major, one of: $(ag_tested_majors)"
      [[ " $(ag_tested_majors) " == *" $2 "* ]] || ag_die "--pg $2: not a tested major (pgrx.toml tested_majors: $(ag_tested_majors))"
      majors+=("$2")
      shift ;;
    --pg=*)
      set -- --pg "${1#--pg=}" "${@:2}"; continue ;;
    --no-setup) do_setup=0 ;;
    --no-install) do_install=0 ;;
    -h|--help) sed -n '2,56p' "${BASH_SOURCE[0]}"; exit 0 ;;
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

# record LAYER PASSED FAILED NOTE: LAYER gets the major being tested (if
# any) and the seconds since the layer's `layer_start`.
layer_t0=$(date +%s)
layer_start() { layer_t0=$(date +%s); }
record() {
  local name=$1 secs=$(( $(date +%s) - layer_t0 ))
  [ -n "${AG_PG_MAJOR:-}" ] && name="$name pg${AG_PG_MAJOR}"
  total_passed=$((total_passed + $2))
  total_failed=$((total_failed + $3))
  summary+=("$(printf '%-17s %4d passed, %4d failed %5ds%s' "$name" "$2" "$3" "$secs" "${4:+  ($4)}")")
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
  local name=$1 log="$logdir/$1${AG_PG_MAJOR:+-pg$AG_PG_MAJOR}.log" rc p f note=""
  shift
  ag_log "layer $name: $*"
  "$@" 2>&1 9>&- | tee "$log"
  rc=${PIPESTATUS[0]}
  read -r p f < <(cargo_counts "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; note="exit $rc: build or run error, see ${log#"$root"/}"
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
  layer_start
  run_cargo_layer core cargo test -p agent_guard_core --no-fail-fast
fi

# ---- the installed extension (regress, integration, postgres) -------------------
# Build and install the debug extension into the major under test once per
# major (unless --no-install); install_state is reset for each major.
install_state=todo
install_note=""
ensure_installed() {
  if [ $do_install = 0 ] || [ $install_state = done ]; then return 0; fi
  if [ $install_state = failed ]; then return 1; fi
  ag_log "build + install the extension (debug) into PostgreSQL $AG_PG_MAJOR for regress/integration/postgres"
  if bash "$root/scripts/install-extension.sh" >"$logdir/install-pg$AG_PG_MAJOR.log" 2>&1 9>&-; then
    install_state=done; return 0
  fi
  tail -n 60 "$logdir/install-pg$AG_PG_MAJOR.log"
  install_state=failed
  install_note="extension build/install failed, see target/agent_guard-test/install-pg$AG_PG_MAJOR.log"
  return 1
}

# summary_of LOG PREFIX: "P F" from the last "PREFIX: P passed, F failed" line.
summary_of() {
  local line p f
  line=$(strip_ansi <"$1" | grep -E "^$2: [0-9]+ passed, [0-9]+ failed" | tail -n 1)
  p=$(printf '%s' "$line" | awk '{print $2}'); f=$(printf '%s' "$line" | awk '{print $4}')
  echo "${p:-0} ${f:-0}"
}

# ---- per PostgreSQL major: layers 2 to 7 ------------------------------------------
if [ ${#majors[@]} -eq 0 ]; then
  mapfile -t majors < <(ag_installed_majors)
  missing_majors=""
  for m in $(ag_tested_majors); do
    [[ " ${majors[*]} " == *" $m "* ]] || missing_majors="$missing_majors $m"
  done
  [ -z "$missing_majors" ] || ag_log "PostgreSQL${missing_majors} not installed here (scripts/setup.sh builds them; see its output): not tested"
fi
# Another checkout's setup may have rewritten pgrx's config without our majors.
ag_pgrx_init 9>&- || ag_log "cargo pgrx init failed; the pgrx layer and installs may fail"
for major in "${majors[@]}"; do
  ag_use_major "$major"
  if [ ! -x "$AG_PG_CONFIG" ]; then
    layer_start
    record server 0 1 "PostgreSQL $major not installed ($AG_PG_CONFIG); run scripts/setup.sh"
    continue
  fi
  ag_log "PostgreSQL $major ($AG_PG_CONFIG)"
  install_state=todo
  install_note=""

  # ---- layer 2: pgrx ---------------------------------------------------------------
  if want pgrx; then
    layer_start
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
    run_cargo_layer pgrx cargo pgrx test "pg$major" -p agent_guard \
      --runas postgres --pgdata "$pgrx_data"
  fi

  # ---- layers 3 and 4: regress, integration (need the test cluster) --------------
  if want regress || want integration; then
    datadir=$(ag_cluster_datadir test)
    port=$(ag_cluster_port test)
    cluster_ok=1
    note=""
    layer_start
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
    prep_note="build+install+start $(( $(date +%s) - layer_t0 ))s"
    layer_start

    if want regress; then
      if [ $cluster_ok = 1 ]; then
        ag_log "layer regress (PostgreSQL $major): scripts/regress.sh"
        # shellcheck disable=SC2086
        AG_TEST_PORT=$port bash "$root/scripts/regress.sh" ${AG_REGRESS_ONLY:-} 2>&1 9>&- | tee "$logdir/regress-pg$major.log"
        rc=${PIPESTATUS[0]}
        line=$(strip_ansi <"$logdir/regress-pg$major.log" | grep -E '^regress: [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
        p=$(printf '%s' "$line" | awk '{print $2}'); f=$(printf '%s' "$line" | awk '{print $4}')
        p=${p:-0}; f=${f:-0}; rnote="$prep_note before"
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; rnote="regress runner error (exit $rc); $prep_note before"; fi
        record regress "$p" "$f" "$rnote"
      else
        record regress 0 1 "$note"
      fi
    fi

    if want integration; then
      layer_start
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

  # ---- layer 5: postgres (the major's own and pgaudit's regression suites) -----
  if want postgres; then
    layer_start
    if ensure_installed; then
      ag_log "layer postgres (PostgreSQL $major): scripts/postgres-suite.sh"
      bash "$root/scripts/postgres-suite.sh" 2>&1 9>&- | tee "$logdir/postgres-pg$major.log"
      rc=${PIPESTATUS[0]}
      read -r p f < <(summary_of "$logdir/postgres-pg$major.log" postgres)
      pnote=$(strip_ansi <"$logdir/postgres-pg$major.log" | sed -n 's/^postgres pgaudit: skipped: /pgaudit skipped: /p' | tail -n 1)
      if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; pnote="postgres-suite.sh error (exit $rc)"; fi
      record postgres "$p" "$f" "$pnote"
    else
      record postgres 0 1 "$install_note"
    fi
  fi

  # ---- layer 6: upgrade (released versions, then this tree's build) -------------
  if want upgrade; then
    layer_start
    ag_log "layer upgrade (PostgreSQL $major): scripts/upgrade-test.sh"
    bash "$root/scripts/upgrade-test.sh" 2>&1 9>&- | tee "$logdir/upgrade-pg$major.log"
    rc=${PIPESTATUS[0]}
    read -r p f < <(summary_of "$logdir/upgrade-pg$major.log" upgrade)
    unote=$(strip_ansi <"$logdir/upgrade-pg$major.log" | sed -n 's/^upgrade: skipped: //p' | tail -n 1)
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; unote="upgrade-test.sh error (exit $rc)"; fi
    record upgrade "$p" "$f" "${unote:+skipped: $unote}"
    # it leaves this tree's debug build installed (scripts/install-extension.sh)
  fi

  # ---- layer 7: package (the .deb, installed, against the regress files) ---------
  if want package; then
    layer_start
    ag_log "layer package (PostgreSQL $major): scripts/package-test.sh $major"
    bash "$root/scripts/package-test.sh" "$major" 2>&1 9>&- | tee "$logdir/package-pg$major.log"
    rc=${PIPESTATUS[0]}
    read -r p f < <(summary_of "$logdir/package-pg$major.log" package)
    pknote=""
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; pknote="package-test.sh error (exit $rc)"; fi
    record package "$p" "$f" "$pknote"
  fi
done
unset AG_PG_MAJOR AG_PG_CONFIG

finish
