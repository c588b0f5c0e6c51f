#!/usr/bin/env bash
# Runs the whole test suite: builds the programs the end-to-end tests start as processes, then
# the documentation examples, then every test of the workspace in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

cargo build --workspace --bins --examples
cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast
