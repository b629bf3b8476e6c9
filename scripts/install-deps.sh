#!/usr/bin/env bash
# Install the Debian packages Tern builds and tests with. Idempotent: when every
# package is already installed it touches nothing (no apt-get update), so reruns are fast.
#
# The postfix package is only for smtp-source/smtp-sink: debconf is told "No configuration"
# first, so the system's own Postfix is never configured or started. systemd is there for
# systemd-analyze (test_systemd_unit.py); installing it starts nothing where it is not PID 1.
set -euo pipefail

PACKAGES=(
    libuv1-dev libc-ares-dev libssl-dev zlib1g-dev libisal-dev libcurl4-openssl-dev libhiredis-dev openssl ca-certificates pkg-config
    swaks libnet-ssleay-perl dnsmasq-base postfix
    python3 python3-pytest python3-aiosmtpd python3-prometheus-client
    python3-dkim  # dkimpy: the independent DKIM verifier of the tests
    iproute2 util-linux
    haproxy redis-server  # a load balancer and the shared state of a cluster (issue 20); started by tests only
    systemd  # only systemd-analyze, to verify etc/systemd/tern.service; nothing is started
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
