#!/usr/bin/env bash
# Install what building, running and testing the headend needs, on Debian or Ubuntu,
# as root. Idempotent: re-running installs nothing new.
#
#   scripts/setup.sh            everything (build, run, test)
#   NATT_SETUP_QUICK=1 ...      skip cargo-fuzz
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh: run as root (it installs packages and sets up hugepages)" >&2
        exit 1
    fi
}

APT_PACKAGES=(
    build-essential pkg-config clang libclang-dev
    dpdk dpdk-dev libpcap-dev libipsec-mb-dev
    tshark
    strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins
    nftables conntrack
    python3 python3-venv python3-pip
    iproute2 ethtool curl ca-certificates
)

install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "apt packages present"
        return
    fi
    need_root
    log "apt-get install ${missing[*]}"
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    # strongSwan (the IKE daemons of tests/dataplane/test_ike.py, which run their own in
    # network namespaces) comes with a system service: nothing we install is started
    # now (policy-rc.d) or at boot (disabled below, only if this run installed it).
    local policy=/usr/sbin/policy-rc.d placed=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
    fi
    local status=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || status=$?
    if [ "$placed" = 1 ]; then rm -f "$policy"; fi
    if [ "$status" != 0 ]; then exit "$status"; fi
    if [[ " ${missing[*]} " == *" strongswan-charon "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable strongswan-starter.service >/dev/null 2>&1 || true
    fi
}

install_rust() {
    if command -v cargo >/dev/null 2>&1; then
        log "cargo present: $(cargo --version)"
        return
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        return
    fi
    log "installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
}

install_python() {
    local venv="$ROOT/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c 'import scapy, pytest, cryptography, prometheus_client' 2>/dev/null; then
        log "pip install scapy pytest cryptography prometheus_client (into .venv)"
        "$venv/bin/pip" install -q --disable-pip-version-check 'scapy==2.8.0' 'pytest>=7' 'cryptography>=41' 'prometheus_client>=0.17'
    fi
}

install_cargo_fuzz() {
    [ "${NATT_SETUP_QUICK:-0}" = 1 ] && return
    if cargo fuzz --version >/dev/null 2>&1; then
        log "cargo-fuzz present"
        return
    fi
    log "cargo install cargo-fuzz"
    cargo install -q --locked cargo-fuzz
}

install_apt
install_rust
install_python
install_cargo_fuzz
log "ready"
