# shellcheck shell=bash
# Shared helpers for agent_guard's scripts. Source it; it defines functions only.
#
#   ag_config SECTION KEY      value from pgrx.toml (quotes stripped)
#   ag_root                    the repository root
#   ag_pg_config [MAJOR]       pg_config of MAJOR: the packaged major's is pgrx.toml
#                              [postgres] pg_config, a source-built one's is
#                              source_prefix/MAJOR/bin/pg_config. Without MAJOR:
#                              the PostgreSQL this run uses, env AG_PG_CONFIG
#                              (scripts/test.sh --pg sets it), else the packaged one.
#   ag_use_major MAJOR         export AG_PG_MAJOR and AG_PG_CONFIG for MAJOR: every
#                              helper below and every script then uses that server
#   ag_pg_major                major version of ag_pg_config
#   ag_tested_majors           pgrx.toml [postgres] tested_majors
#   ag_installed_majors        the tested majors present on this machine (packaged,
#                              or built by scripts/build-postgres.sh: stamp present)
#   ag_pgrx_init               `cargo pgrx init --pgNN PG_CONFIG...` for every installed
#                              tested major, unless ~/.pgrx/config.toml (PGRX_HOME)
#                              already names each (init rewrites the whole file,
#                              so one init names them all)
#   ag_bindir                  PostgreSQL's bin directory (from ag_pg_config)
#   ag_cargo_path              add ~/.cargo/bin to PATH if cargo is not on it
#   ag_log MSG...              bold "==> MSG" on stderr
#   ag_die MSG...              print "error: MSG" on stderr and exit 1
#   ag_as_postgres CMD...      run CMD as the postgres OS user (we are root), cwd /,
#                              without RUST_BACKTRACE and without fd 9 (scripts'
#                              lock fd: servers must not inherit it)
#
#   ag_cluster_port NAME       port of cluster NAME (test|demo|bench): env
#                              AG_<NAME>_PORT, else pgrx.toml [NAME_cluster] port
#   ag_cluster_datadir NAME    data dir of cluster NAME: env AG_<NAME>_DATADIR,
#                              else pgrx.toml [NAME_cluster] data_dir, with
#                              "-MAJOR" appended when AG_PG_MAJOR is another
#                              major than the packaged one
#   ag_cluster_start DATADIR PORT [extra postgresql.conf lines...]
#       initdb DATADIR (as postgres, trust auth for local + 127.0.0.1) if it
#       has no cluster yet; (re)write DATADIR/agent_guard.base.conf (port,
#       listen on 127.0.0.1 only, unix socket in DATADIR, no logging collector)
#       and DATADIR/agent_guard.extra.conf (the extra lines, e.g.
#       "shared_preload_libraries = 'agent_guard'"; rewritten on every start,
#       empty when none are given); if the cluster is already running it is
#       stopped first (fast) so the new settings apply; fails clearly if PORT
#       is taken by something else; starts with pg_ctl -l DATADIR/server.log
#       and waits until it accepts connections. Returns non-zero on failure
#       (and prints the tail of server.log).
#   ag_cluster_stop DATADIR [MODE]
#       pg_ctl stop -m MODE (smart|fast|immediate, default fast); quiet no-op
#       when the cluster is not running or does not exist.
#   ag_cluster_running DATADIR success if a postmaster runs on DATADIR
#   ag_psql PORT [psql args...]
#       psql -X -h 127.0.0.1 -p PORT -U postgres [args...] (run as the caller)
#   ag_port_in_use PORT        success if something listens on 127.0.0.1:PORT
#   ag_detach_installed_lib    give the installed agent_guard.so a new inode
#                              (copy + rename) so an install that rewrites it in
#                              place cannot crash servers that have it mapped

ag_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

ag_config() {
  local section=$1 key=$2 file
  file="$(ag_root)/pgrx.toml"
  awk -v want_section="$section" -v want_key="$key" '
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*\[/ { gsub(/[][[:space:]]/, ""); section = $0; next }
    section == want_section {
      line = $0
      sub(/[[:space:]]*#.*$/, "", line)
      n = index(line, "=")
      if (n == 0) next
      k = substr(line, 1, n - 1); v = substr(line, n + 1)
      gsub(/^[[:space:]]+|[[:space:]]+$/, "", k)
      gsub(/^[[:space:]]+|[[:space:]]+$/, "", v)
      gsub(/^"|"$/, "", v)
      if (k == want_key) { print v; found = 1; exit }
    }
    END { if (!found) exit 1 }
  ' "$file" || { echo "pgrx.toml: no [$section] $key" >&2; return 1; }
}

# Put ~/.cargo/bin on PATH when cargo is not found (fresh rustup installs).
ag_cargo_path() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    export PATH
  fi
}

ag_pg_config() {
  local major=${1:-}
  if [ -z "$major" ]; then
    if [ -n "${AG_PG_CONFIG:-}" ]; then printf '%s\n' "$AG_PG_CONFIG"; else ag_config postgres pg_config; fi
  elif [ "$major" = "$(ag_config postgres major)" ]; then
    ag_config postgres pg_config
  else
    printf '%s/%s/bin/pg_config\n' "$(ag_config postgres source_prefix)" "$major"
  fi
}

ag_use_major() {
  AG_PG_MAJOR=$1
  AG_PG_CONFIG=$(ag_pg_config "$1")
  export AG_PG_MAJOR AG_PG_CONFIG
}

ag_pg_major() { "$(ag_pg_config)" --version | sed -nE 's/^PostgreSQL ([0-9]+).*/\1/p'; }

ag_tested_majors() { ag_config postgres tested_majors; }

ag_installed_majors() {
  local m packaged
  packaged=$(ag_config postgres major)
  for m in $(ag_tested_majors); do
    if [ "$m" = "$packaged" ]; then
      [ -x "$(ag_pg_config "$m")" ] && echo "$m"
    else
      [ -f "$(ag_config postgres source_prefix)/$m/.agent_guard-build" ] && [ -x "$(ag_pg_config "$m")" ] && echo "$m"
    fi
  done
  return 0
}

ag_pgrx_init() {
  local pgrx_home=${PGRX_HOME:-$HOME/.pgrx} m pc args=() need=0
  for m in $(ag_installed_majors); do
    pc=$(ag_pg_config "$m")
    args+=("--pg$m" "$pc")
    grep -Eq "^[[:space:]]*pg$m[[:space:]]*=[[:space:]]*\"$pc\"" "$pgrx_home/config.toml" 2>/dev/null || need=1
  done
  [ $need = 1 ] || return 0
  ag_log "cargo pgrx init ${args[*]}"
  cargo pgrx init "${args[@]}" >/tmp/agent_guard-pgrx-init.log 2>&1 \
    || { cat /tmp/agent_guard-pgrx-init.log >&2; return 1; }
}

ag_bindir() { "$(ag_pg_config)" --bindir; }

ag_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ag_die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Servers started from here must not print Rust backtraces into error
# details (they would differ from run to run and leak internals to clients).
ag_as_postgres() {
  local clean=(env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE)
  if [ "$(id -un)" = postgres ]; then
    (cd / && "${clean[@]}" "$@" 9>&-)
  elif [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1; then
    (cd / && "${clean[@]}" runuser -u postgres -- "$@" 9>&-)
  else
    (cd / && "${clean[@]}" sudo -n -u postgres -- "$@" 9>&-)
  fi
}

ag_cluster_port() {
  local name=$1 var
  var="AG_$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')_PORT"
  if [ -n "${!var:-}" ]; then printf '%s\n' "${!var}"; else ag_config "${name}_cluster" port; fi
}

ag_cluster_datadir() {
  local name=$1 var dir
  var="AG_$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')_DATADIR"
  if [ -n "${!var:-}" ]; then dir=${!var}; else dir=$(ag_config "${name}_cluster" data_dir) || return 1; fi
  case $dir in /*) ;; *) dir="$(ag_root)/$dir" ;; esac
  if [ -z "${!var:-}" ] && [ -n "${AG_PG_MAJOR:-}" ] && [ "$AG_PG_MAJOR" != "$(ag_config postgres major)" ]; then
    dir="$dir-$AG_PG_MAJOR"
  fi
  printf '%s\n' "$dir"
}

ag_port_in_use() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    ss -Htln "sport = :$port" 2>/dev/null | grep -q . && return 0
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

ag_cluster_running() {
  local datadir=$1
  [ -f "$datadir/PG_VERSION" ] || return 1
  ag_as_postgres "$(ag_bindir)/pg_ctl" -D "$datadir" status >/dev/null 2>&1
}

# Make DATADIR's parent (root-owned, traversable) and DATADIR itself (postgres, 0700).
_ag_prepare_datadir() {
  local datadir=$1 parent
  parent=$(dirname "$datadir")
  if [ ! -d "$parent" ]; then
    mkdir -p "$parent" && chmod 755 "$parent" || return 1
  fi
  if [ ! -d "$datadir" ]; then
    mkdir -p "$datadir" || return 1
  fi
  chown postgres:postgres "$datadir" && chmod 700 "$datadir"
}

# Write FILE (inside a postgres-owned data dir) from stdin, owned by postgres.
_ag_write_pgfile() {
  local file=$1
  cat >"$file" || return 1
  chown postgres:postgres "$file"
}

ag_cluster_start() {
  local datadir=$1 port=$2 bindir line
  shift 2
  case $datadir in /*) ;; *) echo "ag_cluster_start: DATADIR must be absolute: $datadir" >&2; return 1 ;; esac
  [[ $port =~ ^[0-9]+$ ]] || { echo "ag_cluster_start: bad port '$port'" >&2; return 1; }
  bindir=$(ag_bindir) || return 1
  id postgres >/dev/null 2>&1 || { echo "ag_cluster_start: no 'postgres' OS user (run scripts/setup.sh)" >&2; return 1; }

  if [ ! -f "$datadir/PG_VERSION" ]; then
    if [ -d "$datadir" ] && [ -n "$(ls -A "$datadir" 2>/dev/null)" ]; then
      echo "ag_cluster_start: $datadir is not empty but holds no cluster; remove it first" >&2
      return 1
    fi
    _ag_prepare_datadir "$datadir" || { echo "ag_cluster_start: cannot create $datadir" >&2; return 1; }
    ag_log "initdb $datadir"
    if ! ag_as_postgres "$bindir/initdb" -D "$datadir" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=trust >"$datadir.initdb.log" 2>&1; then
      cat "$datadir.initdb.log" >&2
      echo "ag_cluster_start: initdb failed for $datadir" >&2
      return 1
    fi
    rm -f "$datadir.initdb.log"
    _ag_write_pgfile "$datadir/pg_hba.conf" <<'EOF' || return 1
# Written by agent_guard's scripts/lib.sh: trust, local socket and 127.0.0.1 only.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
local   replication all               trust
host    replication all 127.0.0.1/32  trust
EOF
    printf '\n# agent_guard scripts\ninclude_if_exists = '\''agent_guard.base.conf'\''\ninclude_if_exists = '\''agent_guard.extra.conf'\''\n' \
      >>"$datadir/postgresql.conf"
  fi

  if ag_cluster_running "$datadir"; then
    ag_log "cluster $datadir is running; restarting it"
    ag_cluster_stop "$datadir" fast || return 1
  fi

  if ag_port_in_use "$port"; then
    echo "ag_cluster_start: port $port on 127.0.0.1 is already in use by another process;" \
         "free it or choose another port (AG_TEST_PORT / AG_DEMO_PORT / AG_BENCH_PORT)" >&2
    return 1
  fi

  _ag_write_pgfile "$datadir/agent_guard.base.conf" <<EOF || return 1
# Written by agent_guard's scripts/lib.sh on every start; do not edit.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$datadir'
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  {
    echo "# Written by agent_guard's scripts/lib.sh on every start (ag_cluster_start extra lines)."
    for line in "$@"; do printf '%s\n' "$line"; done
  } | _ag_write_pgfile "$datadir/agent_guard.extra.conf" || return 1

  if [ ! -e "$datadir/server.log" ]; then
    : >"$datadir/server.log" && chown postgres:postgres "$datadir/server.log"
  fi
  if ! ag_as_postgres "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 120 start >/dev/null; then
    echo "ag_cluster_start: PostgreSQL failed to start on port $port; last lines of $datadir/server.log:" >&2
    tail -n 30 "$datadir/server.log" >&2
    return 1
  fi
  local i
  for i in $(seq 1 60); do
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && return 0
    sleep 0.5
  done
  echo "ag_cluster_start: server on port $port does not accept connections; see $datadir/server.log" >&2
  return 1
}

ag_detach_installed_lib() {
  local lib
  lib="$("$(ag_pg_config)" --pkglibdir)/agent_guard.so"
  [ -f "$lib" ] || return 0
  cp -p "$lib" "$lib.detach.$$" && mv -f "$lib.detach.$$" "$lib"
}

ag_cluster_stop() {
  local datadir=$1 mode=${2:-fast}
  ag_cluster_running "$datadir" || return 0
  ag_as_postgres "$(ag_bindir)/pg_ctl" -D "$datadir" -m "$mode" -w -t 120 stop >/dev/null
}

ag_psql() {
  local port=$1
  shift
  "$(ag_bindir)/psql" -X -h 127.0.0.1 -p "$port" -U postgres "$@"
}
