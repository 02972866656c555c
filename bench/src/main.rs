//! `kcpgate-bench`: kcpgate against Debian's kcptun, on this machine, in one run.

mod faults;
mod flood;
mod harness;
mod impair;
mod isolation;
mod local;
mod plots;
mod relay;
mod scrape;
mod soak;
mod traffic;
mod wt_client;
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
        /// A quick pass: every scenario once, small sizes (for CI; bench/run builds it in debug).
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
    /// Floods a kcpgate server on loopback and checks it holds: good sessions
    /// transfer with and without a junk flood from many 127.x.y.z addresses (no
    /// session opened, every drop counted, at least 80 % of the throughput kept,
    /// every byte verified), then genuine session openings far beyond the limits
    /// (refused and counted; memory reported).
    FloodTest {
        /// The kcpgate binary to test (build it with --release).
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        /// Good sessions, one stream each.
        #[arg(long, default_value_t = 50)]
        sessions: usize,
        /// Bytes per second each good stream offers; 0 sends as fast as it can.
        /// The default leaves the flood process (half a core at 200,000
        /// datagrams/s) room on a 2-core machine: unthrottled, the measurement is
        /// of the sender's CPU, not of the gateway.
        #[arg(long, default_value_t = 1_000_000)]
        stream_rate: u64,
        /// Length of each phase (before, during and after the flood), seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Junk datagrams per second asked of the flood process (a margin over
        /// 200,000, which the check must show it sent).
        #[arg(long, default_value_t = 205_000)]
        rate: u64,
        /// Source addresses (127.1.x.y) the flood comes from.
        #[arg(long, default_value_t = 1000)]
        from: u32,
    },
    /// Thousands of concurrent sessions from Debian's kcptun and kcpgate clients,
    /// one stream each with its own payload both ways, every byte checked at its
    /// own backend connection and back; with the server on 127.0.0.1, 0.0.0.0 and
    /// [::].
    Isolation {
        /// The kcpgate binary to test.
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        /// Sessions (and streams), half from each client.
        #[arg(long, default_value_t = 3000)]
        sessions: usize,
        /// Bytes each stream sends, and gets back.
        #[arg(long, default_value_t = 32 * 1024)]
        bytes: usize,
        /// KCP sessions over WebTransport (one each) at the same time, from a
        /// KCP client as the browser module runs it.
        #[arg(long, default_value_t = 200)]
        webtransport: usize,
    },
    /// Faults beside good sessions: backends that never read, reset, or read
    /// slowly (over kcpgate and kcptun clients), then the server SIGKILLed
    /// mid-transfer and restarted; every claim checked.
    Faults {
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        /// Seconds of good traffic alone (and twice that beside the bad backends).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// A long run under churn: kcptun and kcpgate clients come and go, the relay's
    /// impairments change every minute, the backend restarts and resets; reports
    /// every stream's outcome and the server's RSS and file descriptors over time
    /// (soak.md, soak.csv).
    Soak {
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Scrapes a kcpgate server's /metrics far more often than Prometheus would
    /// (keep-alive connections, paced) and checks what it costs the gateway's CPU.
    MetricsLoad {
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        /// Scrapes a second.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The most of a core the gateway may use meanwhile (0.1: 10 %).
        #[arg(long, default_value_t = 0.10)]
        budget: f64,
    },
    /// The flood process of flood-test: sends datagrams to a loopback target at a
    /// set rate from many 127.x.y.z addresses, at most 120 s, then prints a JSON
    /// report of what it sent.
    Flood {
        /// Where the datagrams go; given more than once, junk goes to each in turn.
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        #[arg(long, value_enum)]
        kind: flood::FloodKind,
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        from: u32,
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
    /// Time to first byte of a new session from Debian's kcptun client: the kcpgate
    /// server against an earlier build of it (to measure what a change adds) and
    /// kcptun's server, alternating, on loopback and at 20 ms each way.
    FirstByte {
        #[arg(long, default_value = "target/release/kcpgate")]
        kcpgate: PathBuf,
        /// The earlier kcpgate binary to compare with.
        #[arg(long)]
        before: PathBuf,
        /// Samples per server and path.
        #[arg(long, default_value_t = 15)]
        runs: usize,
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

/// A check's report on stdout; the exit status says whether every claim held.
fn conclude(checked: Result<local::Claims, String>) -> std::process::ExitCode {
    match checked {
        Ok(claims) => {
            print!("{}", claims.report());
            if claims.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kcpgate-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::FirstByte { kcpgate, before, runs } => match harness::first_byte(&kcpgate, &before, runs) {
            Ok(table) => {
                print!("{table}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kcpgate-bench: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Cmd::FloodTest { kcpgate, sessions, stream_rate, seconds, rate, from } => {
            if !kcpgate.exists() {
                eprintln!(
                    "kcpgate-bench: {} not found; build it first: cargo build --release -p kcpgate",
                    kcpgate.display()
                );
                return std::process::ExitCode::from(2);
            }
            conclude(flood::run(&kcpgate, sessions, stream_rate, seconds, rate, from))
        }
        Cmd::Isolation { kcpgate, sessions, bytes, webtransport } => {
            conclude(isolation::run(&kcpgate, sessions, bytes, webtransport))
        }
        Cmd::Faults { kcpgate, seconds } => conclude(faults::run(&kcpgate, seconds)),
        Cmd::MetricsLoad { kcpgate, rate, seconds, budget } => conclude(scrape::run(&kcpgate, rate, seconds, budget)),
        Cmd::Soak { kcpgate, minutes, out } => conclude(soak::run(&kcpgate, minutes, &out)),
        Cmd::Flood { target, kind, rate, seconds, from } => match flood::flood(&target, kind, rate, seconds, from) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kcpgate-bench flood: {e}");
                std::process::ExitCode::from(2)
            }
        },
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
            let stats: Arc<relay::RelayStats> = Arc::default();
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
