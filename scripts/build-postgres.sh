#!/usr/bin/env bash
# Build a PostgreSQL major from source into a private prefix, once per machine.
#
#   bash scripts/build-postgres.sh MAJOR [--check]
#
# For the majors of pgrx.toml [postgres] tested_majors other than the packaged
# one (`major`). The source is the upstream .orig tarball of Debian's source
# package postgresql-MAJOR, fetched with `apt-get source --download-only
# --tar-only` from the suite pgrx.toml names (source_suite_MAJOR; apt checks
# it against the archive's signed index). apt needs a deb-src entry for that
# suite: this script adds one in /etc/apt/sources.list.d/agent_guard-pg-src.sources
# (deb-src only: no binary package comes from these suites, nothing is
# upgraded, no pinning is touched).
#
# Result: PREFIX = source_prefix/MAJOR (bin/pg_config, server headers, pgxs
# with pg_regress, every contrib module), built with `nice make -j2`; the
# source tree stays in source_prefix/src/postgresql-VERSION (built in place: its
# src/test/regress is PostgreSQL's own regression suite for that major;
# PREFIX/.agent_guard-source names it). A
# stamp PREFIX/.agent_guard-build records the tarball and configure options;
# when it matches, the script does nothing (quietly). A failed or interrupted
# build leaves no stamp and is redone from scratch the next time.
#
# Configure: --prefix PREFIX --with-openssl (libssl-dev) --with-icu (libicu-dev,
# else --without-icu) --with-readline (libreadline-dev) --with-zlib
# --with-libxml (libxml2-dev; tests use query_to_xml), as Debian does; no
# cassert, no debug info (CPU). Build dependencies come from apt:
# build-essential bison flex libreadline-dev zlib1g-dev libssl-dev libicu-dev
# libxml2-dev pkg-config.
#
# --check: exit 0 if PREFIX is built and its stamp matches, 1 otherwise (no build).
# Exit status 3: the archive does not serve the source (no such package in
# the suite, or the download is refused); nothing was changed besides the
# deb-src entry. Full log: source_prefix/build-MAJOR.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

major=${1:-}
[[ $major =~ ^[0-9]+$ ]] || ag_die "usage: build-postgres.sh MAJOR [--check]"
check_only=0
[ "${2:-}" = --check ] && check_only=1

base=$(ag_config postgres source_prefix)
prefix="$base/$major"
stamp="$prefix/.agent_guard-build"
suite=$(ag_config postgres "source_suite_$major") \
  || ag_die "pgrx.toml [postgres] has no source_suite_$major"
srcpkg="postgresql-$major"
log="$base/build-$major.log"

# The configure options, written into the stamp (a change rebuilds).
configure_opts() {
  local o=(--prefix="$prefix" --with-openssl --with-readline --with-zlib --with-libxml)
  if dpkg-query -W -f='${Status}' libicu-dev 2>/dev/null | grep -q '^install ok installed'; then
    o+=(--with-icu)
  else
    o+=(--without-icu)
  fi
  printf '%s\n' "${o[@]}"
}

stamp_text() { printf 'tarball %s\nconfigure %s\n' "$1" "$(configure_opts | tr '\n' ' ')"; }

built_ok() {
  [ -f "$stamp" ] && [ -x "$prefix/bin/pg_config" ] || return 1
  local tarball
  tarball=$(sed -n 's/^tarball //p' "$stamp")
  [ -n "$tarball" ] && [ "$(cat "$stamp")" = "$(stamp_text "$tarball")" ]
}

# PL/Python (plpython3u, the regress layer's untrusted-language tests), built
# in the configured tree afterwards against Debian's python3 (/usr/bin/python3,
# libpython3-dev) with its own stamp, so adding it never rebuilds the server.
plpython_stamp="$prefix/.agent_guard-plpython"
ensure_plpython() {
  [ -f "$plpython_stamp" ] && [ -f "$prefix/lib/postgresql/plpython3.so" ] && return 0
  [ $check_only = 1 ] && return 1
  local src pyver
  src=$(cat "$prefix/.agent_guard-source" 2>/dev/null) || ag_die "no $prefix/.agent_guard-source"
  if ! dpkg-query -W -f='${Status}' libpython3-dev 2>/dev/null | grep -q '^install ok installed'; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libpython3-dev python3 \
      </dev/null >>"$log" 2>&1 || ag_die "apt-get install libpython3-dev failed (log: $log)"
  fi
  pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  ag_log "building PL/Python (python $pyver) for PostgreSQL $major"
  nice -n 10 make -s -C "$src/src/pl/plpython" with_python=yes PYTHON=/usr/bin/python3 \
    python_includespec="-I/usr/include/python$pyver" python_libdir="/usr/lib/$(gcc -print-multiarch)" \
    python_libspec="-lpython$pyver" python_additional_libs= python_majorversion=3 \
    python_version="$pyver" install >>"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; ag_die "building PL/Python for PostgreSQL $major failed (log: $log)"; }
  printf 'python %s\n' "$pyver" >"$plpython_stamp"
}

if built_ok; then ensure_plpython; exit $?; fi
[ $check_only = 1 ] && exit 1
[ "$(id -u)" = 0 ] || ag_die "build-postgres.sh runs as root (apt, $base)"

mkdir -p "$base/src"
chmod 755 "$base" "$base/src"

# ---- build dependencies --------------------------------------------------------
deps=(build-essential bison flex libreadline-dev zlib1g-dev libssl-dev libicu-dev libxml2-dev pkg-config)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  ag_log "apt-get install ${missing[*]} (to build PostgreSQL $major)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" </dev/null >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; ag_die "apt-get install ${missing[*]} failed (log: $log)"; }
fi

# ---- deb-src entry for the suite -------------------------------------------------
srcfile=/etc/apt/sources.list.d/agent_guard-pg-src.sources
if ! grep -qs "^Suites: $suite\$" "$srcfile"; then
  if [ ! -f "$srcfile" ]; then
    cat >"$srcfile" <<'EOF'
# Added by agent_guard's scripts/build-postgres.sh: SOURCE packages only (deb-src)
# of newer PostgreSQL majors, whose upstream .orig tarball is built into a
# private prefix. No binary (deb) entries: nothing is installed or upgraded
# from these suites.
EOF
  fi
  cat >>"$srcfile" <<EOF

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  ag_log "added deb-src $suite to $srcfile; apt-get update"
  apt-get update -qq >>"$log" 2>&1 || { tail -n 20 "$log" >&2; ag_die "apt-get update failed (log: $log)"; }
fi

# ---- the upstream tarball ----------------------------------------------------------
# Reuse a tarball fetched before (the archive moves on; a built prefix stays).
version=$(apt-cache showsrc --only-source "$srcpkg" 2>/dev/null \
  | awk '/^Version:/ { print $2 }' | sort -rV | head -n 1 || true)
tarball=""
if [ -n "$version" ]; then
  upstream=${version%-*}; upstream=${upstream#*:}
  for t in "$base/src/${srcpkg}_$upstream.orig.tar."*; do
    case $t in *.asc) ;; *) [ -f "$t" ] && tarball=$t ;; esac
  done
fi
if [ -z "$tarball" ]; then
  for t in "$base/src/${srcpkg}_"*.orig.tar.*; do
    case $t in *.asc) ;; *) [ -f "$t" ] && tarball=$t ;; esac
  done
fi
if [ -z "$tarball" ]; then
  [ -n "$version" ] || { echo "PostgreSQL $major: the archive has no source package $srcpkg in $suite" >&2; exit 3; }
  dl=$(mktemp -d "$base/src/download.XXXXXX")
  id _apt >/dev/null 2>&1 && chown _apt "$dl"   # apt downloads as _apt
  ag_log "apt-get source --download-only --tar-only $srcpkg/$suite ($version)"
  if ! (cd "$dl" && apt-get source -qq --download-only --tar-only "$srcpkg/$suite") >>"$log" 2>&1; then
    rm -rf "$dl"
    echo "PostgreSQL $major: apt-get source $srcpkg/$suite ($version) failed:" >&2
    grep -E '^(E|W):' "$log" | tail -n 3 | sed 's/^/  /' >&2
    exit 3
  fi
  for t in "$dl/${srcpkg}_"*.orig.tar.*; do
    case $t in *.asc) continue ;; esac
    [ -f "$t" ] && mv "$t" "$base/src/" && tarball="$base/src/$(basename "$t")"
  done
  rm -rf "$dl"
  [ -n "$tarball" ] || { echo "PostgreSQL $major: apt-get source gave no .orig tarball" >&2; exit 3; }
fi
tarname=$(basename "$tarball")

# ---- configure, build, install ---------------------------------------------------------
topdir=$(tar -tf "$tarball" 2>/dev/null | head -n 1 | cut -d/ -f1 || true)
[[ $topdir == postgresql-* ]] || ag_die "unexpected layout of $tarball (top dir '$topdir')"
src="$base/src/$topdir"
ag_log "building PostgreSQL $major from $tarname into $prefix (nice, -j2; several minutes; log: $log)"
rm -rf "$src" "$prefix"
tar -xf "$tarball" -C "$base/src"
mapfile -t opts < <(configure_opts)
started=$(date +%s)
(
  set -e
  cd "$src"
  echo "== configure ${opts[*]}"
  ./configure "${opts[@]}"
  echo "== make"
  nice -n 10 make -j2 -s
  nice -n 10 make -j2 -s -C contrib
  echo "== make install"
  make -s install
  make -s -C contrib install
) >>"$log" 2>&1 || { tail -n 40 "$log" >&2; ag_die "building PostgreSQL $major failed (log: $log)"; }
"$prefix/bin/pg_config" --version | grep -q "^PostgreSQL $major\." \
  || ag_die "$prefix/bin/pg_config is not PostgreSQL $major"
printf '%s\n' "$src" >"$prefix/.agent_guard-source"
stamp_text "$tarname" >"$stamp"
ensure_plpython
ag_log "PostgreSQL $major built in $(( $(date +%s) - started )) s: $prefix"
