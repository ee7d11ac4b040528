#!/usr/bin/env bash
# Wait for the database named by ALFLOW_DB_URL (PostgreSQL: until it accepts connections,
# at most ALFLOW_DB_WAIT_S seconds), migrate it to the newest schema, then run the command.
set -euo pipefail

url=${ALFLOW_DB_URL:-}
wait_s=${ALFLOW_DB_WAIT_S:-60}

if [[ "$url" == postgresql* ]]; then
  # pg_isready takes a libpq URI; strip a SQLAlchemy driver suffix such as +psycopg
  libpq_url=$(printf '%s' "$url" | sed -E 's#^postgresql\+[a-z0-9_]+://#postgresql://#')
  for ((i = 0; i < wait_s; i++)); do
    if pg_isready -q -d "$libpq_url"; then break; fi
    sleep 1
  done
  if ! pg_isready -q -d "$libpq_url"; then
    echo "alflow-entrypoint: database not reachable after ${wait_s}s" >&2
    exit 1
  fi
fi

if [ "${ALFLOW_SKIP_MIGRATE:-0}" != "1" ]; then
  alflow db upgrade >&2
fi

exec "$@"
