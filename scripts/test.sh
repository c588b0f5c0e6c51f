#!/usr/bin/env bash
# Runs the whole test suite: builds the programs the end-to-end tests start as processes, then
# runs every test of the workspace in parallel, then the documentation examples.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

cargo build --workspace --bins --examples
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
