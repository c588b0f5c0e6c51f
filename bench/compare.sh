#!/usr/bin/env bash
# ACMS against nats-server, side by side: installs what the comparison needs (nats-server and a
# font for the chart, from Debian's packages), builds acms and acms-bench in release mode, and
# runs `acms-bench compare` with this script's arguments, e.g.
#
#   bash bench/compare.sh            # full run: N = 2,000,000, 5 rounds, 1M-user scale step
#   bash bench/compare.sh --quick    # N = 200,000, 3 rounds, no scale step (a few minutes)
#
# Both systems get the same client policy by default, so the table compares the brokers: the
# sender hands over about 64 KiB of messages at a time (NATS: PUB commands written by a raw
# protocol driver, one write per batch; ACMS: Cluster::send_batch) and the receiver takes
# whole reads (NATS: MSG frames parsed from 64 KiB+ reads; ACMS: Events::recv_batch). The
# round trips use the client libraries (async-nats request/reply; Cluster::send_to_user).
# --nats-client async-nats, --acms-send single, --nats-rtt-client raw, --batch-bytes B change
# that; the table's header and results.json say which policy ran.
#
# --systems acms,nats,cross-hub adds two hubs on a three-node NATS cluster (sender on one,
# receiver on the other) and the key-value login step (--kv-logins N users); see docs/SCALING.md.
#
# Results (results.json, chart.png, logs) go to bench/results/<UTC timestamp> unless --out says
# otherwise; the last line printed is the summary `ratio_64=R ratio_1k=R rtt_p50_ratio=R ...`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release -p acms -p acms-bench
exec target/release/acms-bench compare "$@"
