//! kcpgate's TOML configuration (`kcpgate server -config FILE`): listeners with
//! their own settings, refusals that name the line and key, precedence over the
//! flags, and a file of two listeners serving Debian's kcptun and kcpgate clients
//! at once.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use kcpgate::config::{Role, Settings};
use kcpgate::config_file::parse;
use kcpgate_core::Method;
use kcpgate_core::Mode;

fn flags(line: &str) -> Settings {
    Settings::parse(Role::Server, line.split_whitespace().map(str::to_string)).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn the_example_file_gives_three_listeners_with_their_own_settings() {
    std::env::set_var("KCPGATE_LEGACY_KEY", "legacy secret");
    std::env::set_var("KCPGATE_BROWSER_KEY", "browser secret");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kcpgate.example.toml")).unwrap();
    let loaded = parse("kcpgate.example.toml", &text, &flags("")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = loaded.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["native", "legacy", "browser"]);
    let browser = &loaded.listeners[2].settings;
    assert_eq!((browser.listen_udp, browser.webtransport.as_str(), &*browser.key), (false, ":4433", "browser secret"));
    assert!(loaded.listeners[..2].iter().all(|l| l.settings.listen_udp && l.settings.webtransport == "off"));
    let (native, legacy) = (&loaded.listeners[0].settings, &loaded.listeners[1].settings);
    assert_eq!(
        (native.listen.as_str(), native.method(), native.session.mode),
        (":29900", Method::Aes256, Some(Mode::Fast3))
    );
    assert_eq!((native.max_sessions, native.key_file.as_str()), (5000, "/run/secrets/kcp-key"));
    assert_eq!(
        (legacy.listen.as_str(), legacy.method(), legacy.session.mode),
        (":30000-30003", Method::Salsa20, Some(Mode::Fast2))
    );
    assert_eq!((legacy.session.numbers.sndwnd, &*legacy.key, legacy.max_sessions), (512, "legacy secret", 0));
    for s in [native, legacy, browser] {
        assert_eq!(
            (s.admin.as_str(), s.quiet, s.drain_timeout),
            ("127.0.0.1:8080", true, 30),
            "process settings reach each"
        );
    }
    assert!(loaded.inline_secrets.is_empty(), "the example keeps its secrets elsewhere");
}

#[test]
fn a_bad_file_is_refused_with_its_line_key_and_what_is_allowed() {
    let one = "[[listener]]\nlisten = \":1\"\n";
    for (text, said) in [
        (format!("{one}sndwnd = 0\n"), "f.toml:3: sndwnd must be between 1 and 65535 segments (got 0)"),
        (format!("{one}interval = 5001\n"), "f.toml:3: interval must be between 10 and 5000 ms (got 5001)"),
        (
            format!("drain-timeout = 86401\n{one}"),
            "f.toml:1: drain-timeout must be between 0 and 86400 seconds (got 86401)",
        ),
        (format!("{one}sndwindow = 5\n"), "f.toml:3: unknown key \"sndwindow\"; did you mean sndwnd?"),
        ("sndwnd = 5\n".to_string(), "f.toml:1: sndwnd is a listener's setting: put it in a [[listener]] table"),
        (format!("{one}admin = \"off\"\n"), "f.toml:3: admin is a process setting: put it at the top of the file"),
        (format!("{one}mtu = \"big\"\n"), "f.toml:3: mtu must be a whole number"),
        (format!("{one}mtu = 1.5\n"), "f.toml:3: mtu must be a whole number"),
        (format!("{one}nocomp = 1\n"), "f.toml:3: nocomp must be true or false"),
        (format!("admin = 8080\n{one}"), "f.toml:1: admin must be a string"),
        (String::new(), "f.toml: no listener: add a [[listener]] table"),
        ("listener = 1\n".to_string(), "f.toml:1: listener must be [[listener]] tables"),
        (format!("{one}name = \"a\"\n{one}name = \"a\"\n"), "two listeners are named \"a\""),
        ("[[listener]]\ntarget = \"h:1\"\n".to_string(), "f.toml:1: this listener has no listen address"),
        (
            format!("{one}key-env = \"KCPGATE_TEST_NEVER_SET\"\n"),
            "f.toml:3: key-env names KCPGATE_TEST_NEVER_SET, which is not set",
        ),
        ("[[listener]\n".to_string(), "f.toml:1: not valid TOML"),
        (
            format!("{one}transport = \"tcp\"\n"),
            "f.toml:3: transport must be \"udp\" or \"webtransport\" (got \"tcp\")",
        ),
        (
            format!("{one}transport = \"webtransport\"\n{one}transport = \"webtransport\"\nname = \"b\"\n"),
            "both have transport = \"webtransport\": kcpgate runs one WebTransport listener",
        ),
        (
            format!("webtransport = \":4433\"\n{one}transport = \"webtransport\"\n"),
            "are two WebTransport listeners: keep the listener",
        ),
    ] {
        let e = parse("f.toml", &text, &flags("")).expect_err(&text).to_string();
        assert!(e.contains(said), "{text:?}: {e}");
    }
}

#[test]
fn a_file_that_is_not_toml_is_refused_at_its_line_without_quoting_it() {
    let text = "[[listener]]\nlisten = \":1\"\nkey = \"a secret never shown\n";
    let e = parse("f.toml", text, &flags("")).expect_err("an unterminated string").to_string();
    assert!(e.starts_with("f.toml:3: not valid TOML: "), "{e}");
    assert!(!e.contains("secret"), "the line is quoted: {e}");
}

#[test]
fn flags_win_over_a_file_of_one_listener_and_are_refused_with_several() {
    let one = "admin = \"127.0.0.1:1\"\n[[listener]]\nlisten = \":1\"\nsndwnd = 512\nrcvwnd = 256\n";
    let loaded = parse("f.toml", one, &flags("-sndwnd 64 -admin off")).unwrap();
    let s = &loaded.listeners[0].settings;
    assert_eq!((s.session.numbers.sndwnd, s.session.numbers.rcvwnd, s.admin.as_str()), (64, 256, "off"));
    let two = format!("{one}[[listener]]\nlisten = \":2\"\n");
    let e = parse("f.toml", &two, &flags("-sndwnd 64")).unwrap_err().to_string();
    assert!(e.contains("-sndwnd (on the command line or as KCPGATE_SNDWND) sets a listener's setting"), "{e}");
    assert!(e.contains("set sndwnd in the [[listener]] it is for"), "{e}");
    let loaded = parse("f.toml", &two, &flags("-admin off")).expect("a process flag says what it means");
    assert!(loaded.listeners.iter().all(|l| l.settings.admin == "off"));
    assert_eq!(loaded.listeners[1].settings.session.numbers.sndwnd, 1024, "a key left out keeps its default");
}

/// Pushes `payload` through the client listening on `port` and checks the echo.
fn echo_through(port: u16, payload: &[u8]) {
    let mut stream = support::connect_when_listening(port);
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let expected = payload.len();
    let receiving = std::thread::spawn(move || {
        let mut got = vec![0u8; expected];
        reader.read_exact(&mut got).map(|()| got)
    });
    stream.write_all(payload).unwrap();
    let got = receiving.join().unwrap().expect("the whole echo within 20 s");
    assert!(got == payload, "the echo through port {port} differs");
}

#[test]
fn two_listeners_of_one_file_serve_kcptun_and_kcpgate_clients_at_once() {
    let backend = support::echo_backend();
    let (aes_port, admin) = (support::free_udp_port("127.0.0.1"), support::free_tcp_port());
    // Two neighbouring free ports for the salsa20 listener's range.
    let salsa_low = loop {
        let p = support::free_udp_port("127.0.0.1");
        if p < u16::MAX && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let dir = std::env::temp_dir().join(format!("kcpgate-config-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("native.key");
    std::fs::write(&key_file, "native secret\n").unwrap();
    let file = dir.join("kcpgate.toml");
    std::fs::write(
        &file,
        format!(
            "admin = \"127.0.0.1:{admin}\"\nquiet = true\n\n\
             [[listener]]\nname = \"native\"\nlisten = \"127.0.0.1:{aes_port}\"\ntarget = \"127.0.0.1:{backend}\"\n\
             key-file = \"{}\"\ncrypt = \"aes\"\nmode = \"fast3\"\n\n\
             [[listener]]\nname = \"legacy\"\nlisten = \"127.0.0.1:{salsa_low}-{}\"\ntarget = \"127.0.0.1:{backend}\"\n\
             key-env = \"CONFIG_FILE_TEST_LEGACY_KEY\"\ncrypt = \"salsa20\"\nmode = \"fast2\"\ndatashard = 0\nparityshard = 0\n",
            key_file.display(),
            salsa_low + 1
        ),
    )
    .unwrap();
    let server = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["server", "-config", file.to_str().unwrap()])
        .env("CONFIG_FILE_TEST_LEGACY_KEY", "legacy-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut procs = support::Procs(vec![server]);
    support::wait_ready(admin);
    let (kcptun_local, kcpgate_local) = (support::free_tcp_port(), support::free_tcp_port());
    let kcptun = Command::new("kcptun-client")
        .args(["-l", &format!("127.0.0.1:{kcptun_local}"), "-r", &format!("127.0.0.1:{aes_port}")])
        .args(["-key", "native secret", "-crypt", "aes", "-mode", "fast3", "-quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcptun-client starts (Debian's kcptun: apt-get install -y kcptun)");
    procs.0.push(kcptun);
    procs.0.push(support::kcpgate(&format!(
        "client -l 127.0.0.1:{kcpgate_local} -r 127.0.0.1:{salsa_low}-{} -key legacy-secret -crypt salsa20 -mode fast2 -ds 0 -ps 0 -admin off",
        salsa_low + 1
    )));
    // Distinct payloads through both listeners at once.
    let streams: Vec<_> = [(kcptun_local, 1), (kcpgate_local, 2)]
        .into_iter()
        .map(|(port, seed)| std::thread::spawn(move || echo_through(port, &support::incompressible(seed, 512 * 1024))))
        .collect();
    for s in streams {
        s.join().expect("every byte back through its listener");
    }
    let (_, sessions) = support::admin_get(admin, "/api/v1/sessions").expect("the admin API answers");
    let sessions: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    assert_eq!(sessions["total"], 2, "one API for both listeners: {sessions}");
    let (_, config) = support::admin_get(admin, "/api/v1/config").expect("the admin API answers");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let listed: Vec<(&str, &str, &str)> = config["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["crypt"].as_str().unwrap(), l["transport"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("native", "aes", "udp"), ("legacy", "salsa20", "udp")], "{config}");
    assert_eq!(config["listeners"][1]["datashard"], 0);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let patch = |query: &str| {
        let mut r = agent
            .patch(format!("http://127.0.0.1:{admin}/api/v1/config{query}"))
            .header("Content-Type", "application/json")
            .send("{\"sndwnd\": 256}")
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, answer) = patch("");
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("say which with ?listener=NAME (native, legacy)"), "{answer}");
    let (status, answer) = patch("?listener=legacy");
    assert_eq!(status, 200, "{answer}");
    let changed: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let windows: Vec<u64> =
        changed["listeners"].as_array().unwrap().iter().map(|l| l["tunables"]["sndwnd"].as_u64().unwrap()).collect();
    assert_eq!(windows, [1024, 256], "only the named listener changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_file_stops_the_start_with_status_2_and_says_where() {
    let dir = std::env::temp_dir().join(format!("kcpgate-config-file-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "admin = \"off\"\n[[listener]]\nlisten = \"127.0.0.1:1\"\nsndwnd = 0\n").unwrap();
    let json = dir.join("kcptun.json");
    std::fs::write(&json, "{}").unwrap();
    let path = file.to_str().unwrap();
    for (args, said) in [
        (
            vec!["server", "-config", path],
            format!("error: {path}:4: sndwnd must be between 1 and 65535 segments (got 0)"),
        ),
        (vec!["server", "-config", path, "-c", json.to_str().unwrap()], "error: -c (kcptun's JSON) and -config".into()),
        (
            vec!["server", "-config", "/nonexistent/kcpgate.toml"],
            "error: -config /nonexistent/kcpgate.toml: cannot read it".into(),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kcpgate")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&said), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn address_changes_are_a_listeners_own_choice_off_by_default() {
    let text = "[[listener]]\nlisten = \":29900\"\naddress-change = true\n\n[[listener]]\nlisten = \":30000\"\n";
    let loaded = parse("kcpgate.toml", text, &flags("")).unwrap_or_else(|e| panic!("{e}"));
    let chosen: Vec<bool> = loaded.listeners.iter().map(|l| l.settings.address_change).collect();
    assert_eq!(chosen, [true, false]);
    assert!(flags("-address-change").address_change);
    assert!(!flags("").address_change);
}
