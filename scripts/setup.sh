#!/usr/bin/env bash
# Install everything agent_guard needs to build and test, on Debian bookworm,
# as root. Idempotent and quiet when everything is already there:
#   - Debian packages: PostgreSQL server + headers, clang/libclang (bindgen),
#     build tools, sudo (cargo pgrx test --runas), and pgrx.toml's peer_packages
#   - cargo-pgrx at pgrx.toml's [tooling] cargo_pgrx_version
#   - every other major of pgrx.toml tested_majors, built from source into
#     source_prefix/MAJOR by scripts/build-postgres.sh (once per machine; a
#     major whose source the archive does not serve is reported and skipped)
#   - `cargo pgrx init --pgNN <pg_config>...` for every installed tested major
#     (only if ~/.pgrx/config.toml lacks one of them)
# Debian's own "main" cluster (port 5432, systemd/init service) is never used:
# every script runs its own cluster (scripts/lib.sh ag_cluster_start), so the
# package install is told not to create it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

command -v cargo >/dev/null 2>&1 || ag_die "cargo not found in PATH; install Rust (rustup) first, then re-run scripts/setup.sh"

major=$(ag_config postgres major)
pg_config=$(ag_config postgres pg_config)
pgrx_version=$(ag_config tooling cargo_pgrx_version)
peer_packages=$(ag_config postgres peer_packages 2>/dev/null || true)

# ---- Debian packages --------------------------------------------------------
packages=(
  "postgresql-$major" "postgresql-server-dev-$major"
  libclang-dev clang build-essential pkg-config libssl-dev sudo ca-certificates
)
# shellcheck disable=SC2206
packages+=($peer_packages)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [ "$status" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || ag_die "missing packages (${missing[*]}); run scripts/setup.sh as root"
  command -v apt-get >/dev/null 2>&1 || ag_die "apt-get not found; this setup supports Debian bookworm only (missing: ${missing[*]})"
  # Tell postgresql-common not to create (and start) the Debian "main" cluster.
  mkdir -p /etc/postgresql-common/createcluster.d
  if [ ! -f /etc/postgresql-common/createcluster.d/agent_guard.conf ]; then
    printf '# agent_guard: scripts run their own clusters; no Debian default cluster needed.\ncreate_main_cluster = false\n' \
      >/etc/postgresql-common/createcluster.d/agent_guard.conf
  fi
  ag_log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null >/tmp/agent_guard-apt.log 2>&1 \
    || { tail -n 40 /tmp/agent_guard-apt.log >&2; ag_die "apt-get install failed (full log: /tmp/agent_guard-apt.log)"; }
  # If a Debian default cluster exists anyway (installed before us), it is not
  # needed; stop it if the package install just started it.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '$4 == "online" { print $1, $2 }' | while read -r v c; do
      ag_log "stopping Debian default cluster $v/$c (not used by agent_guard)"
      pg_ctlcluster "$v" "$c" stop || true
    done
  fi
fi

[ -x "$pg_config" ] || ag_die "$pg_config not found after package install (pgrx.toml [postgres] pg_config)"
id postgres >/dev/null 2>&1 || ag_die "no 'postgres' OS user after installing postgresql-$major"

# ---- cargo-pgrx -------------------------------------------------------------
have=$(cargo pgrx --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$pgrx_version" ]; then
  ag_log "cargo install cargo-pgrx --version $pgrx_version --locked (have: ${have:-none}; takes a few minutes)"
  cargo install cargo-pgrx --version "$pgrx_version" --locked --force
  have=$(cargo pgrx --version 2>/dev/null | awk '{print $2}' || true)
  [ "$have" = "$pgrx_version" ] || ag_die "cargo pgrx --version reports '${have:-nothing}', want $pgrx_version (is ~/.cargo/bin in PATH?)"
fi

# ---- the other tested majors, from source --------------------------------------
for m in $(ag_tested_majors); do
  [ "$m" = "$major" ] && continue
  rc=0
  bash "$(dirname "${BASH_SOURCE[0]}")/build-postgres.sh" "$m" || rc=$?
  case $rc in
    0) ;;
    3) ag_log "PostgreSQL $m: its source is not available from the package archive here; it is not built and not tested" ;;
    *) ag_die "building PostgreSQL $m failed (scripts/build-postgres.sh $m)" ;;
  esac
done

# ---- cargo pgrx init ----------------------------------------------------------
ag_pgrx_init || ag_die "cargo pgrx init failed"

# ---- shared scratch dir for clusters -------------------------------------------
# Root-owned and traversable; cluster data dirs inside belong to postgres.
base=$(dirname "$(ag_cluster_datadir test)")
if [ ! -d "$base" ]; then mkdir -p "$base"; fi
chmod 755 "$base" 2>/dev/null || true

# ---- source packages for the postgres test layer ---------------------------------
# scripts/postgres-suite.sh runs PostgreSQL's and pgaudit's own regression
# suites, taken from Debian's source packages: apt needs deb-src entries. If
# none are configured, add them in a separate file that mirrors the machine's
# own deb entries (same mirrors, suites, components and keys), then fetch and
# extract the sources once into the cache (postgres-suite.sh --prepare; quiet
# when already done).
if ! grep -rqsE '^[[:space:]]*Types:.*[[:space:]]deb-src([[:space:]]|$)|^[[:space:]]*deb-src[[:space:]]' \
    /etc/apt/sources.list /etc/apt/sources.list.d/; then
  [ "$(id -u)" = 0 ] || ag_die "no deb-src entries in /etc/apt; run scripts/setup.sh as root"
  src_dir=/etc/apt/sources.list.d
  src_tmp=$(mktemp -d)
  header="# Added by agent_guard's scripts/setup.sh: source packages (apt-get source) for the
# postgres test layer, mirroring this machine's deb entries."
  # deb822 files: one stanza per paragraph; copy the enabled ones of Types deb.
  for f in "$src_dir"/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; enabled = 1; body = ""
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[[:space:]]*#/) continue
          if (line ~ /^Types:/) { types = line; continue }
          if (line ~ /^Enabled:[[:space:]]*(no|false|0)[[:space:]]*$/) enabled = 0
          body = body line "\n"
        }
        if (enabled && types ~ /[[:space:]]deb([[:space:]]|$)/) printf "\nTypes: deb-src\n%s", body
      }' "$f"
  done >"$src_tmp/sources"
  # One-line format (sources.list, *.list).
  for f in /etc/apt/sources.list "$src_dir"/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { $1 = "deb-src"; print }' "$f"
  done >"$src_tmp/list"
  added=""
  for ext in sources list; do
    if [ -s "$src_tmp/$ext" ]; then
      { printf '%s\n' "$header"; cat "$src_tmp/$ext"; } >"$src_dir/agent_guard-deb-src.$ext"
      added="$added $src_dir/agent_guard-deb-src.$ext"
    fi
  done
  rm -rf "$src_tmp"
  [ -n "$added" ] || ag_die "found no deb entries in /etc/apt to derive deb-src entries from; add deb-src entries yourself"
  ag_log "added deb-src entries ($added ); apt-get update"
  apt-get update -qq || ag_die "apt-get update failed"
fi
bash "$(dirname "${BASH_SOURCE[0]}")/postgres-suite.sh" --prepare
exit 0
