//! Reloading a `-config` file under load, through `SIGHUP` and through
//! `PUT /api/v1/config`: a listener added starts, a removed one drains, a
//! changed key applies to new sessions while open ones keep theirs, and a bad
//! file changes nothing.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds a removed listener's streams may run on.
const DRAIN_TIMEOUT: u64 = 6;
/// Bytes each stream sends per round trip, and the pause between them.
const CHUNK: usize = 512;
const PACE: Duration = Duration::from_millis(20);

/// One listener of the test's file.
struct Listener {
    name: &'static str,
    port: u16,
    key: &'static str,
    crypt: &'static str,
}

fn file_text(admin: u16, backend: u16, listeners: &[&Listener]) -> String {
    let mut text = format!("admin = \"127.0.0.1:{admin}\"\nquiet = true\ndrain-timeout = {DRAIN_TIMEOUT}\n\n");
    for l in listeners {
        text += &format!(
            "[[listener]]\nname = \"{}\"\nlisten = \"127.0.0.1:{}\"\ntarget = \"127.0.0.1:{backend}\"\nkey = \"{}\"\n\
             crypt = \"{}\"\nmode = \"fast3\"\n\n",
            l.name, l.port, l.key, l.crypt
        );
    }
    text
}

/// A kcpgate client on a new local port for `listener` with `key` and `crypt`.
fn client(listener: &Listener, key: &str, crypt: &str) -> (u16, std::process::Child) {
    let local = support::free_tcp_port();
    let child = support::kcpgate(&format!(
        "client -l 127.0.0.1:{local} -r 127.0.0.1:{} -key {key} -crypt {crypt} -mode fast3 -conn 1 -admin off -quiet",
        listener.port
    ));
    (local, child)
}

/// A stream that sends distinct data through a client and checks every byte of
/// the echo, until told to stop.
struct Stream {
    verified: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    done: std::thread::JoinHandle<Result<u64, String>>,
}

fn stream(local: u16, seed: u64) -> Stream {
    let (verified, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (v, s) = (verified.clone(), stop.clone());
    let done = std::thread::spawn(move || {
        let mut conn = support::connect_when_listening(local);
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let data = support::incompressible(seed, 64 * CHUNK);
        let mut back = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while !s.load(Ordering::Relaxed) {
            let at = (sent as usize) % data.len();
            let chunk = &data[at..at + CHUNK];
            conn.write_all(chunk).map_err(|e| format!("stream {seed}: write after {sent} bytes: {e}"))?;
            conn.read_exact(&mut back).map_err(|e| format!("stream {seed}: echo after {sent} bytes: {e}"))?;
            if back != chunk {
                return Err(format!("stream {seed}: the echo differs after {sent} bytes"));
            }
            sent += CHUNK as u64;
            v.store(sent, Ordering::Relaxed);
            std::thread::sleep(PACE);
        }
        Ok(sent)
    });
    Stream { verified, stop, done }
}

/// Streams through one client.
fn streams(local: u16, count: u64, first_seed: u64) -> Vec<Stream> {
    (0..count).map(|i| stream(local, first_seed + i)).collect()
}

/// Waits until every stream has verified more than it had (they are all moving).
fn all_moving(streams: &[Stream], what: &str) {
    let before: Vec<u64> = streams.iter().map(|s| s.verified.load(Ordering::Relaxed)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while streams.iter().zip(&before).any(|(s, b)| s.verified.load(Ordering::Relaxed) <= *b + CHUNK as u64) {
        assert!(Instant::now() < deadline, "{what}: some streams stopped moving");
        assert!(streams.iter().all(|s| !s.done.is_finished()), "{what}: a stream ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the streams and requires every byte of each to have come back.
fn finish(streams: Vec<Stream>, what: &str) -> u64 {
    for s in &streams {
        s.stop.store(true, Ordering::Relaxed);
    }
    streams.into_iter().map(|s| s.done.join().expect("stream thread").unwrap_or_else(|e| panic!("{what}: {e}"))).sum()
}

/// Whether an echo comes back through `local` within `within`.
fn echoes(local: u16, within: Duration) -> bool {
    let mut conn = support::connect_when_listening(local);
    conn.set_read_timeout(Some(within)).unwrap();
    let sent = support::incompressible(local.into(), 1000);
    let mut back = vec![0u8; sent.len()];
    conn.write_all(&sent).is_ok() && conn.read_exact(&mut back).is_ok() && back == sent
}

fn config(admin: u16) -> serde_json::Value {
    let (_, body) = support::admin_get(admin, "/api/v1/config").expect("the admin API answers");
    serde_json::from_str(&body).unwrap()
}

/// The listeners the admin API shows: (name, crypt).
fn listed(admin: u16) -> Vec<(String, String)> {
    config(admin)["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_string(), l["crypt"].as_str().unwrap().to_string()))
        .collect()
}

fn names(listeners: &[&Listener]) -> Vec<(String, String)> {
    listeners.iter().map(|l| (l.name.to_string(), l.crypt.to_string())).collect()
}

fn put(admin: u16, text: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent
        .put(format!("http://127.0.0.1:{admin}/api/v1/config"))
        .header("Content-Type", "text/plain")
        .send(text)
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn hangup(pid: u32) {
    let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits until the admin API lists `want`.
fn listed_within(admin: u16, want: &[&Listener], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(admin) != names(want) {
        assert!(Instant::now() < deadline, "{what}: the listeners are {:?}", listed(admin));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `port` is free again (its listener has drained and closed).
fn released_within(port: u16, within: Duration) -> Duration {
    let start = Instant::now();
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "UDP port {port} still open after {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn log_of(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn reload_under_load_adds_drains_and_rekeys_without_losing_a_byte_and_a_bad_file_changes_nothing() {
    let backend = support::echo_backend();
    let admin = support::free_tcp_port();
    let port = || support::free_udp_port("127.0.0.1");
    let stays = Listener { name: "stays", port: port(), key: "stays-key", crypt: "aes" };
    let goes = Listener { name: "goes", port: port(), key: "goes-key", crypt: "salsa20" };
    let rekeyed = Listener { name: "rekeyed", port: port(), key: "old-key", crypt: "aes" };
    let rekeyed_new = Listener { key: "new-key", crypt: "salsa20", ..rekeyed };
    let added = Listener { name: "added", port: port(), key: "added-key", crypt: "aes" };
    let stays_new = Listener { key: "stays-new-key", ..stays };
    let last = Listener { name: "last", port: port(), key: "last-key", crypt: "aes" };

    let dir = std::env::temp_dir().join(format!("kcpgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, log) = (dir.join("gateway.toml"), dir.join("gateway.log"));
    write(&file, &file_text(admin, backend, &[&stays, &goes, &rekeyed]));
    let server = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["server", "-config", file.to_str().unwrap(), "-log", log.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = server.id();
    let mut procs = support::Procs(vec![server]);
    support::wait_ready(admin);
    assert_eq!(listed(admin), names(&[&stays, &goes, &rekeyed]));

    // 100 streams: 40 through "stays", 40 through "rekeyed" (old key), 20 through "goes".
    let (stays_local, c) = client(&stays, stays.key, stays.crypt);
    procs.0.push(c);
    let (rekeyed_local, c) = client(&rekeyed, rekeyed.key, rekeyed.crypt);
    procs.0.push(c);
    let (goes_local, c) = client(&goes, goes.key, goes.crypt);
    procs.0.push(c);
    let mut kept = streams(stays_local, 40, 1000);
    kept.extend(streams(rekeyed_local, 40, 2000));
    let removed = streams(goes_local, 20, 3000);
    all_moving(&kept, "before the reload");
    all_moving(&removed, "before the reload");

    // A bad file, through the API and through SIGHUP, changes nothing.
    let bad = file_text(admin, backend, &[&stays, &rekeyed])
        .replace("mode = \"fast3\"\n\n[[listener]]", "mode = \"fast3\"\nsndwnd = 0\n\n[[listener]]");
    let (status, answer) = put(admin, &bad);
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.contains("PUT /api/v1/config:") && answer.contains("sndwnd") && answer.contains("nothing changed"),
        "{answer}"
    );
    write(&file, &bad);
    hangup(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_of(&log).contains("reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged: {}", log_of(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log_of(&log).contains("gateway.toml:"), "the refusal says where: {}", log_of(&log));
    assert_eq!(listed(admin), names(&[&stays, &goes, &rekeyed]), "a bad file changed the listeners");
    let refused = r#"kcpgate_config_reloads_total{result="refused"}"#;
    assert_eq!(support::metric(admin, refused), 2, "both refusals counted");
    assert_eq!(support::metric(admin, "kcpgate_config_last_reload_successful"), 0);
    all_moving(&kept, "after the bad reloads");
    all_moving(&removed, "after the bad reloads");

    // SIGHUP: "goes" removed, "added" added, "rekeyed" gets another key and crypt.
    write(&file, &file_text(admin, backend, &[&stays, &rekeyed_new, &added]));
    let reloaded = Instant::now();
    hangup(pid);
    listed_within(admin, &[&stays, &rekeyed_new, &added], "after SIGHUP");
    assert_eq!(support::metric(admin, r#"kcpgate_config_reloads_total{result="applied"}"#), 1);
    assert_eq!(support::metric(admin, "kcpgate_config_last_reload_successful"), 1);
    all_moving(&kept, "after SIGHUP");
    all_moving(&removed, "the removed listener's streams, draining");
    let removed_bytes = finish(removed, "the removed listener's streams");
    let released = released_within(goes.port, Duration::from_secs(DRAIN_TIMEOUT + 5));
    eprintln!(
        "SIGHUP: 20 streams of the removed listener finished with {removed_bytes} bytes verified; its port was free \
         {:.1} s after the reload ({released:?} after they finished)",
        reloaded.elapsed().as_secs_f64()
    );
    let (added_local, c) = client(&added, added.key, added.crypt);
    procs.0.push(c);
    assert!(echoes(added_local, Duration::from_secs(10)), "the added listener serves");
    let (old_key_local, c) = client(&rekeyed, rekeyed.key, rekeyed.crypt);
    procs.0.push(c);
    assert!(!echoes(old_key_local, Duration::from_secs(3)), "a new session with the old key is served");
    let (new_key_local, c) = client(&rekeyed_new, rekeyed_new.key, rekeyed_new.crypt);
    procs.0.push(c);
    assert!(echoes(new_key_local, Duration::from_secs(10)), "a new session with the new key is not served");

    // The API: "added" (20 streams now) removed, "last" added, "stays" rekeyed.
    let on_added = streams(added_local, 20, 4000);
    all_moving(&on_added, "before PUT");
    let text = file_text(admin, backend, &[&stays_new, &rekeyed_new, &last]);
    let (status, answer) = put(admin, &text);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["reload"]["added"], serde_json::json!(["last"]), "{answer}");
    assert_eq!(answer["reload"]["removed"], serde_json::json!(["added"]), "{answer}");
    assert_eq!(answer["reload"]["changed"], serde_json::json!(["stays"]), "{answer}");
    assert_eq!(answer["reload"]["unchanged"], serde_json::json!(["rekeyed"]), "{answer}");
    assert!(!answer.to_string().contains("stays-new-key"), "a key in the answer: {answer}");
    assert_eq!(listed(admin), names(&[&stays_new, &rekeyed_new, &last]));
    let put_at = Instant::now();
    all_moving(&kept, "after PUT");
    // These streams never end by themselves: they run on while their listener
    // drains, and are closed at -drain-timeout.
    all_moving(&on_added, "the removed listener's streams, draining");
    let released = released_within(added.port, Duration::from_secs(DRAIN_TIMEOUT + 5));
    assert!(released >= Duration::from_secs(DRAIN_TIMEOUT - 1), "closed before -drain-timeout: {released:?}");
    let cut: Vec<Result<u64, String>> = on_added
        .into_iter()
        .map(|s| {
            s.stop.store(true, Ordering::Relaxed);
            s.done.join().expect("stream thread")
        })
        .collect();
    assert!(cut.iter().all(Result::is_err), "a stream outlived its listener's drain: {cut:?}");
    eprintln!(
        "PUT: the removed listener's 20 endless streams were closed and its port free {:.1} s after the reload \
         (-drain-timeout {DRAIN_TIMEOUT})",
        put_at.elapsed().as_secs_f64()
    );
    let (last_local, c) = client(&last, last.key, last.crypt);
    procs.0.push(c);
    assert!(echoes(last_local, Duration::from_secs(10)), "the listener PUT added serves");
    let (stays_old, c) = client(&stays, stays.key, stays.crypt);
    procs.0.push(c);
    assert!(!echoes(stays_old, Duration::from_secs(3)), "a new session with the replaced key is served");

    let total = finish(kept, "the streams of the listeners that stayed");
    eprintln!("80 streams through both reloads: {total} bytes verified");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_webtransport_listener_added_by_a_reload_is_published_and_unpublished_once_removed() {
    let backend = support::echo_backend();
    let (admin, public) = (support::free_tcp_port(), support::free_tcp_port());
    let (udp, webtransport) = (support::free_udp_port("127.0.0.1"), support::free_udp_port("127.0.0.1"));
    let native = Listener { name: "native", port: udp, key: "k", crypt: "aes" };
    let without =
        file_text(admin, backend, &[&native]).replacen("quiet", &format!("public = \"127.0.0.1:{public}\"\nquiet"), 1);
    let with = format!(
        "{without}[[listener]]\nname = \"browser\"\ntransport = \"webtransport\"\nlisten = \"127.0.0.1:{webtransport}\"\n\
         target = \"127.0.0.1:{backend}\"\nkey = \"k\"\n"
    );
    let dir = std::env::temp_dir().join(format!("kcpgate-reload-wt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    write(&file, &without);
    let _procs = support::Procs(vec![support::kcpgate(&format!("server -config {}", file.display()))]);
    support::wait_ready(admin);
    let certificate = || support::admin_get(public, "/webtransport/certificate").expect("the public listener answers");
    assert_eq!(certificate().0, 404, "no WebTransport listener yet");

    let (status, answer) = put(admin, &with);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"added\":[\"browser\"]"), "{answer}");
    let (status, published) = certificate();
    assert_eq!(status, 200, "{published}");
    let published: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(published["port"], webtransport, "{published}");

    let (status, answer) = put(admin, &without);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"removed\":[\"browser\"]"), "{answer}");
    released_within(webtransport, Duration::from_secs(DRAIN_TIMEOUT + 5));
    assert_eq!(certificate().0, 404, "a removed WebTransport listener is still published");

    // A socket setting of a listener that stays is not applied, and the answer says so.
    let (status, answer) = put(admin, &without.replace("mode = \"fast3\"", "mode = \"fast3\"\nsockbuf = 1048576"));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("listener native: sockbuf and dscp apply to its sockets as they open"), "{answer}");
    assert_eq!(config(admin)["listeners"][0]["sockbuf"], 4_194_304, "the sockets' own size is shown");
    let _ = std::fs::remove_dir_all(&dir);
}
