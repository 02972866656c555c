//! What a new user meets first: `--help`, startup checks, the exit status, log
//! output. Each test here stands for a mistake that once shipped.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kcpgate::config::{help_text, Role, Settings};

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

fn parse(role: Role, line: &str) -> Settings {
    Settings::parse(role, args(line)).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Runs kcpgate to completion (it must exit by itself within 20 s).
fn run(line: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(args(line))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcpgate starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kcpgate {line} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The first line kcpgate logs, after which it is stopped.
fn first_log_line(line: &str, env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(args(line))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcpgate starts");
    let mut first = String::new();
    BufReader::new(child.stderr.take().expect("stderr")).read_line(&mut first).expect("a log line");
    let _ = child.kill();
    let _ = child.wait();
    first
}

#[test]
fn an_mtu_too_small_for_the_headers_is_refused_at_startup_naming_the_smallest_that_works() {
    for role in ["server", "client"] {
        let out = run(&format!("{role} -mtu 40 -admin off"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{role}: {stderr}");
        assert!(!stderr.contains("panicked"), "{role}: {stderr}");
        assert!(stderr.contains("-mtu must be between 53 and 1500"), "{role}: {stderr}");
    }
    // The smallest MTU is exact, for each crypto header and with or without FEC.
    for (line, smallest) in
        [("-crypt aes", 53), ("-crypt aes -ds 0 -ps 0", 45), ("-crypt aes-128-gcm", 61), ("-crypt none", 53)]
    {
        let at = |mtu: usize| parse(Role::Server, &format!("{line} -mtu {mtu}")).validate().map(drop);
        assert!(at(smallest).is_ok(), "{line}: -mtu {smallest} works");
        let Err(e) = at(smallest - 1) else { panic!("{line}: -mtu {} is refused", smallest - 1) };
        assert!(e.to_string().contains(&format!("between {smallest} and 1500")), "{line}: {e}");
        let s = parse(Role::Server, &format!("{line} -mtu {smallest}"));
        let crypto = kcpgate_core::PacketCrypto::from_passphrase(s.method(), "k");
        let plan = kcpgate::runtime::Plan::alone(s).unwrap();
        assert!(plan.tuning().endpoint.session.kcp_config(&crypto).is_ok(), "{line}: the core takes -mtu {smallest}");
    }
}

#[test]
fn a_webtransport_listener_that_cannot_start_stops_kcpgate_saying_why() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let port = taken.local_addr().unwrap().port();
    for (flags, needle) in [
        (format!("-webtransport 127.0.0.1:{port}"), "cannot listen for WebTransport on UDP 127.0.0.1:"),
        (
            "-webtransport 127.0.0.1:0 -webtransport-cert /nonexistent/cert.pem -webtransport-key /nonexistent/key.pem"
                .to_string(),
            "cannot load -webtransport-cert /nonexistent/cert.pem",
        ),
    ] {
        let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = run(&format!("server -l 127.0.0.1:{free} -admin off {flags}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flags}: {stderr}");
        assert!(stderr.contains(needle), "{flags}: {stderr}");
    }
}

#[test]
fn a_flag_given_twice_takes_the_last_value_as_kcptun_does() {
    let s = parse(Role::Server, "-key first -mtu 1000 -key second -mtu=1200 -nocomp -nocomp");
    assert_eq!((&*s.key, s.session.numbers.mtu, s.session.nocomp), ("second", 1200, true));
    let c = parse(Role::Client, "-r h:1 -r h:2 -l :3 --localaddr :4");
    assert_eq!((c.target.as_str(), c.listen.as_str()), ("h:2", ":4"));
}

#[test]
fn the_json_file_takes_kcpgate_keys_and_warns_of_unknown_ones() {
    let mut s = parse(Role::Server, "");
    let warnings = s
        .apply_json(
            r#"{"admin": "127.0.0.1:9999", "admin-token": "t0k", "max-sessions": 5, "drain-timeout": 3,
                "log-format": "json", "targett": "oops:1"}"#,
        )
        .expect("valid JSON");
    assert_eq!((s.admin.as_str(), &*s.admin_token, s.max_sessions, s.drain_timeout), ("127.0.0.1:9999", "t0k", 5, 3));
    assert!(s.admin_explicit, "an admin address from the file is as explicit as a flag");
    assert_eq!(s.log_format, "json");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"targett\""), "{warnings:?}");
}

#[test]
fn well_known_keys_no_crypto_and_readable_secrets_are_warned_about() {
    let warned = |line: &str, needle: &str| {
        let w = parse(Role::Server, line).validate().expect("it starts");
        w.iter().any(|w| w.contains(needle))
    };
    assert!(warned("", "kcptun's default"), "kcptun's default key");
    assert!(warned("-key change-me-to-a-long-random-secret", "kcptun's default or the example's"));
    assert!(!warned("-key a-key-of-our-own", "kcptun's default"));
    assert!(warned("-key k -crypt none", "-crypt none"));
    assert!(!warned("-key k -crypt aes", "-crypt none"));

    let dir = std::env::temp_dir().join(format!("kcpgate-config-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kcpgate.json");
    let text = r#"{"key": "k", "admin-token": "a-token-of-24-characters"}"#;
    std::fs::write(&file, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warning = kcpgate::config::config_file_exposure(&file, text).expect("a warning at 0644");
    assert!(warning.contains("holds admin-token and key") && warning.contains("chmod 600"), "{warning}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(kcpgate::config::config_file_exposure(&file, text), None);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(kcpgate::config::config_file_exposure(&file, r#"{"mtu": 1200}"#), None, "no secret in it");
    // As kcpgate logs it (then stops: its admin address is taken).
    let udp = support::free_udp_port("127.0.0.1");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    std::fs::write(&file, format!(r#"{{"key": "k", "listen": "127.0.0.1:{udp}", "admin": "{admin}"}}"#)).unwrap();
    let out = run(&format!("server -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stderr.contains("holds key and can be read by other users (mode 644)"), "{stderr}");
}

#[test]
fn admin_tls_and_metrics_auth_are_checked_at_startup() {
    for (flags, needle) in [
        ("-admin-cert c.pem", "-admin-cert and -admin-key go together"),
        ("-admin off -admin-cert c.pem -admin-key k.pem", "need -admin ADDR"),
        ("-metrics-auth", "-metrics-auth needs an admin token"),
    ] {
        let Err(e) = parse(Role::Server, flags).validate() else { panic!("{flags} is refused") };
        assert!(e.to_string().contains(needle), "{flags}: {e}");
    }
    parse(Role::Server, "-metrics-auth -admin-token a-token-of-24-characters").validate().expect("with a token");
    let udp = support::free_udp_port("127.0.0.1");
    let out = run(&format!(
        "server -l 127.0.0.1:{udp} -admin 127.0.0.1:0 -admin-cert /nonexistent.pem -admin-key /nonexistent.key"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cannot load -admin-cert / -admin-key"), "{stderr}");
}

#[test]
fn an_unknown_mode_warns_like_an_unknown_crypt() {
    let w = parse(Role::Server, "-mode fastest").validate().expect("kcptun accepts it");
    assert!(w.iter().any(|w| w.contains("unknown -mode \"fastest\"")), "{w:?}");
    let w = parse(Role::Server, "-mode manual").validate().expect("valid");
    assert!(!w.iter().any(|w| w.contains("-mode")), "manual is a mode: {w:?}");
}

#[test]
fn addresses_without_a_port_are_refused_at_startup() {
    for (role, line, needle) in [
        (Role::Server, "-t 127.0.0.1", "-target must be host:port"),
        (Role::Server, "-t backend:1-5", "-target must be host:port"),
        (Role::Server, "-l 0.0.0.0", "-listen must be"),
        (Role::Server, "-l /run/kcp.sock", "-listen must be"),
        (Role::Client, "-r vps", "-remoteaddr must be"),
        (Role::Client, "-l app", "-localaddr must be"),
    ] {
        let e = parse(role, line).validate().expect_err(line);
        assert!(e.to_string().contains(needle), "{line}: {e}");
    }
    parse(Role::Server, "-l :4000-4005 -t [::1]:7000").validate().expect("ranges and IPv6 are fine");
    parse(Role::Server, "-t /run/game.sock").validate().expect("a unix socket target");
    parse(Role::Client, "-l ./app.sock -r h:1").validate().expect("a unix socket to listen on");
    parse(Role::Client, "-l 127.0.0.1:8388 -r example.com:4000-4005").validate().expect("a client range is fine");
}

#[test]
fn help_spells_flags_as_kcptun_does_and_lists_every_flag_with_honest_defaults() {
    let out = run("server --help");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(help, help_text(Role::Server), "the binary prints the same help");
    for flag in ["-key", "-crypt", "-nodelay", "-interval", "-resend", "-nc ", "-acknodelay", "-log-format"] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    assert!(!help.contains("--key") && !help.contains("--mtu"), "double dashes:\n{help}");
    assert_eq!(help.matches("it's a secrect").count(), 1, "the key's default is shown once:\n{help}");
    let paragraph = |help: &str, flag: &str| {
        let lines = help.lines().skip_while(|l| !l.trim_start().starts_with(flag)).skip(1);
        lines.take_while(|l| !l.trim_start().starts_with('-')).collect::<Vec<_>>().join("\n")
    };
    let smuxver = paragraph(&help, "-smuxver");
    assert!(!smuxver.contains("[default: 2]"), "a server serves both versions:\n{smuxver}");
    let client = help_text(Role::Client);
    let smuxver = paragraph(&client, "-smuxver");
    assert!(smuxver.contains("[default: 2]"), "{smuxver}");
}

#[test]
fn logs_are_plain_text_when_piped_and_json_on_request_warnings_included() {
    let port = support::free_udp_port("127.0.0.1");
    let line = format!("server -l 127.0.0.1:{port} -admin off -pprof");
    let text = first_log_line(&line, &[]);
    assert!(text.contains("-pprof"), "the early warning goes through the logger: {text}");
    assert!(!text.contains('\x1b'), "no colour codes in a pipe: {text:?}");
    let json = first_log_line(&format!("{line} -log-format json"), &[]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["level"], "WARN", "{json}");
    assert!(v["fields"]["message"].as_str().is_some_and(|m| m.contains("-pprof")), "{json}");
    let e = parse(Role::Server, "-log-format xml").validate().expect_err("xml is no format");
    assert!(e.to_string().contains("-log-format must be text or json"), "{e}");
}

/// `--version` names the commit the binary was built from, so a bug report says
/// exactly what ran.
#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = run("--version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("kcpgate {} (commit ", env!("CARGO_PKG_VERSION"))), "{text}");
    let head = Command::new("git").args(["log", "-1", "--format=%h"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        let hash = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert!(text.contains(&format!("(commit {hash}, ")), "built in a repository at {hash}: {text}");
    }
}

#[test]
fn secret_files_are_read_whole_and_a_secret_given_twice_or_empty_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("kcpgate-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let key = write("key", "from a file \r\n", 0o600);
    let token = write("token", "tok\n", 0o600);
    let mut s = parse(Role::Server, &format!("-key-file {key} -admin-token-file {token}"));
    assert!(s.read_secret_files().unwrap().is_empty());
    assert_eq!(s.key, "from a file ", "only the trailing newline goes");
    assert_eq!(s.admin_token, "tok");
    assert!(!format!("{s:?}").contains("from a file"), "Debug (and so any panic message) redacts the key");

    let open = write("open", "k\n", 0o644);
    let mut s = parse(Role::Client, &format!("-key-file {open}"));
    let warnings = s.read_secret_files().unwrap();
    assert!(warnings.iter().any(|w| w.contains("mode 644") && w.contains("chmod 600")), "{warnings:?}");

    let refused = |line: &str, want: &str| {
        let out = run(line);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
        assert!(stderr.contains(want), "{line}: {stderr}");
    };
    refused(&format!("server -key x -key-file {key} -admin off"), "the key is given twice");
    refused(&format!("server -admin-token t -admin-token-file {token} -admin off"), "the admin token is given twice");
    refused(&format!("client -key-file {} -admin off", write("empty", "\n", 0o600)), "the file is empty");
    refused("client -key-file /nonexistent/key -admin off", "-key-file /nonexistent/key: cannot open it");
    refused(&format!("client -key-file {} -admin off", dir.display()), "not a secret file");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A mistyped kcptun flag is named, with the flag meant, instead of clap's reading
/// of it as a cluster of short flags; every error starts with `error:`.
#[test]
fn a_mistyped_flag_is_named_with_the_closest_one_and_errors_share_one_prefix() {
    for (line, meant) in [
        ("server -sndwindow 512", "did you mean -sndwnd?"),
        ("server -datashards 3", "did you mean -datashard?"),
        ("client -nocompress", "did you mean -nocomp?"),
        ("server -nosuchthing", "(kcpgate server --help lists every flag)"),
    ] {
        let out = run(line);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
        let flag = line.split_whitespace().nth(1).unwrap();
        assert!(stderr.starts_with(&format!("error: kcpgate {} has no flag {flag}", &line[..6])), "{line}: {stderr}");
        assert!(stderr.contains(meant), "{line}: {stderr}");
    }
    // Values that start with a dash are values, not flags.
    parse(Role::Server, "-key -notaflag").validate().expect("a dashed value");
    let negative = Settings::parse(Role::Server, args("-ratelimit -1")).unwrap_err().to_string();
    assert!(negative.contains("-ratelimit must be between 0 and 4294967295 bytes per second (got -1)"), "{negative}");
    // Startup errors (ours and clap's) and runtime ones share the prefix.
    for line in ["server -mtu 40 -admin off", "server --no-such", "client -admin nowhere"] {
        let stderr = String::from_utf8_lossy(&run(line).stderr).to_string();
        assert!(stderr.starts_with("error: "), "{line}: {stderr}");
    }
}

#[test]
fn every_subcommands_help_names_the_whole_command() {
    for sub in ["demo", "bot", "game-server", "healthcheck"] {
        let out = run(&format!("{sub} --help"));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(&format!("Usage: kcpgate {sub}")), "{sub}: {help}");
    }
}

/// The public listener's and the advertised address's bad values stop the start,
/// saying what to give instead; a self-signed WebTransport listener without a
/// public listener warns that pages cannot get its hash.
#[test]
fn public_listener_and_advertised_address_are_checked_at_startup() {
    for (flags, needle) in [
        ("-public nowhere", "-public must be a TCP address"),
        ("-webtransport-advertise game.example", "-webtransport-advertise must be host:port or :port"),
        ("-webtransport-advertise game.example:0", "-webtransport-advertise must be host:port"),
        ("-webtransport-advertise bad/host:443", "-webtransport-advertise must be host:port"),
        ("-public :0 -public-cert cert.pem", "-public-cert and -public-key go together"),
        ("-public-cert c.pem -public-key k.pem", "need -public ADDR"),
    ] {
        let Err(e) = parse(Role::Server, flags).validate() else { panic!("{flags} is refused") };
        assert!(e.to_string().contains(needle), "{flags}: {e}");
    }
    for ok in ["-webtransport-advertise :14433", "-webtransport-advertise [2001:db8::1]:443", "-public 127.0.0.1:0"] {
        parse(Role::Server, ok).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let warnings = parse(Role::Server, "-webtransport :0").validate().unwrap();
    assert!(warnings.iter().any(|w| w.contains("set -public ADDR")), "{warnings:?}");
    let warnings = parse(Role::Server, "-webtransport :0 -public :0").validate().unwrap();
    assert!(!warnings.iter().any(|w| w.contains("set -public ADDR")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("over plain HTTP")), "hashes others can swap: {warnings:?}");
    for quiet in ["-webtransport :0 -public 127.0.0.1:0", "-public :0"] {
        let warnings = parse(Role::Server, quiet).validate().unwrap();
        assert!(!warnings.iter().any(|w| w.contains("over plain HTTP")), "{quiet}: {warnings:?}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let udp = support::free_udp_port("127.0.0.1");
    let out = run(&format!("server -admin off -public {at} -l 127.0.0.1:{udp}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for game pages on TCP {at}")) && stderr.contains("-public"),
        "{stderr}"
    );
}
