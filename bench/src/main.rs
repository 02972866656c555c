//! `kcpgate-bench`: kcpgate against Debian's kcptun, on this machine, in one run.

mod harness;
mod impair;
mod plots;
mod relay;
mod traffic;
mod wt_echo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Benchmarks kcpgate against Debian's kcptun (apt-get install -y kcptun) on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the suite: bulk throughput and CPU, ping-pong latency under loss; both
    /// implementations alternate, run after run. Writes results.md and results.csv.
    Run {
        /// A quick pass: every scenario once, small sizes (for CI).
        #[arg(long)]
        smoke: bool,
        /// Runs per scenario and implementation (default 3, smoke 1).
        #[arg(long)]
        runs: Option<usize>,
        /// The kcpgate binary to measure (build it with --release).
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        /// Where the results go.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Only the scenarios whose name contains this, e.g. "bulk" or "ping-pong".
        #[arg(long, default_value = "")]
        only: String,
    },
    /// A UDP relay that impairs traffic: clients send to --listen, the relay forwards
    /// to --target and carries answers back. Prints what it did every second.
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        target: SocketAddr,
        /// Impairments towards the target, e.g. "loss=0.05,delay=20ms,jitter=5ms".
        /// Keys: loss, burst=ENTER/LEAVE (Gilbert–Elliott), delay, jitter, reorder,
        /// dup, corrupt (probabilities 0–1, times in ms), rate (bytes/s, KB, MB).
        #[arg(long, default_value = "")]
        up: impair::Spec,
        /// Impairments towards the clients (same keys).
        #[arg(long, default_value = "")]
        down: impair::Spec,
        /// Seed of the random choices, to repeat a run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A TCP echo backend: every connection's bytes come back to it.
    Echo {
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
    },
    /// A plain WebTransport echo server (streams and datagrams), the baseline of the
    /// browser benchmark. Prints {"port": P, "hash": "<certificate sha-256>"} first.
    WebtransportEcho {
        #[arg(long, default_value = "127.0.0.1:4443")]
        listen: SocketAddr,
        /// Answer each datagram with a corrupted copy and a junk datagram (bad
        /// input, for testing clients).
        #[arg(long)]
        garble: bool,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::Run { smoke, runs, kcpgate, out, only } => {
            if !kcpgate.exists() {
                eprintln!(
                    "kcpgate-bench: {} not found; build it first: cargo build --release -p kcpgate",
                    kcpgate.display()
                );
                return std::process::ExitCode::from(2);
            }
            let mut size = if smoke { harness::Size::SMOKE } else { harness::Size::DEFAULT };
            if let Some(r) = runs {
                size.runs = r.max(1);
            }
            let impls = [harness::Implementation::kcpgate(&kcpgate), harness::Implementation::kcptun()];
            let started = std::time::Instant::now();
            let samples = match harness::run_suite(&impls, size, &only, |line| {
                eprintln!("[{:>4.0} s] {line}", started.elapsed().as_secs_f64())
            }) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kcpgate-bench: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let written = harness::write_results(&out, &samples).map_err(|e| e.to_string()).and_then(|mut files| {
                files.extend(plots::write(&out, &samples).map_err(|e| e.to_string())?);
                Ok(files)
            });
            match written {
                Ok(files) => {
                    print!("{}", harness::markdown(&samples));
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kcpgate-bench: cannot write results into {}: {e}", out.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Echo { listen } => match traffic::echo_backend_on(listen) {
            Ok(addr) => {
                eprintln!("echo backend on {addr}");
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                eprintln!("kcpgate-bench: cannot listen on {listen}: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Cmd::WebtransportEcho { listen, garble } => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(wt_echo::run(listen, garble)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kcpgate-bench: WebTransport echo on {listen}: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Relay { listen, target, up, down, seed } => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let stats: Arc<relay::Stats> = Arc::default();
            let report = stats.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    eprintln!("up:   {}", report.up.lock().expect("stats"));
                    eprintln!("down: {}", report.down.lock().expect("stats"));
                }
            });
            match rt.block_on(relay::run(listen, target, up, down, seed, stats)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kcpgate-bench relay: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
