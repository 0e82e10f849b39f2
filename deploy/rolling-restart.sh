#!/usr/bin/env bash
# Scale-out behind a real nginx: two `mixed` instances behind deploy/nginx.conf, load through
# nginx (h2load, bounded in time and requests), and a rolling restart under it: SIGTERM one
# instance (it answers 503 on /healthz and keeps serving for its drain delay, then drains),
# start it again, wait until it is healthy, then the other. Passes when no request failed and
# the instances' access logs show the clients' addresses (from X-Forwarded-For), never the
# proxy's.
#
# Usage: deploy/rolling-restart.sh            (from anywhere; loopback ports 18480-18482)
#   MIXED=path/to/mixed  the binary (default: target/debug/examples/mixed, built if missing)
#   LOAD_SECONDS=N       how long the load runs (default 14)
# Installs nginx and h2load (Debian: nginx, nghttp2-client) when missing and it can (root with
# apt-get); otherwise says so and exits 0 without testing. Exits 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { echo "rolling-restart: $*"; }

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing $2"
        if [ -z "${apt_updated:-}" ]; then
            apt-get update -qq >/dev/null 2>&1 || true
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 || true
    fi
    if ! command -v "$1" >/dev/null 2>&1; then
        say "SKIP: $1 is not installed and could not be installed (apt-get install $2 as root)"
        exit 0
    fi
}
# Debian puts nginx in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
need nginx nginx
need h2load nghttp2-client
need curl curl

mixed=${MIXED:-$root/target/debug/examples/mixed}
if [ ! -x "$mixed" ]; then
    say "building the mixed example"
    cargo build --example mixed --quiet
fi
load_seconds=${LOAD_SECONDS:-14}

work=$(mktemp -d /tmp/amphi-rolling.XXXXXX)
mkdir -p "$work/logs" "$work/tmp"
cp deploy/nginx.conf "$work/nginx.conf"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [ -n "${nginx_pid:-}" ] && kill -9 "$nginx_pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then say "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() {
    say "FAILED: $*"
    for f in "$work"/logs/*; do echo "--- $f (last lines)"; tail -n 20 "$f"; done
    exit 1
}

# The flags each instance runs with: docs/deploy.md's systemd unit and Kubernetes manifest use
# the same (the bind address aside).
flags=(--trusted-proxies 127.0.0.2 --drain-delay-ms 1500 --grace-ms 10000)

declare -A pid_of
start() { # name port
    RUST_LOG=info "$mixed" --bind "127.0.0.1:$2" "${flags[@]}" \
        >>"$work/logs/$1.out" 2>>"$work/logs/$1.log" &
    pid_of[$1]=$!
    pids+=($!)
    for _ in $(seq 1 200); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$2/healthz" 2>/dev/null; then return 0; fi
        kill -0 "${pid_of[$1]}" 2>/dev/null || fail "instance $1 exited at startup"
        sleep 0.05
    done
    fail "instance $1 is not healthy after 10 s"
}
stop() { # name port
    local p=${pid_of[$1]}
    kill -TERM "$p"
    # The drain delay: health says 503 while the instance still serves.
    local saw_503=
    for _ in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/healthz" || true)
        if [ "$code" = 503 ]; then saw_503=1; break; fi
        sleep 0.01
    done
    [ -n "$saw_503" ] || fail "instance $1 did not answer 503 on /healthz after SIGTERM"
    for _ in $(seq 1 300); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$p" 2>/dev/null; then fail "instance $1 did not exit within 15 s of SIGTERM"; fi
    wait "$p" || fail "instance $1 exited non-zero"
}

start a 18481
start b 18482
nginx -p "$work/" -c "$work/nginx.conf" -e "$work/logs/error.log" &
nginx_pid=$!
for _ in $(seq 1 200); do
    curl -fsS -o /dev/null http://127.0.0.1:18480/healthz 2>/dev/null && break
    kill -0 "$nginx_pid" 2>/dev/null || fail "nginx exited at startup"
    sleep 0.05
done
curl -fsS -o /dev/null http://127.0.0.1:18480/healthz || fail "nginx does not answer"
say "nginx on 127.0.0.1:18480 in front of instances a (18481) and b (18482)"

# Load through nginx for load_seconds, at most 8 connections, both handler kinds; bounded by
# `timeout` too.
timeout $((load_seconds + 30)) h2load --h1 -c 8 -t 1 -D "$load_seconds" \
    http://127.0.0.1:18480/sync/hello http://127.0.0.1:18480/async/hello \
    >"$work/logs/h2load.txt" 2>&1 &
load=$!
sleep 2
for i in a b; do
    port=$([ $i = a ] && echo 18481 || echo 18482)
    say "restarting $i"
    stop $i $port
    start $i $port
    sleep 1.5
done
# A request from another client address, through nginx.
client_info=$(curl -fsS --interface 127.0.0.3 http://127.0.0.1:18480/async/info) ||
    fail "the request from 127.0.0.3 failed"
wait "$load" || fail "h2load failed (exit $?)"
kill -QUIT "$nginx_pid"
wait "$nginx_pid" || true
for i in a b; do stop $i $([ $i = a ] && echo 18481 || echo 18482); done
pids=()

summary=$(grep -E '^(requests|status codes):' "$work/logs/h2load.txt")
echo "$summary"
total=$(awk '/^requests:/ {print $2}' <<<"$summary")
ok=$(sed -nE 's/^requests:.* ([0-9]+) succeeded.*/\1/p' <<<"$summary")
bad=$(sed -nE 's/^requests:.* ([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout.*/\1 \2 \3/p' <<<"$summary")
non2xx=$(sed -nE 's/^status codes: [0-9]+ 2xx, ([0-9]+) 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx.*/\1 \2 \3/p' <<<"$summary")
[ -n "$total" ] && [ "$total" -gt 0 ] || fail "no load ran"
[ "$bad" = "0 0 0" ] || fail "failed/errored/timed out requests: $bad"
[ "$non2xx" = "0 0 0" ] || fail "non-2xx responses (3xx 4xx 5xx): $non2xx"
[ "$ok" = "$total" ] || fail "$ok of $total requests succeeded"

# nginx: every request answered 200 (499: h2load closed a connection with a request in flight
# when its time was up; those are the started-but-not-done requests above), both instances
# served.
aborted=$(awk '/^requests:/ {print $4 - $6}' <<<"$summary")
bad_lines=$(grep -v '" 200 upstream=' "$work/logs/access.log" | grep -cv '" 499 upstream=' || true)
[ "$bad_lines" = 0 ] || fail "$bad_lines nginx access lines with a status other than 200"
closed=$(grep -c '" 499 upstream=' "$work/logs/access.log" || true)
[ "$closed" -le "$aborted" ] || fail "$closed requests closed by the client, but h2load left $aborted unfinished"
for port in 18481 18482; do
    grep -q "upstream=127.0.0.1:$port" "$work/logs/access.log" || fail "nginx never used $port"
done

# The instances: access lines for the load's client (127.0.0.1) and the curl (127.0.0.3),
# none with the proxy's address (127.0.0.2), and the app saw the curl's address too.
all_logs=$(cat "$work"/logs/a.log "$work"/logs/b.log)
grep -q 'amphi::access.*client=127\.0\.0\.1$' <<<"$all_logs" ||
    fail "no access line with client=127.0.0.1"
grep -q 'amphi::access.*path="/async/info".*client=127\.0\.0\.3$' <<<"$all_logs" ||
    fail "no access line with client=127.0.0.3"
if grep -q 'amphi::access.*client=127\.0\.0\.2' <<<"$all_logs"; then
    fail "an access line shows the proxy's address as the client"
fi
grep -q '"client":"127.0.0.3:0"' <<<"$client_info" || fail "the app saw $client_info"
for i in a b; do
    starts=$(grep -c 'listening on' "$work/logs/$i.out")
    [ "$starts" = 2 ] || fail "instance $i started $starts times, not 2"
    grep -q 'still accepting for 1.5s' "$work/logs/$i.log" || fail "instance $i had no drain delay"
done
lines=$(grep -c 'amphi::access' <<<"$all_logs")
say "ok: $total requests through nginx across a rolling restart of both instances, 0 failed;"
say "    $lines access lines, clients 127.0.0.1 and 127.0.0.3 (never the proxy's 127.0.0.2)"
