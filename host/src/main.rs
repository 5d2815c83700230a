use clap::Parser;
use mneme::cli::{run_client, with_config_file, Cli, Command};

/// mimalloc instead of the system allocator: the engine allocates many small,
/// short-lived buffers per command (event records, journal keys, reply bodies), and
/// glibc's malloc measured as the largest single cost of recovery (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The error and its causes on one line; no backtrace (RUST_BACKTRACE is for
    // panics, and these are the user's errors: a bad flag, a missing file).
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse_from(with_config_file(std::env::args_os().collect())?);
    match cli.command {
        Command::Serve(args) => {
            let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "mneme".into());
            // Dropped last: the spans of the shutdown are exported too.
            let _telemetry = mneme::telemetry::init(args.otlp_endpoint.as_deref(), &service)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(mneme::server::serve((*args).into_config()?))
        }
        other => std::process::exit(run_client(other)?),
    }
}
