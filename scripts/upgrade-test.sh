#!/usr/bin/env bash
# In-place upgrade from every released version to this tree's version
# (scripts/test.sh layer "upgrade").
#
#   bash scripts/upgrade-test.sh [FROM_VERSION...]
#       (default: every version in releases.txt released for this major)
#
# The server: env AG_PG_CONFIG (scripts/test.sh --pg), else pgrx.toml's
# packaged one. releases.txt says which majors each release supports; when
# none supports this major, nothing runs and the output says
# "upgrade: skipped: ..." before "upgrade: 0 passed, 0 failed".
#
# For each released version: build it from its commit (scripts/release-build.sh,
# cached per machine) and install its library and install script; start a
# cluster of its own (pgrx.toml [upgrade_cluster]) with it preloaded; create
# the extension at that version and use it the way a deployment does
# (registrations, a labelled column with its masking view, a request, an
# approval and a granted write, refused statements, audit rows). Then stop,
# install this tree's build (scripts/install-extension.sh: library, install
# script, every sql/agent_guard--A--B.sql), start, ALTER EXTENSION agent_guard
# UPDATE, and check that everything still works: the agent is still an agent,
# masked, refused and audited; the grant still covers its write; the audit
# chain verifies across the upgrade, with new rows appended to it (the old
# rows keep their hashes and the formula they were written with, their
# session context moved to agent_guard.audit_sessions and still covered); and the
# upgraded extension's objects are exactly those of a fresh install of this
# version (functions with their definitions, settings and privileges,
# tables, columns, indexes, views, triggers, event triggers).
# Leaves this tree's build installed. Last line: "upgrade: N passed, M failed".
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

root=$(ag_root)
pg_config=$(ag_pg_config)
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
bindir=$("$pg_config" --bindir)
pkglibdir=$("$pg_config" --pkglibdir)
sharedir=$("$pg_config" --sharedir)
port=$(ag_cluster_port upgrade)
datadir=$(ag_cluster_datadir upgrade)
new_version=$(awk -F'"' '/^version *=/ { print $2; exit }' "$root/Cargo.toml")

if [ $# -gt 0 ]; then versions=("$@"); else
  mapfile -t versions < <(awk -v m="$major" '!/^#/ && NF >= 3 && ("," $3 ",") ~ ("," m ",") { print $1 }' "$root/releases.txt")
  if [ ${#versions[@]} -eq 0 ]; then
    echo "upgrade: skipped: no released version supports PostgreSQL $major (releases.txt); nothing to upgrade from"
    echo "upgrade: 0 passed, 0 failed"
    exit 0
  fi
fi

passed=0
failed=0
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then
    passed=$((passed + 1)); echo "ok      $1"
  else
    failed=$((failed + 1)); echo "FAILED  $1"; echo "  expected: $2"; echo "  actual:   $3"
  fi
}
q() { # q ROLE DB SQL: one value, errors as "ERROR: <sqlstate>"
  local out rc
  out=$(ag_as_postgres "$bindir/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U "$1" -d "$2" -c "\\set VERBOSITY sqlstate" -c "$3" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then printf 'ERROR: %s' "$(printf '%s' "$out" | grep -Eo '^(psql:[^:]*:[0-9]+: )?ERROR: +[0-9A-Z]{5}' | grep -Eo '[0-9A-Z]{5}$' | head -n 1)"
  else printf '%s' "$out"; fi
}
sql() { ag_as_postgres "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$1" >/dev/null; }
start() { ag_cluster_start "$datadir" "$port" "shared_preload_libraries = 'agent_guard'" "fsync = off" >/dev/null; }
wait_rows() { # wait_rows DB N: until the audit trail holds at least N rows (10 s)
  local i
  for i in $(seq 1 100); do
    [ "$(q postgres "$1" "SELECT count(*) >= $2 FROM agent_guard.audit_log")" = t ] && return 0
    sleep 0.1
  done
}

# Every object of the extension, with what defines it, in one canonical text.
describe_extension() {
  q postgres "$1" "
    WITH members AS (
      SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
      WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
        AND d.deptype = 'e' AND e.extname = 'agent_guard')
    SELECT pg_catalog.string_agg(line, E'\n' ORDER BY line) FROM (
      SELECT pg_catalog.pg_describe_object(classid, objid, 0) AS line FROM members
      UNION ALL
      SELECT 'function ' || p.oid::pg_catalog.regprocedure || ' ' || pg_catalog.md5(pg_catalog.pg_get_functiondef(p.oid))
             || ' acl ' || COALESCE(p.proacl::text, '-')
      FROM members m JOIN pg_catalog.pg_proc p ON p.oid = m.objid
      WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.prokind <> 'a'
      UNION ALL
      SELECT 'relation ' || c.oid::pg_catalog.regclass || ' ' || c.relkind::text || ' acl ' || COALESCE(c.relacl::text, '-')
             || COALESCE(' view ' || pg_catalog.md5(pg_catalog.pg_get_viewdef(c.oid)), '')
      FROM members m JOIN pg_catalog.pg_class c ON c.oid = m.objid
      WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      UNION ALL
      SELECT 'column ' || c.oid::pg_catalog.regclass || '.' || a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
             || COALESCE(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
      FROM members m JOIN pg_catalog.pg_class c ON c.oid = m.objid
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
      WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.relkind IN ('r', 'v', 'p')
      UNION ALL
      SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM members m JOIN pg_catalog.pg_index i ON i.indrelid = m.objid
      WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      UNION ALL
      SELECT 'constraint ' || co.conrelid::pg_catalog.regclass || ' ' || pg_catalog.pg_get_constraintdef(co.oid)
      FROM members m JOIN pg_catalog.pg_constraint co ON co.conrelid = m.objid
      WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      UNION ALL
      SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(t.oid)
      FROM members m JOIN pg_catalog.pg_trigger t ON t.tgrelid = m.objid
      WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND NOT t.tgisinternal
      UNION ALL
      SELECT 'event trigger ' || t.evtname || ' ' || t.evtevent || ' ' || t.evtfoid::pg_catalog.regproc
             || ' ' || COALESCE(t.evttags::text, '-') || ' ' || t.evtenabled::text
      FROM members m JOIN pg_catalog.pg_event_trigger t ON t.oid = m.objid
      WHERE m.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass
      UNION ALL
      SELECT 'comment ' || pg_catalog.pg_describe_object(m.classid, m.objid, 0) || ' ' || pg_catalog.md5(ds.description)
      FROM members m JOIN pg_catalog.pg_description ds ON ds.classoid = m.classid AND ds.objoid = m.objid AND ds.objsubid = 0
      UNION ALL
      SELECT 'config ' || c.oid::pg_catalog.regclass || ' ' || COALESCE(cfg.cond, '')
      FROM pg_catalog.pg_extension e,
           LATERAL ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition)) AS cfg(rel, cond)
      JOIN pg_catalog.pg_class c ON c.oid = cfg.rel
      WHERE e.extname = 'agent_guard'
    ) x"
}

install_release() { # library, control file and install script of a built release
  local pkg=$1 version=$2
  ag_detach_installed_lib || true
  install -m 755 "$pkg/usr/lib/postgresql/$major/lib/agent_guard.so" "$pkglibdir/agent_guard.so.new" \
    && mv -f "$pkglibdir/agent_guard.so.new" "$pkglibdir/agent_guard.so" || return 1
  install -m 644 "$pkg/usr/share/postgresql/$major/extension/agent_guard.control" "$sharedir/extension/agent_guard.control" || return 1
  install -m 644 "$pkg/usr/share/postgresql/$major/extension/agent_guard--$version.sql" "$sharedir/extension/" || return 1
}

for from in "${versions[@]}"; do
  echo "== upgrade $from -> $new_version"
  if ! pkg=$(bash "$root/scripts/release-build.sh" "$from" "$pg_config"); then
    check "release $from builds" ok failed; continue
  fi
  ag_cluster_stop "$datadir" immediate >/dev/null 2>&1; rm -rf "$datadir"
  if ! install_release "$pkg" "$from" || ! start; then
    check "release $from installs and starts" ok failed; continue
  fi
  sql postgres <<'SQL'
CREATE DATABASE up_old;
CREATE DATABASE up_fresh;
CREATE ROLE up_sponsor LOGIN;
CREATE ROLE up_approver LOGIN;
CREATE ROLE up_bot LOGIN;
SQL
  sql up_old <<SQL
CREATE EXTENSION agent_guard VERSION '$from';
GRANT agent_guard_approver TO up_approver;
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text);
INSERT INTO customers VALUES (1, 'Ada', '219-09-9999'), (2, 'Bo', '457-55-5462');
GRANT SELECT, UPDATE ON customers TO up_bot;
SECURITY LABEL FOR agent_guard ON COLUMN customers.ssn IS 'MASKED WITH FUNCTION agent_guard.partial(ssn, 0, ''***-**-'', 4)';
SELECT agent_guard.register_agent('up_bot', 'up_sponsor', note => 'upgrade test');
SQL
  check "$from: extension version" "$from" "$(q postgres up_old "SELECT extversion FROM pg_extension WHERE extname = 'agent_guard'")"
  check "$from: agent reads masked" "***-**-9999" "$(q up_bot up_old "SELECT ssn FROM customers WHERE id = 1")"
  check "$from: agent write refused" "ERROR: 42501" "$(q up_bot up_old "UPDATE customers SET name = 'x' WHERE id = 2")"
  req=$(q up_bot up_old "SELECT agent_guard.request_access('write', ARRAY['customers'::regclass], 'upgrade test', '2 hours')")
  q up_approver up_old "SELECT agent_guard.approve($req)" >/dev/null
  check "$from: granted write" "UPDATE 1" "$(q up_bot up_old "UPDATE customers SET name = 'Ada L' WHERE id = 1")"
  wait_rows up_old 4
  old_rows=$(q postgres up_old "SELECT count(*) FROM agent_guard.audit_log")
  check "$from: trail intact before the upgrade" "t" "$(q postgres up_old "SELECT intact FROM agent_guard.verify_audit()")"

  # ---- the upgrade: new package, restart, ALTER EXTENSION UPDATE ----
  ag_cluster_stop "$datadir" fast >/dev/null
  if ! bash "$root/scripts/install-extension.sh" >/dev/null 2>&1 || ! start; then
    check "$new_version installs and starts over $from" ok failed; continue
  fi
  check "ALTER EXTENSION agent_guard UPDATE" "ALTER EXTENSION" "$(q postgres up_old "ALTER EXTENSION agent_guard UPDATE")"
  check "upgraded version" "$new_version" "$(q postgres up_old "SELECT extversion FROM pg_extension WHERE extname = 'agent_guard'")"
  check "upgraded: agent still registered" "up_bot" "$(q postgres up_old "SELECT agent FROM agent_guard.agents")"
  check "upgraded: agent reads masked" "***-**-9999" "$(q up_bot up_old "SELECT ssn FROM customers WHERE id = 1")"
  check "upgraded: the grant still covers its write" "UPDATE 1" "$(q up_bot up_old "UPDATE customers SET name = 'Ada' WHERE id = 1")"
  check "upgraded: writes outside the grant refused" "ERROR: 42501" "$(q up_bot up_old "DELETE FROM customers")"
  check "upgraded: the grant is listed" "1" "$(q postgres up_old "SELECT count(*) FROM agent_guard.active_grants")"
  wait_rows up_old $((old_rows + 3))
  check "upgraded: new statements appended to the trail" "t" \
    "$(q postgres up_old "SELECT count(*) >= $old_rows + 3 FROM agent_guard.audit_log")"
  check "upgraded: trail intact across the upgrade" "t" "$(q postgres up_old "SELECT intact FROM agent_guard.verify_audit()")"
  # 0.2.0's row layout (session context once per session, hashes as bytea):
  # the rows written under the old release keep their hashes and verify with
  # the formula they were written with (ids up to audit_layout.v1_last_id)
  check "upgraded: the 0.1.0 rows are marked for their formula" "t" \
    "$(q postgres up_old "SELECT count(*) >= $old_rows FROM agent_guard.audit_log WHERE id <= (SELECT v1_last_id FROM agent_guard.audit_layout)")"
  check "upgraded: new rows use 0.2.0's formula" "t" \
    "$(q postgres up_old "SELECT count(*) >= 3 FROM agent_guard.audit_log WHERE id > (SELECT v1_last_id FROM agent_guard.audit_layout)")"
  check "upgraded: the 0.1.0 rows keep their session context" "up_bot|up_sponsor" \
    "$(q postgres up_old "SELECT DISTINCT agent || '|' || sponsor FROM agent_guard.audit_trail WHERE agent = 'up_bot' AND id <= (SELECT v1_last_id FROM agent_guard.audit_layout)")"
  # (in a transaction left open: rolled back when psql leaves)
  check "upgraded: a rewritten 0.1.0 session row is exposed" "f" \
    "$(q postgres up_old "BEGIN; ALTER TABLE agent_guard.audit_sessions DISABLE TRIGGER audit_sessions_append_only; UPDATE agent_guard.audit_sessions SET sponsor = 'someone_else' WHERE id = (SELECT min(id) FROM agent_guard.audit_sessions WHERE sponsor = 'up_sponsor'); SELECT intact FROM agent_guard.verify_audit()" | tail -n 1)"
  # retention (issue 14.6b): the 0.1.0 table (with its rows) is audit_log's first partition
  check "upgraded: the 0.1.0 table is audit_log's first partition" "audit_log_0_1_0|true" \
    "$(q postgres up_old "SELECT (SELECT relname FROM agent_guard._audit_partitions() ORDER BY lo NULLS FIRST LIMIT 1) || '|' || (count(*) >= $old_rows) FROM agent_guard.audit_log_0_1_0")"
  check "upgraded: real data kept" "Ada|219-09-9999" "$(q postgres up_old "SELECT name || '|' || ssn FROM customers WHERE id = 1")"
  sql up_fresh <<<"CREATE EXTENSION agent_guard;"
  fresh=$(describe_extension up_fresh)
  upgraded=$(describe_extension up_old)
  if [ -z "$fresh" ] || [[ $fresh == ERROR* ]] || [[ $upgraded == ERROR* ]]; then
    check "describe the extension's objects" "a description" "${fresh:-nothing} / $upgraded"
  elif [ "$fresh" = "$upgraded" ]; then check "upgraded objects equal a fresh $new_version install" same same
  else
    check "upgraded objects equal a fresh $new_version install" same different
    diff <(printf '%s\n' "$fresh") <(printf '%s\n' "$upgraded") | sed 's/^/  /' | head -n 40
  fi
  ag_cluster_stop "$datadir" fast >/dev/null
done
echo "upgrade: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
