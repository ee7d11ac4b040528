#!/usr/bin/env bash
# The main job: a three-generation active-learning campaign on ethanol (PySCF HF/STO-3G
# oracle, 4-member PaiNN ensemble, NN-MD + adversarial sampling) on this machine, recorded
# in a fresh SQLite database alflow-demo/alflow.db, then a few questions asked of it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rm -rf alflow-demo && mkdir -p alflow-demo
export ALFLOW_DB_URL="sqlite:///$PWD/alflow-demo/alflow.db"
alflow run workflows/ethanol.yaml --workdir alflow-demo/run ${ALFLOW_DEMO_FLAGS:-}
echo; echo "Held-out error per generation:"; alflow query errors
echo; echo "Oracle cost per generation:"; alflow query oracle-cost
echo; echo "What the samplers found:"; alflow query sampling
