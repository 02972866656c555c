//! KCP driven by arbitrary segments, sends, reads and clock steps: no panic, no
//! hang, and what it reads never exceeds what the peer's segments carried.
#![no_main]

use kcpgate_core::kcp::{Config, Kcp, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else { return };
    let mut cfg = Config { mtu: 1400, snd_wnd: 32, rcv_wnd: 32, stream: flags & 1 == 1, ..Config::default() };
    Mode::ALL[usize::from(flags >> 1) % Mode::ALL.len()].apply(&mut cfg);
    // The conversation of the vectors' sessions, so their segments are accepted.
    let mut kcp = Kcp::new(0x1122_3344, cfg);
    let (mut now, mut rest, mut carried, mut read) = (0u32, rest, 0usize, 0usize);
    let mut buf = vec![0u8; 1 << 16];
    while let [op, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        match op % 4 {
            0 => {
                carried += chunk.len();
                let _ = kcp.input(now, chunk, op & 4 == 0);
            }
            1 => {
                let _ = kcp.send(chunk);
            }
            2 => {
                now = now.wrapping_add(u32::from(*lo) * 10);
                kcp.handle_timeout(now);
                kcp.transmits().clear();
            }
            _ => {
                if let Ok(n) = kcp.recv(&mut buf) {
                    read += n;
                }
            }
        }
        assert!(read <= carried, "read {read} bytes of {carried} received");
    }
});
