#!/usr/bin/env bash
# Build agent_guard and install it into the PostgreSQL this run uses (env
# AG_PG_CONFIG, else pgrx.toml [postgres] pg_config; scripts/lib.sh
# ag_pg_config): `cargo pgrx install --pg-config ... [--release]`; cargo-pgrx
# builds with the feature pgNN of that server's major.
# Run as root (Debian's PostgreSQL lib/share dirs belong to root).
# Used by scripts/test.sh (debug), scripts/demo.sh and bench/ (--release).
#   usage: scripts/install-extension.sh [--release]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ag_cargo_path

args=()
for a in "$@"; do
  case $a in
    --release|-r) args+=(--release) ;;
    -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "install-extension.sh: unknown argument '$a' (only --release)" ;;
  esac
done

root=$(ag_root)
pg_config=$(ag_pg_config)
[ -x "$pg_config" ] || ag_die "$pg_config not found; run scripts/setup.sh"
if [ -w "$("$pg_config" --pkglibdir)" ]; then sudo=(); else sudo=(--sudo); fi
# pgrx-pg-sys finds every major in ~/.pgrx/config.toml (another checkout may have rewritten it).
ag_pgrx_init || ag_die "cargo pgrx init failed"

# Running servers (demo, bench, test clusters) have agent_guard.so mapped;
# cargo pgrx install rewrites it in place, which could crash them.
ag_detach_installed_lib || true
ag_log "cargo pgrx install --pg-config $pg_config ${args[*]:-}"
cd "$root"
cargo pgrx install --package agent_guard --pg-config "$pg_config" "${sudo[@]}" "${args[@]}"
