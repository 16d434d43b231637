#!/usr/bin/env bash
# Build a released version of agent_guard from its commit, once per machine.
#
#   bash scripts/release-build.sh VERSION [PG_CONFIG]
#
# The commit of each release is listed in releases.txt ("VERSION COMMIT MAJORS").
# The release's sources come from this repository's history (git archive), so
# no network is needed; the build (cargo pgrx package --debug) goes to
# /var/tmp/agent_guard/releases/VERSION-pgMAJOR/ (env AG_RELEASES_DIR) and is
# reused when its stamp is there. Prints the package directory (the tree
# `cargo pgrx package` makes: .../usr/lib/postgresql/MAJOR/lib/agent_guard.so
# and .../usr/share/postgresql/MAJOR/extension/agent_guard--VERSION.sql).
# The install script kept in sql/releases/agent_guard--VERSION.sql must equal
# the built one: a release's script never changes once released.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

version=${1:?usage: release-build.sh VERSION [PG_CONFIG]}
pg_config=${2:-$(ag_config postgres pg_config)}
root=$(ag_root)
commit=$(awk -v v="$version" '$1 == v { print $2 }' "$root/releases.txt")
[ -n "$commit" ] || ag_die "releases.txt has no version $version"
git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null \
  || git -C "$root" fetch -q origin "$commit" 2>/dev/null \
  || ag_die "commit $commit of release $version is not in this clone's history (a shallow clone?)"

major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
base=${AG_RELEASES_DIR:-/var/tmp/agent_guard/releases}/$version-pg$major
out=$base/package
if [ -f "$base/.done-$commit" ]; then
  echo "$out"
  exit 0
fi
rm -rf "$base"
mkdir -p "$base/src"
git -C "$root" archive "$commit" | tar -x -C "$base/src"
ag_log "build agent_guard $version ($commit) for PostgreSQL $major (once per machine)"
# the release's own Cargo.lock; a target dir of its own (never this tree's)
(cd "$base/src" && nice cargo pgrx package --debug --pg-config "$pg_config" \
   --no-default-features --features "pg$major" --out-dir "$out") >"$base/build.log" 2>&1 \
  || { tail -n 40 "$base/build.log" >&2; ag_die "build of release $version failed (log: $base/build.log)"; }
kept="$root/sql/releases/agent_guard--$version.sql"
built=$(find "$out" -name "agent_guard--$version.sql" | head -n 1)
[ -n "$built" ] || ag_die "the build of $version made no install script"
if [ -f "$kept" ] && ! cmp -s "$kept" "$built"; then
  ag_die "sql/releases/agent_guard--$version.sql differs from the script release $version builds"
fi
touch "$base/.done-$commit"
echo "$out"
