#!/usr/bin/env bash
# Before/after comparison of two builds of ACMS, interleaved: runs `acms-bench compare` from
# BEFORE and AFTER alternately (before, after, before, after, ...), ROUNDS times each, so both
# see the same machine load, then prints every run and the medians.
#
#   bash bench/ab.sh BEFORE_DIR AFTER_DIR ROUNDS [compare options...]
#   bash bench/ab.sh /tmp/before target/release 3 --quick --systems acms
#
# With `--systems acms,cross-hub`, the cross-hub rows and the ratio of the two come with them.
# BEFORE_ARGS and AFTER_ARGS, if set, are more options for one side only: the same build against
# two nats-servers, say (BEFORE_ARGS="--nats-bin /usr/sbin/nats-server" AFTER_ARGS="--nats-bin
# $(scripts/nats-current.sh)").
# Each DIR holds an `acms` and an `acms-bench` built in release mode from the commit to compare
# (the bench links the app-server library, so both halves of a change are measured). Results go
# to bench/results/<UTC timestamp>-ab/{before,after}-N/ and the table to ab.txt beside them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 3 ]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
before=$1 after=$2 rounds=$3
shift 3
for dir in "$before" "$after"; do
    for bin in acms acms-bench; do
        [ -x "$dir/$bin" ] || { echo "no $bin in $dir" >&2; exit 2; }
    done
done

out="bench/results/$(date -u +%Y%m%dT%H%MZ)-ab"
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
    for side in before after; do
        dir=$before extra=${BEFORE_ARGS:-}
        [ "$side" = after ] && dir=$after extra=${AFTER_ARGS:-}
        echo "== $side $round" >&2
        # shellcheck disable=SC2086 # one word per option
        "$dir/acms-bench" compare --acms-bin "$dir/acms" --out "$out/$side-$round" "$@" $extra \
            > "$out/$side-$round.log" 2>&1 || { tail -20 "$out/$side-$round.log" >&2; exit 1; }
        # One chart per run says nothing here; the table below is the result.
        rm -f "$out/$side-$round/chart.png"
    done
done

python3 - "$out" "$rounds" <<'EOF' | tee "$out/ab.txt"
import json, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])

def acms_runs(path):
    """Per ACMS run of one compare: receive msg/s by size, hub CPU µs/msg at 64 B, RTT."""
    results = json.load(open(path))["results"]
    rows = []
    single = {}
    for row in results["throughput"]:
        if row["system"] == "acms" and not row.get("error"):
            rows.append(("recv", row["size"], row["recv"]["msg_per_s"]))
            rows.append(("cpu", row["size"], row["broker"]["cpu_us_per_msg"]))
            single[row["size"]] = row["recv"]["msg_per_s"]
    for row in results["throughput"]:
        if row["system"] == "cross-hub" and not row.get("error"):
            size = row["size"]
            rows.append(("xrecv", size, row["recv"]["msg_per_s"]))
            for part in row["broker"]["parts"]:
                kind = {"hub A": "xcpu_a", "hub B": "xcpu_b"}.get(part["name"], "xcpu_nats")
                rows.append((kind, size, part["cpu_us_per_msg"]))
            if size in single:
                rows.append(("xratio", size, row["recv"]["msg_per_s"] / single[size]))
    for row in results["rtt"]:
        if row["system"] == "acms" and not row.get("error"):
            rows.append(("p50", 0, row["rtt"]["p50_us"]))
            rows.append(("p99", 0, row["rtt"]["p99_us"]))
    return rows

metrics = {}
for side in ("before", "after"):
    for n in range(1, rounds + 1):
        for kind, size, value in acms_runs(f"{out}/{side}-{n}/results.json"):
            metrics.setdefault((kind, size), {}).setdefault(side, []).append(value)

names = {
    "recv": "receive msg/s", "cpu": "hub CPU µs/msg", "p50": "rtt p50 µs", "p99": "rtt p99 µs",
    "xrecv": "cross-hub receive msg/s", "xcpu_a": "cross-hub hub A CPU µs/msg",
    "xcpu_b": "cross-hub hub B CPU µs/msg", "xcpu_nats": "cross-hub NATS CPU µs/msg",
    "xratio": "cross-hub / single-hub receive",
}
print(f"# {rounds} interleaved compare runs per side; every ACMS run of each, medians")
print("| metric | before | after | change |")
print("| --- | --- | --- | --- |")
for (kind, size), sides in sorted(metrics.items()):
    b, a = statistics.median(sides["before"]), statistics.median(sides["after"])
    label = names[kind] + (f" at {size} B" if size else "")
    fmt = (lambda v: f"{v / 1e6:.2f} M") if kind in ("recv", "xrecv") else (lambda v: f"{v:.3g}")
    print(f"| {label} | {fmt(b)} | {fmt(a)} | {100 * (a - b) / b:+.1f} % |")
print()
for (kind, size), sides in sorted(metrics.items()):
    for side in ("before", "after"):
        values = " ".join(f"{v:.4g}" for v in sides[side])
        print(f"{kind} {size} {side}: {values}")
EOF
echo "results: $out" >&2
