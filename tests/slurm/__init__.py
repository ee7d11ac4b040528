"""Test-only helpers for a private one-node SLURM cluster (see cluster.sh, cluster.py)."""
