//! mneme's benchmark. Every figure is printed next to a baseline measured in the
//! same run, so the ratios mean something on a shared, noisy machine.
//!
//!   scripts/bench.sh            (builds components, runs this in release mode)
//!   scripts/bench.sh --quick    (smaller runs, for a smoke check)

mod cluster;
mod engine;
mod projection;
mod outbox;
mod postgres;
mod report;
mod startup;
mod storage;

use clap::Parser;

/// The same allocator as the `mneme` binary (host/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Smaller runs: a smoke check, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Journal backend for the engine scenarios: log or sled (the `postgres`
    /// scenario measures PostgreSQL beside the commit log).
    #[arg(long, default_value = "log")]
    journal: String,
    /// Run only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// projection-lag: only these offered rates (commands/s, comma-separated),
    /// without the closed loop; to repeat the rates near the target many times.
    #[arg(long, value_delimiter = ',')]
    lag_rates: Vec<u64>,
}

fn main() {
    let args = Args::parse();
    let backend = mneme::journal::Backend::parse(&args.journal).unwrap_or_else(|e| panic!("{e}"));
    engine::BACKEND.set(backend).unwrap();
    println!("engine scenarios on the {} journal\n", backend.name());
    let mut report = report::Report::new();
    let want = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    // First, before other scenarios leave freed-but-retained heap behind.
    if want("memory") {
        engine::memory(&mut report, args.quick);
    }
    if want("storage") {
        storage::run(&mut report, args.quick);
    }
    if want("handler") {
        engine::handler_cost(&mut report, args.quick);
    }
    if want("engine") {
        engine::in_process(&mut report, args.quick);
    }
    if want("outbox") {
        outbox::run_all(&mut report, args.quick);
    }
    if want("http") {
        engine::http(&mut report, args.quick);
    }
    if want("fan-out") {
        engine::fan_out(&mut report, args.quick);
    }
    if want("recovery") {
        engine::recovery(&mut report, args.quick);
    }
    if want("activation") {
        engine::activation(&mut report, args.quick);
    }
    if want("restart") {
        engine::restart(&mut report);
    }
    if want("postgres") {
        postgres::run(&mut report, args.quick);
    }
    if want("cluster") {
        cluster::run(&mut report, args.quick);
    }
    if want("startup") {
        startup::run(&mut report, args.quick);
    }
    if want("projection-catch-up") {
        projection::catch_up(&mut report, args.quick);
    }
    if want("projection-lag") {
        projection::live_lag(&mut report, args.quick, &args.lag_rates);
    }
}
