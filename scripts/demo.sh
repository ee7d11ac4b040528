#!/usr/bin/env bash
# The main job until the campaign engine lands: validate the ethanol campaign spec, create
# the provenance database (SQLite, ./alflow-demo/alflow.db) and show what it can answer.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p alflow-demo
export ALFLOW_DB_URL="sqlite:///$PWD/alflow-demo/alflow.db"
alflow spec validate workflows/ethanol.yaml
alflow db upgrade
alflow query --list
