#!/usr/bin/env bash
# pg_regress-style tests of agent_guard against the RUNNING test cluster
# (scripts/test.sh starts it; or: source scripts/lib.sh and ag_cluster_start).
#
#   tests/regress/sql/NAME.sql        the script (runs through psql -a -q;
#                                     starts with CREATE EXTENSION agent_guard;
#                                     may switch roles with \c - rolename)
#   tests/regress/expected/NAME.out   the expected output
#   tests/regress/results/NAME.out    the actual output of the last run (gitignored)
#
# Every NAME runs in sorted order, each in a fresh database agent_guard_regress
# (dropped and recreated before each file), with Debian's real pg_regress
# (--use-existing). Roles are cluster-wide: name the roles a test creates
# regress_<something>; the runner drops every role named regress_% before each
# file, so tests do not see each other's roles.
#
# usage: scripts/regress.sh [NAME...]            run all tests, or only NAMEs
#        scripts/regress.sh --accept NAME...     copy results/NAME.out over
#                                                expected/NAME.out (no run)
#        AG_REGRESS_ACCEPT=1 scripts/regress.sh  run, then accept every result
# env:   AG_TEST_PORT (default pgrx.toml [test_cluster] port),
#        AG_PG_CONFIG (the server's pg_config: its pg_regress and psql; default
#        pgrx.toml [postgres] pg_config)
# Prints one line per test and ends with "regress: N passed, M failed";
# exits 1 if any test failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root=$(ag_root)
dir="$root/tests/regress"
accept=0
names=()
while [ $# -gt 0 ]; do
  case $1 in
    --accept) accept=1 ;;
    -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) ag_die "regress.sh: unknown option $1" ;;
    *) names+=("${1%.sql}") ;;
  esac
  shift
done

if [ $accept = 1 ]; then
  [ ${#names[@]} -gt 0 ] || ag_die "regress.sh --accept needs test NAMEs"
  for n in "${names[@]}"; do
    [ -f "$dir/results/$n.out" ] || ag_die "no $dir/results/$n.out (run the test first)"
    cp "$dir/results/$n.out" "$dir/expected/$n.out"
    echo "accepted tests/regress/expected/$n.out"
  done
  exit 0
fi

if [ ${#names[@]} -eq 0 ]; then
  while IFS= read -r f; do names+=("$(basename "$f" .sql)"); done \
    < <(find "$dir/sql" -maxdepth 1 -name '*.sql' | LC_ALL=C sort)
fi
[ ${#names[@]} -gt 0 ] || ag_die "no tests in $dir/sql"

pg_config=$(ag_pg_config)
pg_regress="$("$pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress"
[ -x "$pg_regress" ] || ag_die "pg_regress not found at $pg_regress (install postgresql-server-dev-$(ag_pg_major), or run scripts/setup.sh)"
bindir=$(ag_bindir)
port=$(ag_cluster_port test)
db=agent_guard_regress

"$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
  || ag_die "no test cluster on 127.0.0.1:$port (scripts/test.sh --layer regress starts one)"

mkdir -p "$dir/results"
passed=0
failed=0
failed_names=()
for n in "${names[@]}"; do
  if [ ! -f "$dir/sql/$n.sql" ]; then
    echo "test $n ... FAILED (no tests/regress/sql/$n.sql)"
    failed=$((failed + 1)); failed_names+=("$n"); continue
  fi
  if [ ! -f "$dir/expected/$n.out" ]; then
    # pg_regress needs an expected file; an empty one makes the first run
    # fail with the whole output as the diff, ready for --accept.
    : >"$dir/expected/$n.out"
    echo "note: created empty tests/regress/expected/$n.out"
  fi
  # Fresh database; drop leftover regress_% roles from earlier files.
  if ! ag_psql "$port" -d postgres -v ON_ERROR_STOP=1 -q >"$dir/results/$n.setup.log" 2>&1 <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS $db WITH (FORCE);
DO \$\$
DECLARE r text;
BEGIN
  FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'regress\_%' LOOP
    BEGIN
      EXECUTE format('DROP OWNED BY %I CASCADE', r);
      EXECUTE format('DROP ROLE %I', r);
    EXCEPTION WHEN others THEN
      RAISE WARNING 'could not drop role %: %', r, SQLERRM;
    END;
  END LOOP;
END
\$\$;
CREATE DATABASE $db TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C';
SQL
  then
    echo "test $n ... FAILED (could not recreate database $db)"
    cat "$dir/results/$n.setup.log"
    failed=$((failed + 1)); failed_names+=("$n"); continue
  fi
  rm -f "$dir/results/$n.setup.log"

  set +e
  out=$("$pg_regress" --use-existing --bindir="$bindir" \
    --host=127.0.0.1 --port="$port" --user=postgres \
    --inputdir="$dir" --outputdir="$dir" --dbname="$db" "$n" 2>&1)
  rc=$?
  set -e
  # pg_regress up to 15: "test NAME ... ok"; from 16 on (TAP): "ok 1 - NAME  12 ms".
  line=$(printf '%s\n' "$out" | grep -E "^(test )?[[:space:]]*$n[[:space:]]+\.\.\.|^(not )?ok [0-9]+[[:space:]]+- $n([[:space:]]|\$)" | head -n 1 || true)
  if [ $rc = 0 ] && printf '%s' "$line" | grep -Eq '\.\.\.[[:space:]]+ok|^ok [0-9]'; then
    printf '%s\n' "$line"
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); failed_names+=("$n")
    if [ -n "$line" ]; then printf '%s\n' "$line"; else echo "test $n ... FAILED (pg_regress exit $rc)"; printf '%s\n' "$out"; fi
    if [ -s "$dir/regression.diffs" ]; then
      echo "----- diff for $n (expected vs results) -----"
      cat "$dir/regression.diffs"
      echo "----- end of diff for $n; accept with: bash scripts/regress.sh --accept $n -----"
    fi
  fi
done

if [ "${AG_REGRESS_ACCEPT:-0}" = 1 ]; then
  for n in "${failed_names[@]}"; do
    if [ -f "$dir/results/$n.out" ]; then
      cp "$dir/results/$n.out" "$dir/expected/$n.out"
      echo "accepted tests/regress/expected/$n.out"
    fi
  done
fi

echo "regress: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
