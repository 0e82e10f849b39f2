#!/usr/bin/env bash
# Usage: bench/callgrind.sh "<server command>" <path, e.g. /async/hello> [port] [requests]
# (the command is run with `--bind 127.0.0.1:PORT` appended: the mixed example, or
# "bench/target/release/amphi-bench serve hyper"). Needs valgrind and h2load.
# Prints user-space instructions per request of the server (callgrind, deterministic-ish),
# measured over N requests on 4 keep-alive connections after 500 warm-up requests.
set -euo pipefail
bin=$1; path=$2; port=${3:-18100}; n=${4:-5000}
out=$(mktemp -d)
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out/cg.%p \
  $bin --bind 127.0.0.1:$port >$out/server.log 2>&1 &
vg=$!
for i in $(seq 1 60); do grep -q listening $out/server.log 2>/dev/null && break; sleep 0.5; done
h2load --h1 -n 500 -c 4 http://127.0.0.1:$port$path >/dev/null
callgrind_control -i on $vg >/dev/null
h2load --h1 -n $n -c 4 http://127.0.0.1:$port$path | grep -E "^requests:"
callgrind_control -i off $vg >/dev/null
callgrind_control -d $vg >/dev/null
sleep 1
kill -INT $vg; sleep 1; kill -INT $vg 2>/dev/null || true
for i in $(seq 1 60); do kill -0 $vg 2>/dev/null || break; sleep 0.5; done
kill -9 $vg 2>/dev/null || true
total=$(cat $out/cg.* | grep -E "^(summary|totals):" | awk '{s+=$2} END {print s}')
echo "instructions/request: $(( total / n ))  (total $total, dir $out)"
