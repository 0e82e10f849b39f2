//! The `mixed` demo: a sync app at `/sync` and an async app at `/async` on one port.
//!
//! ```sh
//! cargo run --release --example mixed -- --bind 127.0.0.1:8000
//! curl http://127.0.0.1:8000/sync/hello
//! curl http://127.0.0.1:8000/async/call-sync
//! ```
//!
//! Flags: where to listen (`--bind ADDR`, `--uds PATH`, `--fd N`, `--reuse-port`; a socket
//! passed by systemd socket activation, `LISTEN_FDS`, is used when present), HTTPS
//! (`--tls-cert PATH --tls-key PATH`, `--tls-client-ca PATH` for mutual TLS; SIGHUP reloads
//! the certificate), behind a proxy (`--trusted-proxies LIST`, `--root-path PREFIX`), limits
//! (`--blocking-threads N`, `--queue-timeout-ms MS`, `--max-body BYTES`, `--header-timeout-ms
//! MS`, 0 disables it) and shutdown (`--grace-ms MS`, `--drain-delay-ms MS`); `--help` says
//! what each means and its default. `/healthz` answers 200, and 503 once draining. Worker
//! processes: `--workers N` with `--max-requests N`, `--max-requests-jitter N`,
//! `--max-lifetime-secs SECS`, `--max-rss-mb MB`, `--heartbeat-timeout-ms MS`. Unless
//! `--no-metrics`, it counts every request (Prometheus text at `/metrics`, the migration report
//! at `/_amphi/report`, its JSON with `?format=json`) and gives each one a `tracing` span and
//! an `x-request-id`.
//!
//! The first line on stdout says where it listens: `listening on http://ADDR` (`https://`
//! with TLS) or `listening on unix:PATH`. Logs go to stderr (`RUST_LOG` sets the filter; the
//! access log is the `amphi::access` target). SIGINT or SIGTERM: `/healthz` turns 503, the
//! server keeps accepting for the drain delay, then drains and exits 0.
//!
//! ```sh
//! # Behind nginx on the same machine, two instances on one port:
//! mixed --bind 127.0.0.1:8001 --reuse-port --trusted-proxies 127.0.0.1 --drain-delay-ms 2000
//! # HTTPS on its own:
//! mixed --bind 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem
//! ```

mod app;

use std::io::Write as _;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// The socket to serve when it is not `--bind`'s or `--uds`'s: `--fd N`, or the one systemd
/// socket activation passed.
fn inherited_listener(opts: &app::Options) -> Result<Option<amphi::server::Listener>, String> {
    if let Some(fd) = opts.fd {
        return amphi::server::Listener::from_fd(fd)
            .map(Some)
            .map_err(|e| format!("cannot serve fd {fd}: {e}"));
    }
    amphi::server::Listener::from_systemd()
        .map_err(|e| format!("cannot serve the socket from systemd (LISTEN_FDS): {e}"))
}

fn main() -> ExitCode {
    // `--help` prints the usage to stdout and exits 0; a bad flag prints the error and the
    // usage to stderr and exits 2.
    let opts = app::Options::parse(std::env::args_os().skip(1)).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr closed) is dropped, not reported on that
        // same stderr, which would panic the thread that logged it.
        .log_internal_errors(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // A worker takes its share of the cores: two workers on two cores with a thread per core
    // each would take turns on them (docs/benchmarks.md, worker processes).
    if let (Some(w), true) = (&opts.workers, amphi::server::is_worker()) {
        runtime.worker_threads(w.threads_per_worker());
    }
    let runtime = runtime
        .enable_all()
        // At least as many blocking threads as blocking slots, plus room for sync_to_async.
        .max_blocking_threads(opts.blocking_threads.max(512))
        .build()
        .expect("building the tokio runtime");
    // Inherited sockets are taken before the runtime starts its threads: taking them
    // changes the environment.
    let inherited = match inherited_listener(&opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "mixed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let result = runtime.block_on(async {
        let server = opts.server();
        // Installed before binding: a SIGTERM while the server starts (a supervisor waits for
        // its first worker) or the moment its address is known still drains it.
        let stop = amphi::server::shutdown_signal();
        let serving = match (inherited, &opts.uds) {
            (Some(listener), _) => server.serve_on(listener).await?,
            (None, Some(path)) => server.bind_unix(path).await?,
            (None, None) => server.bind(opts.bind.as_str()).await?,
        };
        // Workers (`--workers N`) run this same main; only the supervisor says where it listens.
        match (serving.local_addr(), &opts.uds) {
            _ if amphi::server::is_worker() => {}
            (Some(addr), _) => {
                println!("listening on {scheme}://{addr}");
                if !opts.no_metrics {
                    // On stderr: stdout is one line, and whoever reads it may close it after.
                    // Written, not `eprintln!`: with stderr closed, that panics and would
                    // take the supervisor (and so its workers) down.
                    let _ = writeln!(
                        std::io::stderr(),
                        "metrics at {scheme}://{addr}/metrics, migration report at {scheme}://{addr}/_amphi/report"
                    );
                }
            }
            (None, Some(path)) => println!("listening on unix:{}", path.display()),
            (None, None) => println!("listening on an inherited unix socket"),
        }
        serving.run_until(stop).await
    });
    // Blocking handlers cannot be aborted: give those that ignore cancellation the grace
    // period, then exit without them.
    runtime.shutdown_timeout(opts.grace);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            let _ = writeln!(std::io::stderr(), "mixed: {msg}");
            ExitCode::FAILURE
        }
    }
}
