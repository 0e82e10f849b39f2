#!/usr/bin/env bash
# Usage: bench/paired.sh [-r rounds] [-d seconds] [-c connections] [-p port] LABEL=COMMAND... -- PATH...
#   e.g. bench/paired.sh -r 4 base=/work/bin/mixed-base head="/work/bin/mixed-head --no-metrics" \
#          -- /async/hello /sync/hello
# Interleaved runs of several servers: for each path, `rounds` rounds; each round runs every
# server once, each run its own fresh server (started in a process group of its own, so a
# supervisor's workers count too), wrk with one thread and `connections` keep-alive connections
# on loopback for `seconds` after a 1 s warm-up. The order of the servers turns round by round
# (A B C, B C A, C A B, ...), so a drift of the machine favours none of them. The first label is
# the baseline.
# COMMAND gets `--bind 127.0.0.1:PORT` appended, unless it contains {addr}, which is replaced.
# A server is ready when its log says "listening" (any case) and GET PATH answers.
# Prints per run: requests/s, the server's CPU per request (user + system over every process of
# its group, from /proc) and errors (socket errors + non-2xx); then per path and server: the
# medians, the median of the per-round ratios to the baseline and the ratio of the medians.
# MEM=1: after each measured run, before stopping the server, prints RSS and PSS
# (/proc/PID/smaps_rollup) of every process of its group and their sums.
# RUST_LOG=warn unless set. Every wrk is bounded by timeout; servers get SIGINT, then SIGKILL.
set -euo pipefail
rounds=4; secs=5; conns=64; port=18300
while getopts "r:d:c:p:" o; do
  case $o in r) rounds=$OPTARG ;; d) secs=$OPTARG ;; c) conns=$OPTARG ;; p) port=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
labels=(); cmds=()
while (($#)) && [[ $1 != -- ]]; do labels+=("${1%%=*}"); cmds+=("${1#*=}"); shift; done
[[ ${1:-} == -- ]] && shift
paths=("$@")
((${#labels[@]} && ${#paths[@]})) || { sed -n 2,4p "$0"; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
export RUST_LOG=${RUST_LOG:-warn}
hz=$(getconf CLK_TCK)
addr=127.0.0.1:$port

group() { # <pgid>: the pids of that process group
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$1" '{ pid = $1; sub(/^.*\) /, ""); if ($3 == g) print pid }'
}
cpu() { # <pgid>: user + system clock ticks of every live process of the group
  local t=0 p
  for p in $(group "$1"); do
    t=$((t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
mem() { # <pgid> <label>: RSS and PSS of every process of the group
  local p rss pss tr=0 tp=0 line=""
  for p in $(group "$1"); do
    rss=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    line+=" $p($(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-40 | sed 's/ *$//')):rss=${rss}k,pss=${pss}k;"
    tr=$((tr + rss)); tp=$((tp + pss))
  done
  echo "    mem $2: total rss=${tr} KiB pss=${tp} KiB;$line"
}
run() { # <label> <command> <path>: prints "requests/s CPU-µs-per-request errors"
  local log cmd pid out
  log=$(mktemp)
  cmd=$2
  if [[ $cmd == *"{addr}"* ]]; then cmd=${cmd//\{addr\}/$addr}; else cmd="$cmd --bind $addr"; fi
  # setsid: the server leads a process group of its own (workers included), which is what
  # cpu, mem and the final kill address.
  setsid bash -c "exec $cmd" >"$log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 1 200); do
    grep -qi listening "$log" 2>/dev/null && curl -sf -o /dev/null -m 1 "http://$addr$3" && break
    sleep 0.05
  done
  sleep 0.3
  timeout 30 wrk -t1 -c"$conns" -d1s "http://$addr$3" >/dev/null
  local before after
  before=$(cpu $pid)
  out=$(timeout $((secs + 30)) wrk -t1 -c"$conns" -d"${secs}s" "http://$addr$3")
  after=$(cpu $pid)
  [[ ${MEM:-0} == 1 ]] && mem $pid "$1" >"$memf"
  kill -INT -- -$pid 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- -$pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  rm -f "$log"
  awk -v t=$((after - before)) -v hz="$hz" '
    /requests in/ { n = $1 } /^Requests\/sec/ { r = $2 }
    /Socket errors/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 } /Non-2xx/ { e += $NF }
    END { printf "%s %.2f %d", r, (n ? t / hz * 1e6 / n : 0), e }' <<<"$out"
}
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

n=${#labels[@]}
memf=$(mktemp)
trap 'rm -f "$memf"' EXIT
echo "rounds $rounds, ${secs}s each after 1s warm-up, wrk -t1 -c$conns, RUST_LOG=$RUST_LOG, $(nproc) cores, $(date -u +%FT%TZ)"
for path in "${paths[@]}"; do
  echo "$path"
  res=$(mktemp)
  for r in $(seq 1 "$rounds"); do
    for k in $(seq 0 $((n - 1))); do
      i=$(((k + r - 1) % n))
      read -r rps cpu err <<<"$(run "${labels[$i]}" "${cmds[$i]}" "$path")"
      echo "  round $r ${labels[$i]}: $rps req/s, $cpu µs CPU/req, $err errors"
      [[ -s $memf ]] && cat "$memf" && : >"$memf"
      echo "$r $i $rps $cpu $err" >>"$res"
    done
  done
  for i in $(seq 0 $((n - 1))); do
    mr=$(awk -v i=$i '$2 == i {print $3}' "$res" | median)
    mc=$(awk -v i=$i '$2 == i {print $4}' "$res" | median)
    br=$(awk '$2 == 0 {print $3}' "$res" | median)
    bc=$(awk '$2 == 0 {print $4}' "$res" | median)
    # Per-round ratios to the baseline of the same round.
    rr=$(awk -v i=$i '$2 == 0 {b[$1] = $3} $2 == i {x[$1] = $3} END {for (r in x) print x[r] / b[r]}' "$res" | median)
    rc=$(awk -v i=$i '$2 == 0 {b[$1] = $4} $2 == i {x[$1] = $4} END {for (r in x) print x[r] / b[r]}' "$res" | median)
    perround=$(awk -v i=$i '$2 == 0 {b[$1] = $3} $2 == i {x[$1] = $3} END {for (r = 1; r in x; r++) printf "%s%.3f", (r > 1 ? "," : ""), x[r] / b[r]}' "$res")
    errs=$(awk -v i=$i '$2 == i {e += $5} END {print e + 0}' "$res")
    printf "  %-12s median %10.0f req/s (x %.3f; per round %s; ratio of medians %.3f), %6.2f µs CPU/req (x %.3f), %s errors\n" \
      "${labels[$i]}" "$mr" "$rr" "$perround" "$(awk -v a="$mr" -v b="$br" 'BEGIN {print a / b}')" "$mc" "$rc" "$errs"
  done
  rm -f "$res"
done
