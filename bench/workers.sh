#!/usr/bin/env bash
# Usage: bench/workers.sh [mixed binary] [rounds] [seconds]
# Worker processes (issue 15): `mixed --workers 2` against `mixed --workers 1`, a plain `mixed`
# (no supervisor) and gunicorn (2 gthread workers x 64 threads) on GET /sync/hello and
# GET /sync/sleep?ms=10, in interleaved rounds (bench/paired.sh: a fresh server per run, wrk
# with one thread and 64 keep-alive connections after a 1 s warm-up; the order turns each
# round). After each measured run, before the server stops, it reads RSS and PSS
# (/proc/PID/smaps_rollup) of every process of the server (supervisor + workers, gunicorn's
# master + workers), and prints per server and path the medians of the totals.
#
# gunicorn runs from a venv under /tmp (created with python3 -m venv and pip install gunicorn
# when missing) and serves a WSGI app written here: .../hello answers "Hello, world!",
# .../sleep?ms=N sleeps N ms. Its 64 threads per worker match mixed's 64 blocking threads per
# process (--blocking-threads' default): 2 x 64 = 128 slots, as for `mixed --workers 2`, which
# is the harness's convention (bench/src/python.rs splits the blocking slots over the workers).
# With 64 connections neither server is bound by its threads in the sleep case: the ceiling is
# the connections, 64 / 10 ms = 6,400 requests/s.
set -euo pipefail
bin=${1:-target/release/examples/mixed}; rounds=${2:-4}; secs=${3:-5}
here=$(cd "$(dirname "$0")" && pwd)
venv=${GUNICORN_VENV:-/tmp/amphi-bench-gunicorn}
if [[ ! -x $venv/bin/gunicorn ]]; then
  echo "creating $venv and installing gunicorn" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet gunicorn
fi
app=$(mktemp -d)
trap 'rm -rf "$app"' EXIT
cat >"$app/wsgiapp.py" <<'EOF'
# Written by bench/workers.sh: the two routes of the workers benchmark as a bare WSGI app.
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.endswith("/hello"):
        body = b"Hello, world!"
    elif path.endswith("/sleep"):
        ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0])
        time.sleep(ms / 1000.0)
        body = b"slept"
    else:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
EOF
gunicorn="$venv/bin/gunicorn --chdir $app --bind {addr} --workers 2 --worker-class gthread --threads 64 --keep-alive 30 --backlog 2048 wsgiapp:app"
echo "mixed: $bin; gunicorn $("$venv/bin/gunicorn" --version 2>&1 | awk '{print $NF}' | tr -d ')'), $(python3 --version)"
out=$(mktemp)
MEM=1 "$here/paired.sh" -r "$rounds" -d "$secs" -c 64 \
  workers1="$bin --workers 1" workers2="$bin --workers 2" plain="$bin" gunicorn="$gunicorn" \
  -- /sync/hello "/sync/sleep?ms=10" | tee "$out"
echo
echo "memory after each measured run (median over rounds of the totals over the server's processes, KiB)"
awk '
  /^\// { path = $1 }
  /^    mem / { lab = $2; sub(/:$/, "", lab); split($4, r, "="); split($6, p, "=")
              line = $0; k = path " " lab; rss[k] = rss[k] " " r[2]; pss[k] = pss[k] " " p[2]
              n[k] = gsub(/\):rss=/, "", line) }
  function med(s,   a, m, i, j, t) { m = split(s, a, " ")
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
  END { for (k in rss) printf "  %-30s %d processes: rss %8.0f  pss %8.0f\n", k, n[k], med(rss[k]), med(pss[k]) }
' "$out" | sort
rm -f "$out"
