#!/usr/bin/env python3
"""asgiref's per-call cost for the calls amphi's adapter benches measure: the outside reference.

Creates a virtual environment (default: target/asgiref-venv under the workspace, or
$ASGIREF_VENV), installs asgiref into it with pip, and re-runs itself there. Then it times,
per call, with the raw asyncio primitive beside each as its baseline:

  sync_to_async(f)                       vs loop.run_in_executor(None, f)
  sync_to_async(f, thread_sensitive=True) (asgiref's default)
  async_to_sync(coro) from a pool thread  (a sync view inside an async server)
  async_to_sync(coro) from a plain thread (the main thread, no loop)
                                          vs asyncio.run(coro) and loop.run_until_complete(coro)

Usage: python3 asgiref_reference.py [--calls N] [--rounds R]
Prints one line per call: the median over R rounds of the mean per-call time of N calls.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time
import venv

WORKSPACE = pathlib.Path(__file__).resolve().parents[3]


def ensure_venv():
    """Re-executes this script inside a venv that has asgiref installed."""
    if os.environ.get("AMPHI_ASGIREF_INSIDE") == "1":
        return
    target = pathlib.Path(
        os.environ.get("ASGIREF_VENV", WORKSPACE / "target" / "asgiref-venv")
    )
    python = target / "bin" / "python"
    if not python.exists():
        print(f"creating {target} ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(target)
    probe = subprocess.run([python, "-c", "import asgiref"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "asgiref"], check=True
        )
    env = dict(os.environ, AMPHI_ASGIREF_INSIDE="1")
    os.execve(str(python), [str(python), __file__, *sys.argv[1:]], env)


def per_call(fn, calls, rounds):
    """Median over `rounds` of the mean seconds per call of `calls` calls of fn()."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(calls)
        results.append((time.perf_counter() - start) / calls)
    results.sort()
    return results[len(results) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import asyncio
    import asgiref
    from asgiref.sync import async_to_sync, sync_to_async

    def f():
        return 1

    async def ready():
        return 1

    async def yield_once():
        await asyncio.sleep(0)
        return 1

    def in_loop(body):
        """Runs `body(n)` (a coroutine function) in a fresh event loop."""

        def run(n):
            asyncio.run(body(n))

        return run

    async def executor_calls(n):
        loop = asyncio.get_running_loop()
        for _ in range(n):
            await loop.run_in_executor(None, f)

    async def s2a_calls(n):
        call = sync_to_async(f, thread_sensitive=False)
        for _ in range(n):
            await call()

    async def s2a_sensitive_calls(n):
        call = sync_to_async(f, thread_sensitive=True)
        for _ in range(n):
            await call()

    def a2s_from_pool_thread(coro_fn):
        async def body(n):
            def blocking():
                call = async_to_sync(coro_fn)
                for _ in range(n):
                    call()

            await sync_to_async(blocking, thread_sensitive=False)()

        return in_loop(body)

    def a2s_from_plain_thread(coro_fn):
        def run(n):
            call = async_to_sync(coro_fn)
            for _ in range(n):
                call()

        return run

    def asyncio_run(coro_fn):
        def run(n):
            for _ in range(n):
                asyncio.run(coro_fn())

        return run

    def run_until_complete(coro_fn):
        def run(n):
            loop = asyncio.new_event_loop()
            try:
                for _ in range(n):
                    loop.run_until_complete(coro_fn())
            finally:
                loop.close()

        return run

    rows = [
        ("baseline: loop.run_in_executor(None, f)", in_loop(executor_calls)),
        ("sync_to_async(f, thread_sensitive=False)", in_loop(s2a_calls)),
        ("sync_to_async(f, thread_sensitive=True)", in_loop(s2a_sensitive_calls)),
        ("baseline: loop.run_until_complete(ready)", run_until_complete(ready)),
        ("baseline: asyncio.run(ready)", asyncio_run(ready)),
        ("async_to_sync(ready) from a pool thread", a2s_from_pool_thread(ready)),
        ("async_to_sync(ready) from a plain thread", a2s_from_plain_thread(ready)),
        ("async_to_sync(yield once) from a plain thread", a2s_from_plain_thread(yield_once)),
    ]
    version = getattr(asgiref, "__version__", "?")
    print(f"asgiref {version}, Python {sys.version.split()[0]}, "
          f"{args.calls} calls x {args.rounds} rounds, median of per-call means")
    for name, fn in rows:
        seconds = per_call(fn, args.calls, args.rounds)
        print(f"{name:50} {seconds * 1e6:9.1f} us")


if __name__ == "__main__":
    ensure_venv()
    main()
