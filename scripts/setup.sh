#!/usr/bin/env bash
# One-time (idempotent) host set-up for zerotrace, as root:
#   - Debian's bcc (python3-bpfcc, libbpfcc, bpftool) and the real servers the tests trace
#   - kernel headers for bcc when the running kernel ships none (Debian's linked in)
#   - tracefs and debugfs mounted
#   - .venv/ (system site packages, so `import bcc` works) with zerotrace installed
# Safe to run again: each step checks before it acts.  Set ZT_SETUP_QUIET=1 to hush.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { [ "${ZT_SETUP_QUIET:-0}" = 1 ] || echo "setup: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (eBPF, tracefs and apt need it); try: sudo $0" >&2
    exit 1
fi

# Packages: the agent's own needs, then the real programs that tests and the demo trace.
# python3-dev, gcc and libc6-dev: pip compiles the agent's Cython modules (setup.py).
AGENT_PKGS=(python3-bpfcc bpfcc-tools libbpfcc bpftool linux-headers-amd64 iproute2 python3-venv make
            python3-dev gcc libc6-dev)
TEST_PKGS=(redis-server memcached nginx-light dnsmasq-base mariadb-server postgresql haproxy golang-go
           wrk nodejs curl dnsutils openjdk-17-jdk-headless chromium iptables libmariadb-java libpostgresql-jdbc-java golang-github-lib-pq-dev
           prometheus libssl-dev)  # libssl-dev: the static TLS client test, bench/tls_loop.c
missing=()
for p in "${AGENT_PKGS[@]}" "${TEST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # Services must not start on install: tests start what they need, on their own ports.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.zerotrace
    [ -e /usr/sbin/policy-rc.d ] || { cp /usr/sbin/policy-rc.d.zerotrace /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; rm_policy=1; }
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ "${rm_policy:-0}" = 1 ] && rm -f /usr/sbin/policy-rc.d
    rm -f /usr/sbin/policy-rc.d.zerotrace
fi

# Kernel headers: bcc looks in /lib/modules/$(uname -r)/{build,source}.  Only tracepoint
# layouts (from tracefs) and helper prototypes come from them; struct offsets come from
# BTF (agent/probes/btf.py), so Debian's headers of another kernel are good enough.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$hdr" ] && [ -n "$common" ]; then
        say "linking $hdr as the headers of $(uname -r)"
        mkdir -p "$kdir"
        ln -sfn "$hdr" "$kdir/build"
        ln -sfn "$common" "$kdir/source"
    fi
fi

mountpoint -q /sys/kernel/tracing || { say "mounting tracefs"; mount -t tracefs nodev /sys/kernel/tracing; }
mountpoint -q /sys/kernel/debug || { say "mounting debugfs"; mount -t debugfs nodev /sys/kernel/debug; }
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

# Virtual environment: Debian's python (bcc's module is built for it), system site
# packages visible.  Re-installs only when pyproject.toml, setup.py or a compiled
# source under agent/ or server/ (*.pyx, *.pxd, hand-written *.c/*.h) changed: the
# install is what compiles them.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.zerotrace-installed
compiled_sources() {
    # Generated C (a .c beside its .pyx) is output, not source.
    find agent server \( -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' \) -type f |
        while read -r f; do
            case "$f" in *.c) [ -e "${f%.c}.pyx" ] && continue ;; esac
            echo "$f"
        done | LC_ALL=C sort
}
want=$({ sha256sum pyproject.toml setup.py; compiled_sources | xargs -r sha256sum; } |
       sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing zerotrace and its dependencies into .venv"
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[test,server]'; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above, also in $log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
.venv/bin/python -c "import bcc" 2>/dev/null || { echo "setup: bcc does not import in .venv" >&2; exit 1; }

# The speedscope app (npm registry), which tests/server/test_http_browser.py opens in
# Chromium with the server's flame-graph JSON; installed here so tests need no registry.
speedscope=1.25.0  # keep equal to SPEEDSCOPE_VERSION in that test
if [ ! -d .venv/share/speedscope/node_modules/speedscope/dist/release ]; then
    say "installing the speedscope app $speedscope (npm)"
    npm install -q --no-audit --no-fund --prefix .venv/share/speedscope "speedscope@$speedscope" >/dev/null 2>&1 ||
        { echo "setup: npm install speedscope@$speedscope failed" >&2; exit 1; }
fi
say "ready"
