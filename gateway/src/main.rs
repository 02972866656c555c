use std::process::ExitCode;

use clap::Command;
use kcpgate::config::{command, Role, Settings};

fn cli() -> Command {
    Command::new("kcpgate")
        .version(env!("CARGO_PKG_VERSION"))
        .about("KCP game gateway: a drop-in, wire-compatible kcptun server and client")
        .long_about(
            "KCP game gateway: a drop-in, wire-compatible kcptun server and client.\n\n\
             kcptun command lines work unchanged, single-dash flags included:\n  \
             kcpgate server -l :29900 -t 127.0.0.1:12948 -key secret -crypt aes -mode fast3\n  \
             kcpgate client -l :12948 -r server:29900 -key secret -crypt aes -mode fast3",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(command(Role::Server))
        .subcommand(command(Role::Client))
        .subcommand(Command::new("openapi").about("Print the admin API's OpenAPI 3.1 document (JSON)"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let role = match args.next().as_deref() {
        Some("server") => Role::Server,
        Some("client") => Role::Client,
        Some("openapi") if args.len() == 0 => {
            print!("{}", kcpgate::admin::openapi_json());
            return ExitCode::SUCCESS;
        }
        other => {
            // Help, version, or a mistake: let clap say it.
            let argv = ["kcpgate".to_string()].into_iter().chain(other.map(str::to_string));
            cli().get_matches_from(argv);
            return ExitCode::FAILURE;
        }
    };
    let mut settings = match Settings::parse(role, args) {
        Ok(s) => s,
        Err(e) => e.exit(),
    };
    if let Some(path) = settings.config_file.clone() {
        let applied = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))
            .and_then(|text| settings.apply_json(&text).map_err(|e| format!("{}: {e}", path.display())));
        if let Err(e) = applied {
            eprintln!("kcpgate: {e}");
            return ExitCode::from(2);
        }
    }
    match settings.validate() {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("kcpgate: warning: {w}");
            }
        }
        Err(e) => {
            eprintln!("kcpgate: {e}");
            return ExitCode::from(2);
        }
    }
    init_logging(&settings.log);
    let plan = std::sync::Arc::new(kcpgate::runtime::Plan::new(settings));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let drain_timeout = std::time::Duration::from_secs(plan.settings.drain_timeout.max(0) as u64);
    let result = runtime.block_on(async move {
        let (drain_tx, drain) = tokio::sync::watch::channel(false);
        tokio::spawn(kcpgate::snmp::dump_on_sigusr1(plan.registry.clone(), plan.streams.clone()));
        if !plan.settings.snmplog.is_empty() && plan.settings.snmpperiod > 0 {
            let (path, period) = (plan.settings.snmplog.clone(), plan.settings.snmpperiod as u64);
            tokio::spawn(kcpgate::snmp::csv_logger(plan.registry.clone(), path, period));
        }
        if let Some(addr) = plan.settings.admin_addr().map_err(|e| std::io::Error::other(e.0))? {
            match kcpgate::admin::bind(addr).await {
                Ok(listener) => {
                    let guarded = if plan.settings.admin_token.is_empty() { "no token" } else { "token required" };
                    tracing::info!(
                        "admin API on http://{} ({guarded}); OpenAPI at /openapi.json",
                        listener.local_addr()?
                    );
                    tokio::spawn(kcpgate::admin::serve(listener, plan.clone(), drain.clone()));
                }
                // The default address may be taken by another program: run without the
                // API rather than refuse a command line that works with kcptun.
                Err(e) if !plan.settings.admin_explicit => tracing::warn!("{e}; running without it"),
                Err(e) => return Err(e),
            }
        }
        let work = async {
            match role {
                Role::Server => kcpgate::server::run(plan, drain).await,
                Role::Client => kcpgate::client::run(plan, drain).await,
            }
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => return r,
            () = shutdown_signal() => {}
        }
        tracing::info!("shutting down: no new sessions, waiting up to {drain_timeout:?} for open streams");
        let _ = drain_tx.send(true);
        match tokio::time::timeout(drain_timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("drain timeout reached; closing the remaining streams");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kcpgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Logs to stderr, or appended to `-log`'s file; RUST_LOG filters (default info).
fn init_logging(file: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if file.is_empty() {
        builder.with_writer(std::io::stderr).init();
    } else {
        match std::fs::OpenOptions::new().create(true).append(true).open(file) {
            Ok(f) => builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).init(),
            Err(e) => {
                builder.with_writer(std::io::stderr).init();
                tracing::warn!("cannot open log file {file}: {e}; logging to stderr");
            }
        }
    }
}
