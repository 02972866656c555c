//! An smux server session fed arbitrary bytes in arbitrary chunks (every version
//! setting): no panic, it never claims more than it was given, and once it has
//! failed it takes nothing more.
#![no_main]

use kcpgate_core::smux::{MuxConfig, Role, Mux, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else { return };
    let mut cfg = MuxConfig::kcptun();
    cfg.version = [Version::Detect, Version::V1, Version::V2][usize::from(pick % 3)];
    let mut s = Mux::new(Role::Server, cfg, 0);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let mut rest = rest;
    let mut now = 0u32;
    while let [n, tail @ ..] = rest {
        let (chunk, next) = tail.split_at(usize::from(*n).min(tail.len()));
        rest = next;
        let failed = s.error().is_some();
        match s.handle_input(chunk) {
            Ok(taken) => assert!(taken <= chunk.len() && !(failed && taken > 0), "took {taken} of {}", chunk.len()),
            Err(_) => assert!(s.error().is_some(), "an error is kept"),
        }
        while let Some(sid) = s.accept() {
            let _ = s.stream_write(sid, b"reply");
        }
        while s.poll_event().is_some() {}
        for sid in s.stream_ids().collect::<Vec<_>>() {
            let _ = s.stream_read(sid, &mut buf);
            if n & 1 == 1 {
                let _ = s.stream_close(sid);
            }
        }
        while s.poll_transmit(&mut out) {
            out.clear();
        }
        now = now.wrapping_add(u32::from(*n) * 100);
        s.handle_timeout(now);
    }
});
