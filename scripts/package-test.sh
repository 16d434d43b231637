#!/usr/bin/env bash
# The "package" test layer: install the package a DBA gets and run the
# regress layer against that install, not against the build tree.
#
#   bash scripts/package-test.sh MAJOR [DEB]
#
# 1. DEB (default: built now by scripts/package.sh --pg MAJOR).
# 2. The dev-installed files (agent_guard.so, agent_guard.control,
#    agent_guard--*.sql in the server's pkglibdir and extension dir) are
#    removed first, so nothing of the build tree can be loaded.
# 3. Install:
#    - the packaged major (Debian's postgresql-MAJOR installed, its pkglibdir
#      is /usr/lib/postgresql/MAJOR/lib): `dpkg -i DEB`; dpkg must then own
#      the library and extension files (dpkg -S);
#    - a major built from source (no Debian postgresql-MAJOR here): the
#      package's files are copied from its data archive (dpkg-deb -x) into
#      that server's pkglibdir and extension dir; dpkg's dependency check and
#      paths are not exercised for it.
#    Either way the installed library must be byte-identical to the package's.
# 4. A fresh test cluster (the regress layer's: scripts/lib.sh
#    ag_cluster_datadir test) with shared_preload_libraries = 'agent_guard';
#    its postmaster must have mapped the packaged library (same inode, from
#    /proc/PID/maps); then scripts/regress.sh runs every regress file.
# 5. Clean-up (also on failure or interruption): the cluster is stopped, the
#    package removed (dpkg --purge) or the copied files deleted, and the
#    dev-installed files saved in step 2 are put back as they were, so the
#    server is left with the build it had before.
# Last line: "package: N passed, M failed" (N, M: the regress files; a
# failed step before regress counts as 1 failed). Run as root, under
# scripts/test.sh's lock (it shares the test cluster's port).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

major=${1:-}
[[ $major =~ ^[0-9]+$ ]] || ag_die "usage: package-test.sh MAJOR [DEB]"
deb=${2:-}
root=$(ag_root)
ag_use_major "$major"
pg_config=$AG_PG_CONFIG
[ -x "$pg_config" ] || ag_die "PostgreSQL $major is not installed here ($pg_config)"
pkglibdir=$("$pg_config" --pkglibdir)
extdir="$("$pg_config" --sharedir)/extension"
name="postgresql-$major-agent-guard"
datadir=$(ag_cluster_datadir test)
port=$(ag_cluster_port test)
mode=""
stage=""
saved=""

fail() {
  echo "package: $*" >&2
  cleanup
  echo "package: 0 passed, 1 failed"
  exit 1
}

cleanup() {
  ag_cluster_stop "$datadir" fast >/dev/null 2>&1 || true
  case $mode in
    dpkg) dpkg --purge "$name" >/dev/null 2>&1 || true ;;
    copy) rm -f "$pkglibdir/agent_guard.so" "$extdir"/agent_guard.control "$extdir"/agent_guard--*.sql ;;
  esac
  [ -n "$stage" ] && rm -rf "$stage"
  stage=""
  mode=""
  restore_dev
}

# The dev-installed files, saved before they are removed, put back at the end.
restore_dev() {
  [ -n "$saved" ] || return 0
  rm -f "$pkglibdir/agent_guard.so" "$extdir"/agent_guard.control "$extdir"/agent_guard--*.sql
  [ -f "$saved/agent_guard.so" ] && install -m 755 "$saved/agent_guard.so" "$pkglibdir/agent_guard.so"
  for f in "$saved"/ext/*; do [ -f "$f" ] && install -m 644 "$f" "$extdir/"; done
  rm -rf "$saved"
  saved=""
  ag_log "dev-installed agent_guard files restored into $pkglibdir and $extdir"
}
trap 'cleanup' EXIT

# ---- 1. the package ------------------------------------------------------------
if [ -z "$deb" ]; then
  deb=$(bash "$root/scripts/package.sh" --pg "$major" | tail -n 1) || fail "scripts/package.sh --pg $major failed"
fi
[ -f "$deb" ] || fail "no package at '$deb'"
ag_log "package $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\):/  \1:/p'

# ---- 2. remove the dev-installed files ---------------------------------------------
ag_cluster_stop "$datadir" immediate >/dev/null 2>&1 || true
rm -rf "$datadir"
saved=$(mktemp -d /tmp/agent_guard-dev-install.XXXXXX)
mkdir -p "$saved/ext"
[ -f "$pkglibdir/agent_guard.so" ] && cp -p "$pkglibdir/agent_guard.so" "$saved/"
for f in "$extdir"/agent_guard.control "$extdir"/agent_guard--*.sql; do [ -f "$f" ] && cp -p "$f" "$saved/ext/"; done
rm -f "$pkglibdir/agent_guard.so" "$extdir"/agent_guard.control "$extdir"/agent_guard--*.sql

# ---- 3. install ------------------------------------------------------------------------
stage=$(mktemp -d /tmp/agent_guard-package.XXXXXX)
dpkg-deb -x "$deb" "$stage" || fail "dpkg-deb -x $deb failed"
deb_lib="$stage/usr/lib/postgresql/$major/lib/agent_guard.so"
[ -f "$deb_lib" ] || fail "the package has no /usr/lib/postgresql/$major/lib/agent_guard.so"
if dpkg-query -W -f='${Status}' "postgresql-$major" 2>/dev/null | grep -q 'install ok installed' \
    && [ "$pkglibdir" = "/usr/lib/postgresql/$major/lib" ]; then
  mode=dpkg
  ag_log "dpkg -i $deb"
  dpkg -i "$deb" >/tmp/agent_guard-package-dpkg.log 2>&1 || { cat /tmp/agent_guard-package-dpkg.log; fail "dpkg -i failed"; }
  for f in "$pkglibdir/agent_guard.so" "$extdir/agent_guard.control"; do
    owner=$(dpkg -S "$f" 2>/dev/null | cut -d: -f1)
    [ "$owner" = "$name" ] || fail "$f is not owned by $name after dpkg -i (owner: ${owner:-none})"
  done
else
  mode=copy
  ag_log "no Debian postgresql-$major here: copying the package's files into $pkglibdir and $extdir"
  install -m 644 "$deb_lib" "$pkglibdir/agent_guard.so" || fail "copy failed"
  for f in "$stage/usr/share/postgresql/$major/extension/"agent_guard*; do
    install -m 644 "$f" "$extdir/" || fail "copy failed"
  done
fi
cmp -s "$deb_lib" "$pkglibdir/agent_guard.so" || fail "the installed agent_guard.so differs from the package's"
ls "$extdir"/agent_guard--*.sql >/dev/null 2>&1 || fail "no agent_guard--*.sql installed"

# ---- 4. cluster + regress ----------------------------------------------------------------
ag_log "start test cluster $datadir on 127.0.0.1:$port (packaged library)"
ag_cluster_start "$datadir" "$port" \
  "shared_preload_libraries = 'agent_guard'" \
  "log_statement = 'none'" \
  "log_min_messages = warning" \
  "log_min_error_statement = error" \
  "fsync = off" \
  "max_connections = 200" || fail "test cluster failed to start"
pid=$(head -n 1 "$datadir/postmaster.pid")
inode=$(stat -c %i "$pkglibdir/agent_guard.so")
if ! awk -v ino="$inode" '$5 == ino && $6 ~ /agent_guard\.so$/ { found = 1 } END { exit !found }' "/proc/$pid/maps"; then
  fail "the postmaster (pid $pid) has not mapped the packaged $pkglibdir/agent_guard.so"
fi
ag_log "the postmaster maps the packaged library (inode $inode)"
AG_TEST_PORT=$port bash "$root/scripts/regress.sh" 9>&- | tee /tmp/agent_guard-package-regress.log
line=$(grep -E '^regress: [0-9]+ passed, [0-9]+ failed$' /tmp/agent_guard-package-regress.log | tail -n 1)
cleanup
[ -n "$line" ] || { echo "package: 0 passed, 1 failed"; exit 1; }
echo "package: ${line#regress: }"
case $line in *" 0 failed") exit 0 ;; *) exit 1 ;; esac
