# shellcheck shell=bash
# Self-contained cluster helpers for the benchmark harness (bench/run.sh).
#
# They deliberately do not depend on the cluster functions of scripts/lib.sh
# (which are being written concurrently): the benchmark needs to control
# exactly which settings change between configurations, so it owns its
# postgresql.conf. Only ag_config/ag_bindir from scripts/lib.sh are used
# (with fallbacks below if that file is missing).
#
#   bench_as_postgres CMD...          run CMD as the postgres OS user
#   bench_initdb DIR PORT             fresh cluster in DIR (removes an old one)
#   bench_set_config DIR LINES...     replace DIR/bench_config.conf (per-config settings)
#   bench_start DIR                   start; on failure print logs and return 1
#   bench_stop DIR [MODE]             stop if running (fast, then immediate)
#   bench_running DIR                 success if a postmaster runs on DIR
#   bench_psql USER DB [psql args]    psql over the cluster's unix socket
#   bench_server_log_bytes DIR        total size of DIR/log/*
#   bench_server_log_tail DIR [N] [REGEX]  last N lines (matching REGEX) of the newest server log
#   bench_private_install DIR         snapshot of the PostgreSQL install whose
#       agent_guard.so/.control/.sql are private copies (see the function)

_bench_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_REPO_ROOT="$(cd "$_bench_here/.." && pwd)"

if [[ -f "$BENCH_REPO_ROOT/scripts/lib.sh" ]]; then
  # shellcheck source=../scripts/lib.sh
  source "$BENCH_REPO_ROOT/scripts/lib.sh"
fi
if ! declare -F ag_config >/dev/null; then
  ag_config() {
    awk -v s="$1" -v k="$2" '
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*\[/ { gsub(/[][[:space:]]/, ""); sec = $0; next }
      sec == s { n = index($0, "="); if (n == 0) next
        key = substr($0, 1, n - 1); v = substr($0, n + 1)
        gsub(/^[[:space:]]+|[[:space:]]+$/, "", key); sub(/[[:space:]]*#.*$/, "", v)
        gsub(/^[[:space:]]+|[[:space:]]+$/, "", v); gsub(/^"|"$/, "", v)
        if (key == k) { print v; f = 1; exit } }
      END { if (!f) exit 1 }' "$BENCH_REPO_ROOT/pgrx.toml"
  }
fi

BENCH_PG_CONFIG="${BENCH_PG_CONFIG:-$(ag_config postgres pg_config 2>/dev/null || echo /usr/bin/pg_config)}"
BENCH_BINDIR="$("$BENCH_PG_CONFIG" --bindir)"
# pg_ctl/postgres used to run the server; bench_private_install points it at a snapshot.
BENCH_SERVER_BINDIR="$BENCH_BINDIR"

bench_log() { printf '==> %s\n' "$*" >&2; }
bench_die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }

bench_as_postgres() {
  if [[ "$(id -un)" == postgres ]]; then
    "$@"
  elif [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    bench_die "must run as root (or as the postgres OS user) to manage the cluster"
  fi
}

bench_initdb() {
  local dir=$1 port=$2
  if [[ -e "$dir" ]]; then
    if [[ -f "$dir/PG_VERSION" ]]; then
      bench_stop "$dir" immediate || true
      rm -rf "$dir"
    elif [[ -d "$dir" && -z "$(ls -A "$dir")" ]]; then
      rmdir "$dir"
    else
      bench_die "$dir exists and is not a PostgreSQL data directory; refusing to delete it"
    fi
  fi
  if (( ${#dir} > 90 )); then
    bench_die "data dir path too long for a unix socket path ($dir)"
  fi
  mkdir -p "$(dirname "$dir")"
  mkdir -m 700 "$dir"
  chown postgres: "$dir" 2>/dev/null || true
  bench_as_postgres "$BENCH_BINDIR/initdb" -D "$dir" -U postgres --auth=trust \
    -E UTF8 --locale=C --no-sync >"$dir.initdb.log" 2>&1 \
    || { cat "$dir.initdb.log" >&2; bench_die "initdb failed for $dir"; }
  rm -f "$dir.initdb.log"
  # Settings common to every configuration. Only bench_config.conf (included
  # last) differs between configurations.
  bench_as_postgres tee -a "$dir/postgresql.conf" >/dev/null <<EOF

# ---- agent_guard benchmark: settings common to all configurations ----
listen_addresses = ''
port = $port
unix_socket_directories = '$dir'
max_connections = 50
shared_buffers = 256MB
synchronous_commit = ${BENCH_SYNC_COMMIT:-off}
autovacuum = on
# All server output, including pgaudit's, goes to files in the data dir.
logging_collector = on
log_destination = 'stderr'
log_directory = 'log'
log_filename = 'postgresql-%Y%m%d_%H%M%S.log'
log_line_prefix = '%m [%p] %q%u@%d '
log_checkpoints = off
log_rotation_size = 0
include_if_exists = 'bench_config.conf'
EOF
}

bench_set_config() {
  local dir=$1; shift
  { echo "# written by bench/run.sh for one configuration"; printf '%s\n' "$@"; } \
    | bench_as_postgres tee "$dir/bench_config.conf" >/dev/null
}

bench_server_log_tail() {
  local dir=$1 n=${2:-20} re=${3:-}
  local f
  f="$(ls -1t "$dir"/log/*.log 2>/dev/null | head -n1)" || true
  [[ -n "$f" ]] || return 0
  if [[ -n "$re" ]]; then grep -E "$re" "$f" | tail -n "$n" || true
  else tail -n "$n" "$f"; fi
}

bench_start() {
  local dir=$1
  # 8>&- 9>&-: the server must not inherit run.sh's lock fds.
  if ! bench_as_postgres "$BENCH_SERVER_BINDIR/pg_ctl" -D "$dir" -l "$dir/pg_ctl.log" \
        -w -t 60 start >/dev/null 2>&1 8>&- 9>&-; then
    {
      echo "---- $dir/pg_ctl.log (tail) ----"; tail -n 30 "$dir/pg_ctl.log" 2>/dev/null
      echo "---- newest server log (tail) ----"; bench_server_log_tail "$dir" 30
      echo "---- $dir/bench_config.conf ----"; cat "$dir/bench_config.conf" 2>/dev/null
    } >&2
    return 1
  fi
}

bench_running() {
  [[ -f "$1/postmaster.pid" ]] && bench_as_postgres "$BENCH_SERVER_BINDIR/pg_ctl" -D "$1" status >/dev/null 2>&1
}

bench_stop() {
  local dir=$1 mode=${2:-fast}
  bench_running "$dir" || return 0
  bench_as_postgres "$BENCH_SERVER_BINDIR/pg_ctl" -D "$dir" -m "$mode" -w -t 60 stop >/dev/null 2>&1 \
    || bench_as_postgres "$BENCH_SERVER_BINDIR/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null 2>&1
}

# bench_psql USER DB [psql args...]; needs BENCH_DATADIR and BENCH_PORT.
bench_psql() {
  local user=$1 db=$2; shift 2
  PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" \
    "$BENCH_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$BENCH_DATADIR" -p "$BENCH_PORT" \
    -U "$user" -d "$db" "$@"
}

bench_server_log_bytes() {
  local dir=$1
  find "$dir/log" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { printf "%d\n", s }'
}

# bench_private_install DIR
# Other engineers re-install agent_guard.so while the benchmark runs; cargo pgrx
# install overwrites the file in place, which changes the build under test and
# can crash a server that has it mapped. So the server runs from a private
# mirror of the PostgreSQL install: DIR + the absolute bin/lib/share paths,
# with copies of postgres, pg_ctl and agent_guard* and symlinks for everything
# else. PostgreSQL derives $libdir and its share dir from its executable's
# location (relocatable install), so $libdir/agent_guard is DIR's copy.
# Sets BENCH_SERVER_BINDIR, BENCH_PRIV_LIBDIR, BENCH_PRIV_SHAREDIR.
bench_private_install() {
  local priv=$1 bindir libdir sharedir f name
  bindir=$BENCH_BINDIR
  libdir="$("$BENCH_PG_CONFIG" --pkglibdir)"
  sharedir="$("$BENCH_PG_CONFIG" --sharedir)"
  case $priv in /?*) ;; *) bench_die "bench_private_install: bad dir '$priv'" ;; esac
  rm -rf "$priv"
  mkdir -p "$priv$bindir" "$priv$libdir" "$priv$sharedir/extension"
  cp -p "$bindir/postgres" "$bindir/pg_ctl" "$priv$bindir/"
  for f in "$libdir"/*; do
    name=${f##*/}
    if [[ $name == agent_guard* ]]; then cp -p "$f" "$priv$libdir/"; else ln -s "$f" "$priv$libdir/$name"; fi
  done
  for f in "$sharedir"/*; do
    name=${f##*/}
    [[ $name == extension ]] || ln -s "$f" "$priv$sharedir/$name"
  done
  for f in "$sharedir"/extension/*; do
    name=${f##*/}
    if [[ $name == agent_guard* ]]; then cp -p "$f" "$priv$sharedir/extension/"; else ln -s "$f" "$priv$sharedir/extension/$name"; fi
  done
  chmod -R a+rX "$priv"
  local d=$priv
  while [[ $d != / && $d != . ]]; do chmod a+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  BENCH_SERVER_BINDIR="$priv$bindir"
  BENCH_PRIV_LIBDIR="$priv$libdir"
  BENCH_PRIV_SHAREDIR="$priv$sharedir"
}

# bench_loaded_libs DIR: shared objects mapped by DIR's postmaster.
bench_loaded_libs() {
  local pid
  pid="$(head -n1 "$1/postmaster.pid" 2>/dev/null)" || return 0
  awk '$6 ~ /\.so/ { print $6 }' "/proc/$pid/maps" 2>/dev/null | sort -u
}
