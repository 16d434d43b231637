#!/usr/bin/env bash
# Where an audited agent statement's cost goes: runs bench/audit-cpu.sh
# (human vs agent, select-only pgbench, CPU per statement and TPS) once per
# build variant, in turn on the same machine:
#   main                      the code as it is
#   writer-skips-table-write  bench/experiments/writer-skips-table-write.patch:
#                             the writer does everything (dequeue, decode, ids,
#                             hash chain, commit) except inserting the heap
#                             tuples and index entries
#   backend-records-nothing   bench/experiments/backend-records-nothing.patch:
#                             agents' statements are classified, decided and
#                             enforced, but no audit record is built or queued
# The two experiment builds lose audit rows on purpose: they exist only to
# measure, are built in a temporary git worktree, and the main build is
# re-installed at the end. See BENCHMARKS.md ("Where the cost goes").
#
#   bash bench/audit-breakdown.sh [--rounds N] [--time S] [--variants LIST]
#
# Defaults: 5 rounds of 10 s per role and variant (about 12 minutes in all,
# plus one full release build the first time).
# Run as root from a clean checkout (the experiment patches apply to HEAD).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
source "$root/scripts/lib.sh"

rounds=5
seconds=10
variants="main,writer-skips-table-write,backend-records-nothing"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --time) seconds=$2; shift ;;
    --variants) variants=$2; shift ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ag_die "bench/audit-breakdown.sh: unknown argument $1" ;;
  esac
  shift
done

# Experiment builds get a target directory of their own: sharing the main
# one would overwrite the main build's library with an experiment's.
experiment_target="$root/target/experiments"
worktree=$(mktemp -d /var/tmp/agent_guard-experiment.XXXXXX)
cleanup() {
  git -C "$root" worktree remove --force "$worktree" >/dev/null 2>&1 || rm -rf "$worktree"
  ag_log "re-installing the main build"
  bash "$root/scripts/install-extension.sh" --release >/dev/null
}
rm -rf "$worktree"
git -C "$root" worktree add --detach "$worktree" HEAD >/dev/null
trap cleanup EXIT

summary=$(mktemp)
for v in ${variants//,/ }; do
  git -C "$worktree" checkout --quiet -- .
  if [ "$v" != main ]; then
    patch="$root/bench/experiments/$v.patch"
    [ -f "$patch" ] || ag_die "no such variant: $v (no $patch)"
    git -C "$worktree" apply "$patch"
  fi
  ag_log "variant $v: building and installing"
  CARGO_TARGET_DIR="$experiment_target" bash "$worktree/scripts/install-extension.sh" --release >/dev/null
  ag_log "variant $v: measuring"
  out=$(bash "$here/audit-cpu.sh" --no-install --rounds "$rounds" --time "$seconds")
  printf '%s\n' "$out"
  {
    echo "### $v"
    echo
    printf '%s\n\n' "$out"
  } >>"$summary"
done
echo
echo "== summary (git $(git -C "$root" rev-parse --short HEAD)) =="
cat "$summary"
rm -f "$summary"
