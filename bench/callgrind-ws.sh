#!/usr/bin/env bash
# Usage: bench/callgrind-ws.sh "<server command>" <websocket path, e.g. /async/ws> [port] [secs]
# (as bench/callgrind.sh: the command is run with `--bind 127.0.0.1:PORT` appended: the mixed
# example, or "bench/target/release/amphi-bench serve axum"). Needs valgrind and a release
# build of the harness (its `ws-load` client). Prints the server's user-space instructions per
# websocket echo round trip (callgrind), over SECS seconds of 4 connections after a 1 s warm-up.
set -euo pipefail
bin=$1; path=$2; port=${3:-18200}; secs=${4:-5}
here=$(cd "$(dirname "$0")" && pwd)
load="$here/target/release/amphi-bench ws-load --addr 127.0.0.1:$port --path $path --conns 4"
out=$(mktemp -d)
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out/cg.%p \
  $bin --bind 127.0.0.1:$port >$out/server.log 2>&1 &
vg=$!
for i in $(seq 1 60); do grep -q listening $out/server.log 2>/dev/null && break; sleep 0.5; done
$load --secs 1 >/dev/null
callgrind_control -i on $vg >/dev/null
summary=$($load --secs $secs)
callgrind_control -i off $vg >/dev/null
callgrind_control -d $vg >/dev/null
sleep 1
kill -INT $vg; sleep 1; kill -INT $vg 2>/dev/null || true
for i in $(seq 1 60); do kill -0 $vg 2>/dev/null || break; sleep 0.5; done
kill -9 $vg 2>/dev/null || true
n=$(echo "$summary" | awk '/^AMPHI_BENCH/ {print $2}')
total=$(cat $out/cg.* | grep -E "^(summary|totals):" | awk '{s+=$2} END {print s}')
echo "round trips: $n"
echo "instructions/round trip: $(( total / n ))  (total $total, dir $out)"
