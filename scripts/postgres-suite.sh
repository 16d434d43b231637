#!/usr/bin/env bash
# PostgreSQL's own regression suite, and pgaudit's, run with agent_guard loaded:
# does loading agent_guard change anything PostgreSQL does for sessions it does
# not govern? (scripts/test.sh layer "postgres".)
#
#   bash scripts/postgres-suite.sh [--pg-config PATH] [--pg-source DIR]
#                                  [--run A|B|C|pgaudit]... [--prepare] [--compare-only]
#
# Runs (Debian's pg_regress from pgxs, --temp-instance, one after the other):
#   A  parallel_schedule, nothing preloaded: the baseline.
#   B  parallel_schedule, shared_preload_libraries = 'agent_guard'; the
#      extension is not created in the regression database.
#   C  as B, plus CREATE EXTENSION agent_guard in the regression database
#      (pg_regress --load-extension) and agent_guard.audit_non_agents = 'all'.
#   pgaudit  pgaudit's own regression test (sql/pgaudit.sql) with
#      shared_preload_libraries 'pgaudit' (the baseline), 'pgaudit,agent_guard'
#      and 'agent_guard,pgaudit'.
# Verdicts:
#   A passes when every test of the schedule produced results/T.out. Its
#      failures against expected/ are printed, not counted: the test files are
#      those of the Debian source package the archive still has, which can be
#      an older minor than the installed binaries.
#   B and C: each test of run A is compared with run A's results/T.out (not
#      with expected/). Identical passes. A test listed for that run in
#      tests/postgres/allowlist-MAJOR.txt passes only if its diff against A
#      leaves every error line alone: no ERROR, WARNING, DETAIL, HINT, CONTEXT,
#      QUERY, "LINE n:" or position-marker line, and no line naming a
#      SQLSTATE, may appear or disappear, except the ERROR/DETAIL/HINT lines
#      the entry itself lists, and then only as many ERROR lines added as
#      removed in each hunk (a message may change; no statement may start or
#      stop failing). Anything else that differs fails.
#   pgaudit: each configuration must reproduce pgaudit's expected/pgaudit.out.
# Counting, in the last line "postgres: N passed, M failed": run A counts 1;
# runs B and C count 1 per test of run A; pgaudit counts 1 per configuration.
# A run that does not start or complete counts as failed (B/C: every test).
#
# Sources: --pg-source DIR (a PostgreSQL source tree, for a server built from
# source; env AG_PGSUITE_PG_SOURCE) or else the Debian source package of the
# package that owns PG_CONFIG's postgres binary (apt-get source --tar-only: the
# installed version if the archive still has it, else the newest it has),
# extracted once into the cache (env AG_PGSUITE_CACHE, default
# /var/tmp/agent_guard/pgsrc). pgaudit likewise, from the source package of the
# package owning PKGLIBDIR/pgaudit.so. apt needs deb-src entries: scripts/setup.sh
# adds them. regress.so, refint.so and autoinc.so (what the suite loads from
# --dlpath) are built with PGXS against PG_CONFIG, once per source and server.
# PG_CONFIG defaults to pgrx.toml [postgres] pg_config; the major version and
# the allow-list (tests/postgres/allowlist-MAJOR.txt) follow from it, so another
# major plugs in by its pg_config path (and --pg-source for a source build).
#
# --prepare: only fetch, extract and build (quiet when done; scripts/setup.sh).
# --compare-only: run no pg_regress; judge the output dirs of the last run
#   again (e.g. after editing the allow-list).
# Before anything runs, the compare checks itself on made-up diffs (a lost
# CONTEXT, a new ERROR, a changed SQLSTATE must be refused).
# --run X (repeatable): only these runs (B or C imply A, their baseline).
# Env: AG_PGSUITE_PORT (default 28830; pg_regress's temp instances listen on
#      a private unix socket only), AG_PGSUITE_WORK (default
#      /var/tmp/agent_guard/pgsuite-MAJOR: per-run output dirs A/ B/ C/
#      pgaudit-*/ with results/, regression.diffs, log/postmaster.log, and
#      B.diffs / C.diffs: each differing test's diff against A),
#      AG_PGSUITE_TIMEOUT (seconds per pg_regress run, default 900),
#      AG_PGSUITE_KEEP=1 (keep the temp instances' data dirs).
#      AG_PGSUITE_ALLOWLIST (default tests/postgres/allowlist-MAJOR.txt).
# Run as root (builds into the cache, runs pg_regress as the postgres OS user).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root=$(ag_root)
pg_config=${AG_PGSUITE_PG_CONFIG:-$(ag_pg_config)}
pg_source=${AG_PGSUITE_PG_SOURCE:-}
cache=${AG_PGSUITE_CACHE:-/var/tmp/agent_guard/pgsrc}
port=${AG_PGSUITE_PORT:-28830}
run_timeout=${AG_PGSUITE_TIMEOUT:-900}
prepare_only=0
compare_only=0
runs=()
while [ $# -gt 0 ]; do
  case $1 in
    --pg-config) [ $# -ge 2 ] || ag_die "--pg-config needs a path"; pg_config=$2; shift ;;
    --pg-source) [ $# -ge 2 ] || ag_die "--pg-source needs a directory"; pg_source=$2; shift ;;
    --run)
      [ $# -ge 2 ] || ag_die "--run needs one of: A B C pgaudit"
      case $2 in A|B|C|pgaudit) runs+=("$2") ;; *) ag_die "unknown run '$2' (one of: A B C pgaudit)" ;; esac
      shift ;;
    --prepare) prepare_only=1 ;;
    --compare-only) compare_only=1 ;;
    -h|--help)  sed -n '2,63p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "postgres-suite.sh: unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ ${#runs[@]} -gt 0 ] || runs=(A B C pgaudit)
want_run() { local r; for r in "${runs[@]}"; do [ "$r" = "$1" ] && return 0; done; return 1; }
if want_run B || want_run C; then want_run A || runs=(A "${runs[@]}"); fi

[ "$(id -u)" = 0 ] || ag_die "postgres-suite.sh runs as root (it runs pg_regress as the postgres OS user)"
[ -x "$pg_config" ] || ag_die "pg_config not found at $pg_config"
version=$("$pg_config" --version) || ag_die "$pg_config --version failed"
major=$(printf '%s\n' "$version" | sed -nE 's/^PostgreSQL ([0-9]+).*/\1/p')
[ -n "$major" ] || ag_die "cannot read the major version from '$version'"
bindir=$("$pg_config" --bindir)
pkglibdir=$("$pg_config" --pkglibdir)
pg_regress="$pkglibdir/pgxs/src/test/regress/pg_regress"
work=${AG_PGSUITE_WORK:-/var/tmp/agent_guard/pgsuite-$major}
allowlist=${AG_PGSUITE_ALLOWLIST:-$root/tests/postgres/allowlist-$major.txt}

# ---- sources ------------------------------------------------------------------

# debian_source_tree FILE MEMBER...: print the directory of the extracted
# upstream tarball of the Debian source package that built the package owning
# FILE (only MEMBERs, tar wildcards, are extracted). Downloads at most once.
debian_source_tree() {
  local file=$1 pkg srcpkg srcver
  shift
  command -v dpkg-query >/dev/null 2>&1 || { echo "no dpkg here: pass --pg-source DIR" >&2; return 1; }
  pkg=$(dpkg -S "$file" 2>/dev/null | awk -F': ' '!/^diversion/ { print $1; exit }')
  [ -n "$pkg" ] || { echo "$file belongs to no Debian package: pass --pg-source DIR" >&2; return 1; }
  read -r srcpkg srcver < <(dpkg-query -W -f='${source:Package} ${source:Version}\n' "$pkg")
  source_package_tree "$srcpkg" "$srcver" "$@"
}

# source_package_tree SRCPKG SRCVER MEMBER...: as debian_source_tree, for a
# named source package: version SRCVER if the archive has it, else the newest
# it has (SRCVER "newest": the newest, chosen once and then reused).
source_package_tree() {
  local srcpkg=$1 srcver=$2 v got="" dl tarball dir
  shift 2
  mkdir -p "$cache" && chmod 755 "$cache"
  # Reuse: the installed version, or the one chosen earlier for it.
  if [ -f "$cache/${srcpkg}_$srcver/.complete" ]; then got=$srcver
  elif [ -f "$cache/${srcpkg}_$srcver.use" ]; then
    v=$(cat "$cache/${srcpkg}_$srcver.use")
    [ -f "$cache/${srcpkg}_$v/.complete" ] && got=$v
  fi
  if [ -z "$got" ]; then
    dl=$(mktemp -d "$cache/download.XXXXXX")
    id _apt >/dev/null 2>&1 && chown _apt "$dl"   # apt downloads as _apt
    # The installed version first, then what the archive has, newest first.
    for v in "$srcver" $(apt-cache showsrc --only-source "$srcpkg" 2>/dev/null \
                           | awk '/^Version:/ { print $2 }' | sort -rV | grep -vxF "$srcver"); do
      rm -f "$dl"/*
      if (cd "$dl" && apt-get source -qq --download-only --tar-only "$srcpkg=$v") >"$dl.log" 2>&1; then
        got=$v; break
      fi
    done
    if [ -z "$got" ]; then
      sed 's/^/  /' "$dl.log" >&2
      rm -rf "$dl" "$dl.log"
      echo "apt-get source $srcpkg failed for every version (no deb-src entries? run scripts/setup.sh)" >&2
      return 1
    fi
    tarball=$(find "$dl" -maxdepth 1 -name "*.orig.tar.*" ! -name '*.asc' | head -n 1)
    dir="$cache/${srcpkg}_$got"
    rm -rf "$dir" && mkdir -p "$dir/tree"
    if [ -z "$tarball" ] || ! tar -xf "$tarball" -C "$dir/tree" --strip-components=1 --no-same-owner \
        --wildcards "$@"; then
      rm -rf "$dl" "$dl.log" "$dir"
      echo "could not extract the upstream tarball of $srcpkg $got" >&2
      return 1
    fi
    chmod -R a+rX "$dir"
    printf '%s\n' "$(basename "$tarball")" >"$dir/.complete"
    rm -rf "$dl" "$dl.log"
    [ "$got" = "$srcver" ] || printf '%s\n' "$got" >"$cache/${srcpkg}_$srcver.use"
  fi
  [ "$got" = "$srcver" ] || [ "$srcver" = newest ] || [ $prepare_only = 1 ] || echo "note: the source of $srcpkg $srcver (installed) could not be downloaded; using the tests of $got (delete $cache/${srcpkg}_$srcver.use to try again)" >&2
  printf '%s\n' "$cache/${srcpkg}_$got/tree"
}

# A server scripts/build-postgres.sh built names its source tree.
source_built=0
if [ -f "$(dirname "$bindir")/.agent_guard-build" ]; then
  source_built=1
  if [ -z "$pg_source" ] && [ -f "$(dirname "$bindir")/.agent_guard-source" ]; then
    pg_source=$(cat "$(dirname "$bindir")/.agent_guard-source")
  fi
fi
if [ -n "$pg_source" ]; then
  [ -f "$pg_source/src/test/regress/parallel_schedule" ] || ag_die "--pg-source $pg_source: no src/test/regress/parallel_schedule"
  pg_tree=$pg_source
else
  pg_tree=$(debian_source_tree "$bindir/postgres" '*/src/test/regress/*' '*/contrib/spi/*') \
    || ag_die "no PostgreSQL sources for $version"
fi
regress_src="$pg_tree/src/test/regress"
pgaudit_tree=""
pgaudit_skip=""
if want_run pgaudit; then
  if [ $source_built = 1 ]; then
    # No Debian postgresql-MAJOR-pgaudit for a server built from source:
    # build pgaudit from Debian's source package pgaudit-MAJOR (pgaudit's
    # release branch for that major) against it and install it there, once.
    if pgaudit_tree=$(source_package_tree "pgaudit-$major" newest '*'); then
      pgaudit_stamp="$pg_config $version $pgaudit_tree"
      if [ "$(cat "$pkglibdir/.pgaudit-built-for" 2>/dev/null)" != "$pgaudit_stamp" ] || [ ! -f "$pkglibdir/pgaudit.so" ]; then
        rm -rf "$work/pgaudit-build" && mkdir -p "$work" && cp -r "$pgaudit_tree" "$work/pgaudit-build"
        if make -s -C "$work/pgaudit-build" USE_PGXS=1 PG_CONFIG="$pg_config" with_llvm=no install \
            >"$work/pgaudit-build.log" 2>&1; then
          printf '%s\n' "$pgaudit_stamp" >"$pkglibdir/.pgaudit-built-for"
        else
          cat "$work/pgaudit-build.log" >&2
          ag_die "building pgaudit-$major against $pg_config failed (log: $work/pgaudit-build.log)"
        fi
      fi
    else
      pgaudit_skip="the package archive serves no source package pgaudit-$major to build pgaudit for this server from"
    fi
  else
    [ -f "$pkglibdir/pgaudit.so" ] || ag_die "pgaudit is not installed for PostgreSQL $major ($pkglibdir/pgaudit.so)"
    pgaudit_tree=$(debian_source_tree "$pkglibdir/pgaudit.so" '*') || ag_die "no pgaudit sources"
  fi
fi

# ---- regress.so, refint.so, autoinc.so (the suite's --dlpath) ------------------
libdir="$work/lib"
lib_stamp="$pg_config $version $pg_tree"
mkdir -p "$work" && chmod 755 "$work"
if [ "$(cat "$libdir/.built-for" 2>/dev/null)" != "$lib_stamp" ]; then
  rm -rf "$libdir" && mkdir -p "$libdir"
  cp "$regress_src/regress.c" "$pg_tree/contrib/spi/refint.c" "$pg_tree/contrib/spi/autoinc.c" "$libdir/"
  printf 'MODULES = regress refint autoinc\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' >"$libdir/Makefile"
  # with_llvm=no: no JIT bitcode; the suite does not need it.
  if ! make -s -C "$libdir" PG_CONFIG="$pg_config" with_llvm=no >"$libdir/build.log" 2>&1; then
    cat "$libdir/build.log" >&2
    ag_die "building regress.so/refint.so/autoinc.so failed (log: $libdir/build.log)"
  fi
  chmod -R a+rX "$libdir"
  printf '%s\n' "$lib_stamp" >"$libdir/.built-for"
fi
[ $prepare_only = 1 ] && exit 0

[ -x "$pg_regress" ] || ag_die "pg_regress not found at $pg_regress (install postgresql-server-dev-$major)"
[ -f "$pkglibdir/agent_guard.so" ] || ag_die "agent_guard is not installed ($pkglibdir/agent_guard.so): run scripts/install-extension.sh"

# ---- running pg_regress ----------------------------------------------------------

# Stop a temp instance pg_regress left behind (it was killed or timed out).
stop_instance() {
  [ -f "$1/postmaster.pid" ] || return 0
  ag_as_postgres "$bindir/pg_ctl" -D "$1" -m immediate -w -t 60 stop >/dev/null 2>&1
}

# pg_regress_run NAME CONF PG_REGRESS_ARGS...: fresh output dir $work/NAME
# (postgres-owned), CONF as --temp-config, pg_regress as postgres; its stdout
# goes to $work/NAME/pg_regress.log. Returns pg_regress's exit status (124:
# timed out).
pg_regress_run() {
  local name=$1 conf=$2 out="$work/$1" rc
  shift 2
  if [ $compare_only = 1 ]; then
    [ -f "$out/pg_regress.log" ] || { echo "--compare-only: no earlier run in $out" >&2; return 2; }
    [ -f "$out/regression.diffs" ] && return 1
    return 0
  fi
  stop_instance "$out/tmp_check/data"
  rm -rf "$out" && mkdir -p "$out" || return 1
  printf '%s\n' "$conf" >"$out/temp.conf"
  chown -R postgres:postgres "$out"
  ag_as_postgres sh -c 'cd "$1" && shift && exec "$@"' sh "$out" \
    timeout "$run_timeout" "$pg_regress" --temp-instance="$out/tmp_check" --bindir="$bindir" \
    --outputdir="$out" --temp-config="$out/temp.conf" --port="$port" \
    --no-locale --encoding=UTF8 "$@" >"$out/pg_regress.log" 2>&1
  rc=$?
  # A timed-out pg_regress leaves its postmaster behind.
  stop_instance "$out/tmp_check/data"
  [ "${AG_PGSUITE_KEEP:-0}" = 1 ] || rm -rf "$out/tmp_check"
  return $rc
}

# Names of the tests a schedule runs, in order.
schedule_tests() { awk '$1 == "test:" { for (i = 2; i <= NF; i++) print $i }' "$1"; }

# Tests pg_regress reported as failed (PG 15: "test NAME ... FAILED",
# "     NAME ... FAILED"; 16+, TAP: "not ok N     - NAME   12 ms", "+" inside a group).
failed_tests() {
  awk '/ \.\.\. FAILED/ || / \.\.\. failed/ { n = ($1 == "test") ? $2 : $1; print n; next }
       $1 == "not" && $2 == "ok" && ($4 == "-" || $4 == "+") { print $5 }' "$1"
}

passed=0
failed=0
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }
joined() { local IFS=' '; echo "$*"; }

common_args=(--inputdir="$regress_src" --dlpath="$libdir" --schedule="$regress_src/parallel_schedule" --max-concurrent-tests=20)
mapfile -t all_tests < <(schedule_tests "$regress_src/parallel_schedule")

# ---- the allow-list ----------------------------------------------------------------
# allowed[RUN/TEST]=why; permit[RUN/TEST]=newline-separated "-LINE"/"+LINE".
declare -A allowed=() permit=()
load_allowlist() {
  local line lineno=0 name runs why r cur=() sign text
  [ -f "$allowlist" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    case $line in ''|'#'*) continue ;; esac
    if [[ $line =~ ^[[:space:]]+([-+])(.*)$ ]]; then
      sign=${BASH_REMATCH[1]}; text=${BASH_REMATCH[2]}
      [ ${#cur[@]} -gt 0 ] || ag_die "$allowlist:$lineno: a permitted line before any entry"
      # Only a message may change: never CONTEXT, a position, a SQLSTATE.
      [[ $text =~ ^(ERROR|DETAIL|HINT):\ \  ]] || ag_die "$allowlist:$lineno: only ERROR/DETAIL/HINT lines may be permitted: $text"
      [[ $text =~ ^ERROR:\ \ [0-9A-Z]{5}: ]] && ag_die "$allowlist:$lineno: a line naming a SQLSTATE cannot be permitted: $text"
      [[ $text == *SQLSTATE* ]] && ag_die "$allowlist:$lineno: a line naming a SQLSTATE cannot be permitted: $text"
      for r in "${cur[@]}"; do permit[$r]+="$sign$text"$'\n'; done
      continue
    fi
    [[ $line =~ ^([a-z0-9_]+)[[:space:]]+([ABC](,[ABC])*):[[:space:]]*(.+)$ ]] \
      || ag_die "$allowlist:$lineno: expected 'TEST RUN[,RUN]: why', got: $line"
    name=${BASH_REMATCH[1]}; runs=${BASH_REMATCH[2]}; why=${BASH_REMATCH[4]}
    [ "${runs/A/}" = "$runs" ] || ag_die "$allowlist:$lineno: run A is the baseline; nothing is allowed there"
    cur=()
    for r in ${runs//,/ }; do allowed[$r/$name]=$why; cur+=("$r/$name"); done
  done <"$allowlist"
}
load_allowlist

# check_allowed_diff DIFF_FILE PERMITTED: succeed if the diff (`diff A B`
# format) touches no error line except the permitted ones and each hunk adds
# as many ERROR lines as it removes; else print the offending lines.
check_allowed_diff() {
  awk -v permitted="$2" '
    BEGIN {
      n = split(permitted, p, "\n")
      for (i = 1; i <= n; i++) if (p[i] != "") ok[p[i]] = 1
      protected = "^(ERROR|WARNING|DETAIL|HINT|CONTEXT|QUERY|LINE [0-9]+):|^[[:space:]]*\\^[[:space:]]*$|SQLSTATE"
    }
    function close_hunk() {
      if (hunk != "" && err_minus != err_plus) {
        bad = bad "  hunk " hunk ": " err_minus " ERROR line(s) removed, " err_plus " added (a statement starts or stops failing)\n"
      }
      err_minus = 0; err_plus = 0
    }
    /^[0-9]+(,[0-9]+)?[acd][0-9]+(,[0-9]+)?$/ { close_hunk(); hunk = $0; next }
    /^---$/ { next }
    /^[<>] / {
      sign = (substr($0, 1, 1) == "<") ? "-" : "+"
      text = substr($0, 3)
      if (text ~ /^ERROR:/) { if (sign == "-") err_minus++; else err_plus++ }
      if (text ~ protected && !((sign text) in ok)) bad = bad "  " sign text "\n"
    }
    END { close_hunk(); if (bad != "") { printf "%s", bad; exit 1 } }
  ' "$1"
}

# The compare refuses what it must: made-up `diff A B` outputs.
self_test() {
  local f ok=1 permitted
  f=$(mktemp)
  permitted=$'-ERROR:  old message\n+ERROR:  new message\n'
  expect() { # expect pass|fail DESCRIPTION DIFF
    printf '%s\n' "$3" >"$f"
    if check_allowed_diff "$f" "$permitted" >/dev/null; then got=pass; else got=fail; fi
    [ "$got" = "$1" ] || { echo "compare self-test: '$2' should $1, did $got" >&2; ok=0; }
  }
  expect pass "rows change"            $'3c3\n<  1\n---\n>  2'
  expect pass "listed message change"  $'5c5\n< ERROR:  old message\n---\n> ERROR:  new message'
  expect fail "lost CONTEXT"           $'6d5\n< CONTEXT:  SQL function "f" statement 1'
  expect fail "added CONTEXT"          $'6a7\n> CONTEXT:  PL/pgSQL function g() line 3 at SQL statement'
  expect fail "lost position"          $'6,7d5\n< LINE 1: select x from t;\n<                ^'
  expect fail "changed SQLSTATE"       $'5c5\n< ERROR:  22012: division by zero\n---\n> ERROR:  XX000: division by zero'
  expect fail "new failing statement"  $'5a6\n> ERROR:  new message'
  expect fail "statement stops failing" $'5c5\n< ERROR:  old message\n---\n>  1'
  expect fail "unlisted message"       $'5c5\n< ERROR:  old message\n---\n> ERROR:  other message'
  expect fail "new WARNING"            $'9a10\n> WARNING:  column t.salary looks like a salary'
  expect fail "lost DETAIL"            $'9d8\n< DETAIL:  Key (a)=(1) already exists.'
  rm -f "$f"
  [ $ok = 1 ]
}
self_test || ag_die "the compare's self-test failed; fix scripts/postgres-suite.sh"

# server_log_problems LOG: print (and succeed on) lines of a postmaster log
# that show a crash or a failing agent_guard background worker.
server_log_problems() {
  [ -f "$1" ] || { echo "no server log $1"; return 0; }
  grep -E 'terminated by signal|PANIC:|agent_guard audit writer\[[0-9]+\] (ERROR|FATAL)|background worker "agent_guard audit writer[^"]*" \(PID [0-9]+\) exited with exit code [1-9]|agent_guard: .*(dropped|could not)' "$1"
}

# ---- run A -----------------------------------------------------------------------
a_ok=0
run_a() {
  local t0 rc missing=() t fails
  t0=$(date +%s)
  pg_regress_run A "# run A: nothing preloaded" "${common_args[@]}"
  rc=$?
  for t in "${all_tests[@]}"; do [ -f "$work/A/results/$t.out" ] || missing+=("$t"); done
  mapfile -t fails < <(failed_tests "$work/A/pg_regress.log")
  if [ $rc -eq 124 ]; then
    echo "postgres A (no preload): timed out after $run_timeout s; see $work/A/"
    failed=$((failed + 1)); return
  fi
  if [ ${#missing[@]} -gt 0 ] || [ ${#all_tests[@]} -eq 0 ]; then
    echo "postgres A (no preload): incomplete, no results for ${#missing[@]} of ${#all_tests[@]} tests ($(joined "${missing[@]:0:10}")...); see $work/A/pg_regress.log"
    tail -n 20 "$work/A/pg_regress.log" | sed 's/^/  /'
    failed=$((failed + 1)); return
  fi
  echo "postgres A (no preload): ${#all_tests[@]} tests, ${#fails[@]} failed vs expected${fails:+ ($(joined "${fails[@]}"))} [$(elapsed "$t0")]"
  passed=$((passed + 1)); a_ok=1
}

# ---- runs B and C ---------------------------------------------------------------
run_bc() {
  local run=$1 label=$2 conf=$3 t0 rc t d same=0 listed=() differ=() unused=() why
  shift 3
  t0=$(date +%s)
  pg_regress_run "$run" "$conf" "${common_args[@]}" "$@"
  rc=$?
  : >"$work/$run.diffs"
  if [ $a_ok != 1 ]; then
    echo "postgres $run ($label): not compared, run A has no complete baseline"
    failed=$((failed + ${#all_tests[@]})); return
  fi
  [ $rc -eq 124 ] && echo "postgres $run ($label): pg_regress timed out after $run_timeout s"
  for t in "${all_tests[@]}"; do
    if [ -f "$work/$run/results/$t.out" ] && cmp -s "$work/A/results/$t.out" "$work/$run/results/$t.out"; then
      same=$((same + 1))
      [ -n "${allowed[$run/$t]:-}" ] && unused+=("$t")
      continue
    fi
    if [ ! -f "$work/$run/results/$t.out" ]; then
      differ+=("$t(no output)")
      echo "=== $t: no results/$t.out in run $run" >>"$work/$run.diffs"
      continue
    fi
    d="$work/$run/$t.vs-A.diff"
    diff "$work/A/results/$t.out" "$work/$run/results/$t.out" >"$d"
    { echo "=== $t (< run A, > run $run)"; cat "$d"; } >>"$work/$run.diffs"
    why=${allowed[$run/$t]:-}
    if [ -n "$why" ]; then
      if bad=$(check_allowed_diff "$d" "${permit[$run/$t]:-}"); then
        listed+=("$t")
      else
        differ+=("$t(allow-listed, but error lines change)")
        echo "postgres $run: $t is allow-listed, but its diff against A changes error lines:"
        printf '%s\n' "$bad" | head -n 20
      fi
    else
      differ+=("$t")
    fi
  done
  # The server itself: no crash, and agent_guard's audit writer neither
  # failed nor dropped or lost a record (humans are never blocked by it, so
  # the outputs alone would not show it).
  if bad=$(server_log_problems "$work/$run/log/postmaster.log"); then
    differ+=("server-log")
    echo "postgres $run: the server log shows problems ($work/$run/log/postmaster.log):"
    printf '%s\n' "$bad" | head -n 10 | sed 's/^/  /'
  fi
  passed=$((passed + same + ${#listed[@]}))
  failed=$((failed + ${#differ[@]}))
  echo "postgres $run ($label): ${#all_tests[@]} tests, $same identical to A, ${#listed[@]} allow-listed${listed:+ ($(joined "${listed[@]}"))}, ${#differ[@]} differ${differ:+ ($(joined "${differ[@]}"))} [$(elapsed "$t0")]"
  [ ${#differ[@]} -eq 0 ] || echo "  diffs against run A: $work/$run.diffs"
  [ ${#unused[@]} -eq 0 ] || echo "  note: allow-listed for $run but identical to A: $(joined "${unused[@]}")"
}

# ---- pgaudit ----------------------------------------------------------------------
run_pgaudit() {
  local preload name t0 rc base_ok=1
  for preload in pgaudit pgaudit,agent_guard agent_guard,pgaudit; do
    name="pgaudit-${preload//,/-}"
    t0=$(date +%s)
    pg_regress_run "$name" "shared_preload_libraries = '$preload'" \
      --inputdir="$pgaudit_tree" pgaudit
    rc=$?
    if [ $rc -eq 0 ]; then
      passed=$((passed + 1))
      echo "postgres pgaudit ('$preload'): matches pgaudit's expected output [$(elapsed "$t0")]"
    else
      failed=$((failed + 1))
      if [ "$preload" = pgaudit ]; then base_ok=0; fi
      if [ -s "$work/$name/regression.diffs" ]; then
        echo "postgres pgaudit ('$preload'): FAILED, differs from pgaudit's expected output$( [ $base_ok = 1 ] || echo ' (so does the baseline without agent_guard)'): $work/$name/regression.diffs [$(elapsed "$t0")]"
      else
        echo "postgres pgaudit ('$preload'): FAILED to run (exit $rc): $work/$name/pg_regress.log"
        tail -n 10 "$work/$name/pg_regress.log" | sed 's/^/  /'
      fi
    fi
  done
}

ag_log "postgres layer: $version, tests from $pg_tree, output in $work"
want_run A && run_a
want_run B && run_bc B "preload agent_guard, no extension" \
  "shared_preload_libraries = 'agent_guard'"
want_run C && run_bc C "preload + CREATE EXTENSION + audit all" \
  "$(printf "shared_preload_libraries = 'agent_guard'\nagent_guard.audit_non_agents = 'all'")" \
  --load-extension=agent_guard
if want_run pgaudit; then
  if [ -n "$pgaudit_skip" ]; then echo "postgres pgaudit: skipped: $pgaudit_skip"; else run_pgaudit; fi
fi

echo "postgres: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
