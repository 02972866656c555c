//! kcptun's command line and JSON configuration (docs/protocol.md §11).

use kcpgate::config::{Role, Settings};
use kcpgate_core::smux::Version;
use kcpgate_core::Method;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

fn parse(role: Role, line: &str) -> Settings {
    Settings::parse(role, args(line)).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn kcptun_command_lines_parse_unchanged() {
    // The exact argv of the recorded kcptun processes, single- and double-dash forms.
    let s = parse(Role::Server, "-l 127.0.0.1:52546 -t 127.0.0.1:41099 --key test-key-123 --crypt aes --mode fast3 --datashard 10 --parityshard 3");
    assert_eq!((s.listen.as_str(), s.target.as_str(), &*s.key), ("127.0.0.1:52546", "127.0.0.1:41099", "test-key-123"));
    let s = parse(
        Role::Client,
        "-l :1 -r h:2 -key k -crypt=salsa20 -mode fast2 -ds 5 -ps=2 -nocomp -QPP -QPPCount 7 -conn 4 -smuxver 1",
    );
    assert_eq!((s.listen.as_str(), s.target.as_str(), &*s.key, s.method()), (":1", "h:2", "k", Method::Salsa20));
    let n = &s.session.numbers;
    assert_eq!(
        (n.datashard, n.parityshard, s.session.nocomp, s.session.qpp, n.qpp_count, s.conn, n.smuxver),
        (5, 2, true, true, 7, 4, 1)
    );
    assert!(Settings::parse(Role::Server, args("-bogus 1")).is_err(), "unknown flags are errors");
    assert!(Settings::parse(Role::Server, args("-conn 3")).is_err(), "client-only flags are not server flags");
}

#[test]
fn conformance_76_mode_presets() {
    for (mode, params) in [
        ("normal", (false, 40, 2, true)),
        ("fast", (false, 30, 2, true)),
        ("fast2", (true, 20, 2, true)),
        ("fast3", (true, 10, 2, true)),
    ] {
        let s = parse(Role::Server, &format!("-mode {mode} -nodelay 1 -interval 99 -resend 7 -nc 0"));
        assert_eq!(s.session.kcp_params(), params, "{mode} ignores the manual values");
    }
    let s = parse(Role::Server, "-mode manual -nodelay 1 -interval 99 -resend 7 -nc 0");
    assert_eq!(s.session.kcp_params(), (true, 99, 7, false));
    let s = parse(Role::Server, "-mode whatever -nodelay 0 -interval 15 -resend 1 -nc 1");
    assert_eq!(s.session.kcp_params(), (false, 15, 1, true), "unknown modes are manual");
}

#[test]
fn conformance_77_json_overrides_present_keys_then_the_mode_preset() {
    let mut s = parse(Role::Client, "-key flag-key -mtu 1200 -mode manual -interval 25");
    s.apply_json(r#"{"KEY": "json-key", "SndWnd": 64, "mode": "fast3", "interval": 99, "unknown": [1, 2]}"#).unwrap();
    assert_eq!(s.key, "json-key", "keys match case-insensitively");
    assert_eq!(s.session.numbers.sndwnd, 64);
    assert_eq!(s.session.numbers.mtu, 1200, "absent keys leave the flags alone");
    assert_eq!(s.session.kcp_params(), (true, 10, 2, true), "the preset wins over interval from flags and JSON");
    let e = s.apply_json(r#"{"mtu": "big"}"#).unwrap_err();
    assert!(e.to_string().contains("\"mtu\" must be an integer"), "{e}");
    assert!(s.apply_json("[1]").is_err());
    assert!(s.apply_json("{oops").unwrap_err().to_string().contains("not valid JSON"));
    let mut s = parse(Role::Server, "");
    s.apply_json(r#"{"smuxver": 1, "qpp-count": 13, "qpp": true}"#).unwrap();
    assert_eq!((s.session.smux_config().version, s.session.qpp, s.session.numbers.qpp_count), (Version::V1, true, 13));
}

#[test]
fn conformance_78_defaults() {
    let c = parse(Role::Client, "");
    assert_eq!((c.listen.as_str(), c.target.as_str()), (":12948", "vps:29900"));
    let n = &c.session.numbers;
    assert_eq!((n.sndwnd, n.rcvwnd, n.closewait, c.conn, c.autoexpire, c.scavengettl), (128, 512, 0, 1, 0, 600));
    let s = parse(Role::Server, "");
    assert_eq!((s.listen.as_str(), s.target.as_str()), (":29900", "127.0.0.1:12948"));
    let n = &s.session.numbers;
    assert_eq!((n.sndwnd, n.rcvwnd, n.closewait), (1024, 1024, 30));
    for x in [&c, &s] {
        let n = &x.session.numbers;
        assert_eq!(
            (n.mtu, n.datashard, n.parityshard, x.method(), x.session.mode, n.smuxver),
            (1350, 10, 3, Method::Aes256, Some(kcpgate_core::Mode::Fast), 2)
        );
        assert_eq!(
            (n.framesize, n.smuxbuf, n.streambuf, x.sockbuf, n.keepalive, n.qpp_count, x.snmpperiod),
            (8192, 4_194_304, 2_097_152, 4_194_304, 10, 61, 60)
        );
        assert!(x.key == "it's a secrect" || std::env::var("KCPTUN_KEY").is_ok());
    }
}

#[test]
fn session_opening_rates_default_to_a_guard_and_zero_lifts_them() {
    let s = parse(Role::Server, "");
    assert_eq!((s.open_rate, s.open_rate_per_source), (1000, 50));
    let s = parse(Role::Server, "-open-rate 0 -open-rate-per-source 7");
    assert_eq!((s.open_rate, s.open_rate_per_source), (0, 7));
    let mut s = parse(Role::Server, "");
    s.apply_json(r#"{"open-rate": 20, "open-rate-per-source": 2}"#).expect("valid keys");
    assert_eq!((s.open_rate, s.open_rate_per_source), (20, 2));
}

#[test]
fn webtransport_connections_per_address_default_to_64_and_zero_lifts_them() {
    assert_eq!(parse(Role::Server, "").webtransport_per_address, 64);
    assert_eq!(parse(Role::Server, "-webtransport-per-address 0").webtransport_per_address, 0);
    let mut s = parse(Role::Server, "");
    s.apply_json(r#"{"webtransport-per-address": 8}"#).expect("a valid key");
    assert_eq!(s.webtransport_per_address, 8);
}

#[test]
fn server_detects_smux_version_unless_pinned() {
    assert_eq!(parse(Role::Server, "").session.smux_config().version, Version::Detect);
    assert_eq!(parse(Role::Server, "-smuxver 2").session.smux_config().version, Version::V2);
    assert_eq!(parse(Role::Server, "-smuxver 1").session.smux_config().version, Version::V1);
    assert_eq!(parse(Role::Client, "").session.smux_config().version, Version::V2);
}

#[test]
fn startup_checks_refuse_with_a_reason() {
    // Numbers out of their setting's range are refused as the flags are read;
    // combinations that cannot work, by `validate`.
    for (role, line, needle) in [
        (Role::Client, "-tcp", "-tcp"),
        (Role::Client, "-conn 0", "-conn must be between 1 and 65535"),
        (Role::Server, "-smuxver 3", "-smuxver must be between 1 and 2"),
        (Role::Server, "-keepalive 31", "-keepalive must be between 1 and 30 seconds"),
        (Role::Server, "-streambuf 9000000", "stream buffer"),
        (Role::Server, "-framesize 70000", "-framesize must be between 1 and 65535"),
        (Role::Server, "-QPP -QPPCount 0", "QPPCount"),
        (Role::Server, "-mtu 2000", "-mtu must be between 1 and 1500"),
        (Role::Server, "-ds 200 -ps 100", "-datashard"),
        (Role::Server, "-sndwnd 0", "-sndwnd must be between 1 and 65535 segments"),
        (Role::Server, "-dscp 64", "-dscp must be between 0 and 63"),
        (Role::Server, "-max-sessions -1", "-max-sessions must be between 0"),
        (Role::Server, "-open-rate -1", "-open-rate must be between 0 and 1000000 sessions per second"),
        (Role::Server, "-open-rate-per-source 2000000", "-open-rate-per-source must be between 0 and 1000000"),
        (Role::Server, "-webtransport-per-address -1", "-webtransport-per-address must be between 0 and 1000000"),
        (Role::Server, "-closewait -3", "-closewait must be between 0 and 86400"),
        (Role::Server, "-sockbuf 3000000000", "-sockbuf must be between 0 and 2147483647"),
        (Role::Server, "-webtransport 4433", "-webtransport must be a UDP address such as :4433"),
        (Role::Server, "-webtransport localhost:x", "-webtransport must be a UDP address"),
        (
            Role::Server,
            "-webtransport :4433 -webtransport-cert c.pem",
            "-webtransport-cert and -webtransport-key go together",
        ),
        (
            Role::Server,
            "-webtransport-origin game.example",
            "-webtransport-origin takes origins such as https://game.example",
        ),
        (Role::Server, "-webtransport-origin https://a.example/path", "-webtransport-origin takes origins"),
    ] {
        let refused = Settings::parse(role, args(line))
            .map_err(|e| e.to_string())
            .and_then(|s| s.validate().map(|_| ()).map_err(|e| e.to_string()));
        let e = refused.expect_err(line);
        assert!(e.contains(needle), "{line}: {e}");
    }
    let mut json = parse(Role::Server, "");
    let e = json.apply_json(r#"{"sndwnd": 70000}"#).expect_err("out of range");
    assert_eq!(e.to_string(), "config file: sndwnd must be between 1 and 65535 segments (got 70000)");
    let e = Settings::parse(Role::Server, args("-ratelimit -5")).unwrap_err().to_string();
    assert!(e.contains("-ratelimit must be between 0 and 4294967295 bytes per second (got -5)"), "{e}");
    let s = parse(Role::Server, "-crypt rot13 -QPP -QPPCount 8");
    let w = s.validate().unwrap();
    assert!(w.iter().any(|w| w.contains("rot13")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("even")), "{w:?}");
}

#[test]
fn webtransport_settings_parse_from_flags_and_json() {
    let s = parse(Role::Server, "");
    assert_eq!(s.webtransport_addr().unwrap(), None, "off by default");
    let s = parse(Role::Server, "-webtransport :4433 -webtransport-origin https://a.example,http://localhost:5173");
    assert_eq!(s.webtransport_addr().unwrap(), Some("[::]:4433".parse().unwrap()), "an empty host is every interface");
    assert_eq!(s.webtransport_origins().unwrap(), ["https://a.example", "http://localhost:5173"]);
    let mut s = parse(Role::Server, "");
    s.apply_json(r#"{"webtransport": "127.0.0.1:4433", "webtransport-origin": "https://b.example"}"#).unwrap();
    assert_eq!(s.webtransport_addr().unwrap(), Some("127.0.0.1:4433".parse().unwrap()));
    assert_eq!(s.webtransport_origins().unwrap(), ["https://b.example"]);
    assert!(
        Settings::parse(Role::Client, args("-webtransport :4433")).is_err(),
        "a client has no WebTransport listener"
    );
}

#[test]
fn port_ranges_expand_and_bad_ones_are_refused() {
    use kcpgate::config::split_port_range;
    let (host, ports) = split_port_range("example.com:3000-3003").unwrap();
    assert_eq!((host, ports.collect::<Vec<_>>()), ("example.com", vec![3000, 3001, 3002, 3003]));
    let (host, ports) = split_port_range("[::1]:29900").unwrap();
    assert_eq!((host, ports.collect::<Vec<_>>()), ("::1", vec![29900]));
    assert_eq!(split_port_range(":29900").unwrap().0, "");
    for bad in ["nohost", "h:0", "h:5-4", "h:x", "h:1-70000"] {
        assert!(split_port_range(bad).is_err(), "{bad}");
    }
    let s = parse(Role::Server, "-l 127.0.0.1:4000-4002");
    s.validate().unwrap();
    let plan = kcpgate::runtime::Plan::alone(s).unwrap();
    let addrs: Vec<String> = plan.listen_addrs().unwrap().iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002"]);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let args = ["-key", "hunter2-key", "-admin-token", "hunter2-token"].map(String::from);
    let s = Settings::parse(Role::Server, args).unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("key: (redacted)") && shown.contains("admin_token: (redacted)"), "{shown}");
    assert_eq!((&*s.key, &*s.admin_token), ("hunter2-key", "hunter2-token"), "the values themselves are kept");
}

#[test]
fn every_numeric_flag_takes_its_range_and_says_it_in_help() {
    use kcpgate::config::{help_text, number_spec, numeric_flags};
    for role in [Role::Server, Role::Client] {
        // Words only: clap wraps long lines.
        let help = help_text(role).split_whitespace().collect::<Vec<_>>().join(" ");
        for (name, _) in numeric_flags(role) {
            let spec = number_spec(name).unwrap_or_else(|| panic!("-{name} is in the table"));
            let unit = if spec.unit.is_empty() { String::new() } else { format!(" {}", spec.unit) };
            let shown = format!("[range: {} to {}{unit}]", spec.min, spec.max);
            assert!(help.contains(&shown), "{role:?} --help shows {shown} for -{name}");
            let default = if role == Role::Server { spec.server } else { spec.client };
            assert!(spec.check(default).is_ok(), "-{name}'s default {default} lies in its range");
            for edge in [spec.min, spec.max] {
                let mut s = parse(role, "");
                s.set_number(name, edge).unwrap_or_else(|e| panic!("-{name} {edge}: {e}"));
            }
        }
    }
}
