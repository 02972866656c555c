use std::process::ExitCode;

/// See the note in Cargo.toml: jemalloc gives memory back when sessions end.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Command;
use kcpgate::config::{command, Role, Settings};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn cli() -> Command {
    Command::new("kcpgate")
        .version(kcpgate::VERSION)
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
        .subcommand(kcpgate::demo::command())
        .subcommand(kcpgate::demo::game_server_command())
        .subcommand(kcpgate::demo::bot_command())
        .subcommand(
            Command::new("healthcheck")
                .about("Exit 0 if URL answers 200 (for container health checks, where no curl is)")
                .arg(clap::Arg::new("url").value_name("URL").required(true).help("e.g. http://127.0.0.1:8080/readyz")),
        )
        .subcommand(Command::new("openapi").about("Print the admin API's OpenAPI 3.1 document (JSON)"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let role = match args.next().as_deref() {
        Some("server") => Role::Server,
        Some("client") => Role::Client,
        Some(name @ ("demo" | "game-server" | "bot")) => return demo(name, args),
        Some("healthcheck") => return healthcheck(args),
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
    exit_nonzero_on_panic();
    let settings = match Settings::parse(role, args) {
        Ok(s) => s,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            print!("{}", kcpgate::config::help_text(role));
            return ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    let loaded = match kcpgate::config_file::resolve(settings) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let process = &loaded.listeners[0].settings;
    init_logging(&process.log, process.log_format == "json", "info");
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let files = kcpgate::http::raise_file_limit();
    if files < 4096 {
        tracing::warn!(
            "this process may open only {files} files (ulimit -n): each stream to a backend takes one; raise the \
             limit (LimitNOFILE=, ulimits: nofile:) for more than a few hundred streams"
        );
    }
    let (base, plans) = match kcpgate::listeners::Listeners::plans(loaded) {
        Ok(plans) => plans,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = plans[0].clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let drain_timeout = std::time::Duration::from_secs(plan.settings.drain_timeout);
    let result = runtime.block_on(async move {
        let listeners = kcpgate::listeners::Listeners::start(base, plans).await?;
        let drain = listeners.draining();
        tokio::spawn(kcpgate::snmp::dump_on_sigusr1(plan.shared.registry.clone(), plan.shared.streams.clone()));
        if !plan.settings.snmplog.is_empty() && plan.settings.snmpperiod > 0 {
            let (path, period) = (plan.settings.snmplog.clone(), u64::from(plan.settings.snmpperiod));
            tokio::spawn(kcpgate::snmp::csv_logger(plan.shared.registry.clone(), path, period));
        }
        if let Some(addr) = plan.settings.admin_addr().map_err(|e| std::io::Error::other(e.0))? {
            match kcpgate::admin::bind(addr, &plan).await {
                Ok(listener) => {
                    let guarded = if plan.settings.admin_token.is_empty() { "no token" } else { "token required" };
                    let (at, scheme) = (listener.local_addr()?, listener.scheme());
                    tracing::info!(
                        "admin API on {scheme}://{at} ({guarded}): dashboard at /, OpenAPI at /openapi.json"
                    );
                    tokio::spawn(kcpgate::admin::serve(listener, listeners.clone(), drain.clone()));
                }
                // The default address may be taken by another program: run without the
                // API rather than refuse a command line that works with kcptun.
                Err(e) if !plan.settings.admin_explicit => tracing::warn!("{e}; running without it"),
                Err(e) => return Err(e),
            }
        }
        if let Some(listener) = kcpgate::public::bind(&plan).await? {
            kcpgate::public::announce(&listener);
            tokio::spawn(kcpgate::public::serve(listener));
        }
        if role == Role::Server {
            tokio::spawn(listeners.clone().reload_on_sighup());
        }
        let work = listeners.run();
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => return r,
            () = shutdown_signal() => {}
        }
        tracing::info!("shutting down: no new sessions, waiting up to {drain_timeout:?} for open streams");
        listeners.drain();
        match tokio::time::timeout(drain_timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("drain timeout reached; closing the remaining streams");
                Ok(())
            }
        }
    });
    exit_code(result)
}

/// The matches of subcommand `name`, as [`cli`] defines it; a mistake is reported
/// by clap, which exits.
fn subcommand_matches(name: &str, args: impl Iterator<Item = String>) -> clap::ArgMatches {
    let command = cli().find_subcommand(name).expect("a listed subcommand").clone().bin_name(format!("kcpgate {name}"));
    command.try_get_matches_from(std::iter::once(name.to_string()).chain(args)).unwrap_or_else(|e| e.exit())
}

/// `kcpgate demo`, and its parts run alone (`game-server`, `bot`): see
/// [`kcpgate::demo`]. They run until SIGTERM or SIGINT.
fn demo(name: &str, args: impl Iterator<Item = String>) -> ExitCode {
    let matches = subcommand_matches(name, args);
    exit_nonzero_on_panic();
    kcpgate::http::raise_file_limit();
    // Warnings and errors only: the demo's progress line is its output.
    init_logging("", false, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match name {
            "bot" => kcpgate::demo::run_bot(&matches, shutdown_signal()).await,
            "game-server" => {
                let listen = *matches.get_one::<std::net::SocketAddr>("listen").expect("a default is set");
                kcpgate::demo::run_game_server(listen, shutdown_signal()).await
            }
            _ => kcpgate::demo::run(kcpgate::demo::Options::from_matches(&matches), shutdown_signal()).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    exit_code(result)
}

/// Success, or the error (as clap writes its own: `error: ...`), and failure.
fn exit_code(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `kcpgate healthcheck URL`: a plain HTTP GET, exit 0 on 200 (images have no curl).
fn healthcheck(args: impl Iterator<Item = String>) -> ExitCode {
    let matches = subcommand_matches("healthcheck", args);
    let url = matches.get_one::<String>("url").expect("required");
    match kcpgate::admin::probe(url, std::time::Duration::from_secs(3)) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("error: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => exit_code(Err(std::io::Error::new(e.kind(), format!("{url}: {e}")))),
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

/// A panic anywhere, a worker thread included, ends the process with status 70
/// (EX_SOFTWARE) once the panic is reported: a server with dead workers must not
/// carry on half-alive, nor exit 0.
fn exit_nonzero_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("error: kcpgate stopped on an internal error (a bug; please report it with the lines above): exiting with status 70");
        std::process::exit(70);
    }));
}

/// Logs to stderr, or appended to `-log`'s file, as text or JSON lines; RUST_LOG
/// filters (default `level`). Text is coloured only on a terminal without NO_COLOR.
fn init_logging(file: &str, json: bool, level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let opened = (!file.is_empty()).then(|| std::fs::OpenOptions::new().create(true).append(true).open(file));
    let (writer, colour, failed) = match opened {
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal() && !no_color, None),
        Some(Ok(f)) => (BoxMakeWriter::new(std::sync::Mutex::new(f)), false, None),
        Some(Err(e)) => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal() && !no_color, Some(e)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(colour).init();
    }
    if let Some(e) = failed {
        tracing::warn!("cannot open log file {file}: {e}; logging to stderr");
    }
}
