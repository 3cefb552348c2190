#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real (PostgreSQL, the SLURM daemons with
# accounting, Chromium for report screenshots) when any is missing; a no-op check when all are present.
# apt-get needs root; without root it only says what to install.
set -euo pipefail

PACKAGES=(
    postgresql                                               # tests/pg.py: a throwaway server
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server  # slurm/testcluster.sh
    chromium fonts-dejavu-core                               # headless screenshots of the HTML report
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
        missing+=("$pkg")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "system packages missing: ${missing[*]}; install them as root: apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 2
fi

echo "installing system packages: ${missing[*]}"
# Package scripts must not start services (no init system in containers; the tests start the
# daemons themselves): a policy-rc.d that says "no" for the duration of the install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt-get (a second agent, unattended upgrades) rather than fail on its lock.
apt=(apt-get -qq -o DPkg::Lock::Timeout=600)
"${apt[@]}" update
"${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
