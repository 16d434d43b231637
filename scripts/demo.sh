#!/usr/bin/env bash
# The README's demo command: builds agent_guard (release), starts the demo
# cluster with shared_preload_libraries = 'agent_guard' and runs the narrated
# scenario demo/run.sh. The cluster stays up for you to explore.
#
#   bash scripts/demo.sh              setup, install (--release), (re)start, run
#   bash scripts/demo.sh --no-setup   skip scripts/setup.sh
#   bash scripts/demo.sh --stop       stop the demo cluster
# Env: AG_DEMO_PORT, AG_DEMO_DATADIR (default: pgrx.toml [demo_cluster]).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root=$(ag_root)
datadir=$(ag_cluster_datadir demo)
port=$(ag_cluster_port demo)
do_setup=1
for a in "$@"; do
  case $a in
    --stop)
      if ag_cluster_running "$datadir"; then
        ag_cluster_stop "$datadir" fast && ag_log "demo cluster stopped ($datadir)"
      else
        ag_log "demo cluster is not running"
      fi
      exit 0 ;;
    --no-setup) do_setup=0 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "unknown argument '$a' (see --help)" ;;
  esac
done

if [ $do_setup = 1 ]; then bash "$root/scripts/setup.sh"; fi
bash "$root/scripts/install-extension.sh" --release
ag_log "start demo cluster $datadir on 127.0.0.1:$port"
ag_cluster_start "$datadir" "$port" "shared_preload_libraries = 'agent_guard'" \
  || ag_die "the demo cluster did not start (see $datadir/server.log)"
AG_DEMO_PORT=$port bash "$root/demo/run.sh"
