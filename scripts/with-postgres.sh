#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server on 127.0.0.1, then stops the server.
#
#   scripts/with-postgres.sh cargo nextest run --workspace
#
# The server lives in a temporary directory (initdb + pg_ctl, trust auth on loopback only, fsync
# off: it is for tests; WIGGUM_PG_DURABLE=1 keeps fsync on, for benchmarks) and is stopped and deleted when the command ends, however it ends. The
# command sees WIGGUM_TEST_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres; the PostgreSQL
# tests create their own databases under it.
#
# - WIGGUM_TEST_PG_URL already set: the command runs against that server; nothing is started.
# - No PostgreSQL binaries: with CI=true (or WIGGUM_INSTALL_POSTGRES=1) Debian's `postgresql`
#   package is installed with apt-get; otherwise the command runs without a server and the
#   PostgreSQL tests skip loudly (in CI they fail instead).
# - As root, the server runs as the `postgres` user (initdb refuses root); otherwise as you.
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
if [ -n "${WIGGUM_TEST_PG_URL:-}" ]; then
  exec "$@"
fi

find_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 &&
    { dirname "$(command -v initdb)"; return 0; }
  return 1
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ] && { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ] || [ "${WIGGUM_INSTALL_POSTGRES:-}" = 1 ]; }; then
  echo "with-postgres: installing Debian's postgresql package" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  bindir=$(find_bindir || true)
fi
if [ -z "$bindir" ]; then
  echo "with-postgres: PostgreSQL is not installed (apt-get install postgresql): running without it;" \
       "the PostgreSQL tests will skip (with CI=true they fail)" >&2
  exec "$@"
fi

run_as=()
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
  fi
  run_as=(runuser -u postgres --)
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/wiggum-pg.XXXXXX")
chmod 755 "$dir"
[ "${#run_as[@]}" -gt 0 ] && chown postgres: "$dir"
# WIGGUM_PG_DURABLE=1 keeps PostgreSQL's durable defaults (fsync, synchronous_commit,
# full_page_writes on), for benchmarks whose figures must hold on a real server; by default the
# throwaway server skips them (faster tests; nothing in it outlives the run).
durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
durable_note=" (fsync off)"
if [ "${WIGGUM_PG_DURABLE:-0}" = 1 ]; then durability=""; durable_note=" (durable: fsync on)"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
  "${run_as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${run_as[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
  { cat "$dir/initdb.log" >&2; echo "with-postgres: initdb failed" >&2; exit 1; }
"${run_as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir $durability-c max_connections=400" \
  start >/dev/null ||
  { cat "$dir/server.log" >&2; echo "with-postgres: the server did not start" >&2; exit 1; }

# `$WIGGUM_TEST_PG_CTL stop|start|restart`: stops or starts this server (fast mode, waits), for
# the tests of what happens when the database goes away (they start a server of their own).
printf '#!/bin/sh\nexec %s "%s" -D "%s" -l "%s" -m fast -w -t 60 -o "%s" "$@"\n' \
  "${run_as[*]}" "$bindir/pg_ctl" "$dir/data" "$dir/server.log" \
  "-c listen_addresses=127.0.0.1 -p $port -k $dir $durability-c max_connections=400" \
  >"$dir/pg-ctl"
chmod 755 "$dir/pg-ctl"
export WIGGUM_TEST_PG_CTL="$dir/pg-ctl"
export WIGGUM_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}')$durable_note on 127.0.0.1:$port (WIGGUM_TEST_PG_URL=$WIGGUM_TEST_PG_URL)" >&2
set +e
"$@"
rc=$?
set -e
exit $rc
