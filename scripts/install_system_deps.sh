#!/usr/bin/env bash
# System packages some tests use: Chromium (the report renders in a real browser) and a
# single-node SLURM (site configs are tested against a real scheduler). Installed with
# apt-get when we are root; otherwise the tests that need them say why they skip.
set -uo pipefail
pkgs=(chromium slurmctld slurmd slurm-client munge)
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld slurmd slurm-client munge)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "not root or no apt-get: ${missing[*]} not installed (their tests will skip)" >&2
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "apt-get could not install ${missing[*]} (their tests will skip)" >&2
exit 0
