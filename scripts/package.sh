#!/usr/bin/env bash
# Build the Debian package a DBA installs, per PostgreSQL major:
#
#   bash scripts/package.sh [--pg MAJOR]... [--debug] [--out-dir DIR]
#
# For each MAJOR (default: every tested major installed here, scripts/lib.sh
# ag_installed_majors) writes DIR/postgresql-MAJOR-agent-guard_VERSION_amd64.deb
# (DIR default target/packages; VERSION from Cargo.toml) and prints its path.
#
# Contents: what `cargo pgrx package --pg-config PG_CONFIG` stages (release
# build; --debug for a debug one), placed at Debian's PostgreSQL layout,
#   /usr/lib/postgresql/MAJOR/lib/agent_guard.so
#   /usr/share/postgresql/MAJOR/extension/agent_guard.control, agent_guard--*.sql
# (the library stripped of debug symbols) plus
# /usr/share/doc/postgresql-MAJOR-agent-guard/README.md. Control file:
# Depends: postgresql-MAJOR and the libc6 the library needs (from its
# versioned glibc symbols). The packaged major (pgrx.toml [postgres] major)
# is built against Debian's own server headers; a major built from source
# (scripts/build-postgres.sh) against that upstream release's headers,
# configured as Debian configures it where it matters for extensions (ICU,
# OpenSSL): its package is meant for Debian's (or the PostgreSQL apt
# repository's) postgresql-MAJOR, which is not installed on these machines,
# so scripts/package-test.sh tests it by installing its contents into the
# source-built server instead of with dpkg -i.
# Needs dpkg-deb (Debian) and cargo-pgrx (scripts/setup.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

root=$(ag_root)
majors=()
profile=(--profile release)
out_dir="$root/target/packages"
while [ $# -gt 0 ]; do
  case $1 in
    --pg) [ $# -ge 2 ] || ag_die "--pg needs a major"; majors+=("$2"); shift ;;
    --debug) profile=(--debug) ;;
    --out-dir) [ $# -ge 2 ] || ag_die "--out-dir needs a directory"; out_dir=$2; shift ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "package.sh: unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ ${#majors[@]} -gt 0 ] || mapfile -t majors < <(ag_installed_majors)
[ ${#majors[@]} -gt 0 ] || ag_die "no PostgreSQL installed here (run scripts/setup.sh)"
command -v dpkg-deb >/dev/null 2>&1 || ag_die "dpkg-deb not found (Debian only)"
# pgrx-pg-sys finds every major in ~/.pgrx/config.toml (another checkout may have rewritten it).
ag_pgrx_init || ag_die "cargo pgrx init failed"

version=$(awk '
  /^\[/ { in_pkg = ($0 == "[package]") }
  in_pkg && /^version[[:space:]]*=/ { gsub(/^[^"]*"|".*$/, ""); print; exit }' "$root/Cargo.toml")
[ -n "$version" ] || ag_die "no [package] version in Cargo.toml"
arch=$(dpkg --print-architecture)
mkdir -p "$out_dir"

for major in "${majors[@]}"; do
  pg_config=$(ag_pg_config "$major")
  [ -x "$pg_config" ] || ag_die "PostgreSQL $major is not installed here ($pg_config); run scripts/setup.sh"
  pkglibdir=$("$pg_config" --pkglibdir)
  sharedir=$("$pg_config" --sharedir)
  name="postgresql-$major-agent-guard"
  stage="$root/target/package-stage/pg$major"
  rm -rf "$stage"
  ag_log "cargo pgrx package --pg-config $pg_config ${profile[*]}"
  (cd "$root" && cargo pgrx package --package agent_guard --pg-config "$pg_config" \
      "${profile[@]}" --out-dir "$stage/pgrx") >&2

  # Debian's layout, whatever the build server's prefix.
  deb="$stage/deb"
  lib_dst="$deb/usr/lib/postgresql/$major/lib"
  ext_dst="$deb/usr/share/postgresql/$major/extension"
  doc_dst="$deb/usr/share/doc/$name"
  mkdir -p "$lib_dst" "$ext_dst" "$doc_dst" "$deb/DEBIAN"
  [ -f "$stage/pgrx$pkglibdir/agent_guard.so" ] || ag_die "cargo pgrx package staged no $pkglibdir/agent_guard.so"
  install -m 644 "$stage/pgrx$pkglibdir/agent_guard.so" "$lib_dst/"
  # as Debian's packages do: no debug symbols (the dynamic symbols stay)
  strip --strip-unneeded "$lib_dst/agent_guard.so"
  for f in "$stage/pgrx$sharedir/extension/"agent_guard*; do
    install -m 644 "$f" "$ext_dst/"
  done
  install -m 644 "$root/README.md" "$doc_dst/README.md"

  glibc=$(objdump -T "$lib_dst/agent_guard.so" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' \
    | sed 's/GLIBC_//' | sort -V | tail -n 1 || true)
  depends="postgresql-$major${glibc:+, libc6 (>= $glibc)}"
  size=$(du -sk "$deb/usr" | awk '{print $1}')
  cat >"$deb/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: agent_guard developers <agent-guard@localhost>
Installed-Size: $size
Depends: $depends
Section: database
Priority: optional
Description: request-level control of AI agents inside PostgreSQL $major
 agent_guard is a PostgreSQL extension that governs AI-agent sessions:
 agents registered with a human sponsor, every statement classified from
 PostgreSQL's own trees, writes and schema changes refused until a human
 approves a just-in-time grant, a hash-chained audit trail, inline masking
 of regulated columns and an access review.
 .
 Add agent_guard to shared_preload_libraries, restart the server, then run
 CREATE EXTENSION agent_guard in each database it governs.
EOF
  (cd "$deb" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$deb/DEBIAN/md5sums"
  file="$out_dir/${name}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$deb" "$file" >/dev/null
  ag_log "built $file (Depends: $depends)"
  printf '%s\n' "$file"
done
