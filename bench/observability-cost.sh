#!/usr/bin/env bash
# Usage: bench/observability-cost.sh [mixed binary] [pairs] [seconds]
# What metrics + request spans cost on GET /async/hello and /sync/hello: one `mixed` binary
# (default target/release/examples/mixed), run with them on (its default) and off
# (--no-metrics), in pairs (which runs first alternates), each run its own fresh server, wrk with one
# thread and 64 keep-alive connections on loopback after a 1 s warm-up. Prints requests/s and
# the server's CPU time per request (user + system, from /proc) per run, and the on/off ratios
# of each pair. RUST_LOG=warn, as the published benchmarks run.
set -euo pipefail
bin=${1:-target/release/examples/mixed}; pairs=${2:-3}; secs=${3:-5}; port=18200
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks
rate() { # <flags> <path>: "requests/s CPU-µs-per-request" of one fresh server
  local log out; log=$(mktemp)
  RUST_LOG=warn $bin --bind 127.0.0.1:$port $1 >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q listening "$log" 2>/dev/null && break; sleep 0.05; done
  timeout 30 wrk -t1 -c64 -d1s "http://127.0.0.1:$port$2" >/dev/null
  local before; before=$(cpu $pid)
  out=$(timeout 60 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port$2")
  local after; after=$(cpu $pid)
  kill -INT $pid; wait $pid 2>/dev/null || true; rm -f "$log"
  local n rps; n=$(awk '/requests in/ {print $1}' <<<"$out"); rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  awk -v r="$rps" -v n="$n" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%s %.2f", r, t / hz * 1e6 / n}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
for path in ${PATHS:-/async/hello /sync/hello}; do
  echo "$path"
  for i in $(seq 1 "$pairs"); do
    # Which goes first alternates from pair to pair, so a drift of the machine favours neither.
    if (( i % 2 )); then on=$(rate "" "$path"); off=$(rate "--no-metrics" "$path")
    else off=$(rate "--no-metrics" "$path"); on=$(rate "" "$path"); fi
    read -r on_rps on_cpu <<<"$on"; read -r off_rps off_cpu <<<"$off"
    echo "  pair $i: on $on_rps req/s $on_cpu µs CPU/req, off $off_rps req/s $off_cpu µs CPU/req;" \
      "on/off: requests/s $(ratio "$on_rps" "$off_rps"), CPU/request $(ratio "$on_cpu" "$off_cpu")"
  done
done
