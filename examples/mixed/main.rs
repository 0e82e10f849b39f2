//! The `mixed` demo: a sync app at `/sync` and an async app at `/async` on one port.
//!
//! ```sh
//! cargo run --release --example mixed -- --bind 127.0.0.1:8000
//! curl http://127.0.0.1:8000/sync/hello
//! curl http://127.0.0.1:8000/async/call-sync
//! ```
//!
//! Flags: `--bind ADDR`, `--blocking-threads N`, `--queue-timeout-ms MS`, `--max-body BYTES`,
//! `--header-timeout-ms MS` (0 disables it), `--grace-ms MS`; `--help` says what each means
//! and its default. Logs go to stderr (`RUST_LOG` sets the filter; the access log is the
//! `amphi::access` target). SIGINT or SIGTERM drains and exits 0.

mod app;

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `--help` prints the usage to stdout and exits 0; a bad flag prints the error and the
    // usage to stderr and exits 2.
    let opts = app::Options::parse(std::env::args_os().skip(1)).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // At least as many blocking threads as blocking slots, plus room for sync_to_async.
        .max_blocking_threads(opts.blocking_threads.max(512))
        .build()
        .expect("building the tokio runtime");
    let result = runtime.block_on(async {
        let serving = opts.server().bind(opts.bind.as_str()).await?;
        let addr = serving.local_addr().expect("a TCP listener has an address");
        // Workers (`--workers N`) run this same main; only the supervisor says where it listens.
        if !amphi::server::is_worker() {
            println!("listening on http://{addr}");
        }
        serving.run_until(amphi::server::shutdown_signal()).await
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
            eprintln!("mixed: {msg}");
            ExitCode::FAILURE
        }
    }
}
