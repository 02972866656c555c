//! Traffic for the benchmarks: a bulk source and a verifying sink, an echo backend,
//! and a ping-pong client that measures round trips.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// The byte stream every bulk transfer carries, so the sink can check each byte.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Sends `total` pattern bytes to `to`.
pub fn bulk_source(to: SocketAddr, total: u64, seed: u64) -> std::io::Result<()> {
    let mut c = TcpStream::connect(to)?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        c.write_all(&buf[..n])?;
        left -= n as u64;
    }
    c.shutdown(std::net::Shutdown::Write)
}

/// What a sink saw of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub bytes: u64,
    pub intact: bool,
}

/// Accepts one connection and reads `total` bytes, checking them against the pattern.
pub fn bulk_sink(listener: TcpListener, total: u64, seed: u64, timeout: Duration) -> std::io::Result<Received> {
    let (mut c, _) = listener.accept()?;
    c.set_read_timeout(Some(timeout))?;
    let mut pattern = Pattern::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let (mut bytes, mut intact) = (0u64, true);
    while bytes < total {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // The pattern is generated in 8-byte words: keep reads aligned to them.
        let mut got = n;
        while got % 8 != 0 && bytes + (got as u64) < total {
            let m = c.read(&mut buf[got..])?;
            if m == 0 {
                break;
            }
            got += m;
        }
        pattern.fill(&mut want[..got]);
        intact &= buf[..got] == want[..got];
        bytes += got as u64;
    }
    Ok(Received { bytes, intact: intact && bytes == total })
}

/// A TCP echo backend on a thread of its own; returns its address.
pub fn echo_backend() -> std::io::Result<SocketAddr> {
    echo_backend_on("127.0.0.1:0".parse().expect("an address"))
}

/// [`echo_backend`] on `addr`.
pub fn echo_backend_on(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut r = c.try_clone().expect("clone");
                let mut w = c;
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    if w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// `count` round trips of `size` bytes through `to`, one at a time; returns each
/// round trip's time. A message that does not come back within `timeout` fails.
pub fn ping_pong(to: SocketAddr, count: usize, size: usize, timeout: Duration) -> std::io::Result<Vec<Duration>> {
    let mut c = TcpStream::connect(to)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(timeout))?;
    let mut times = Vec::with_capacity(count);
    let mut msg = vec![0u8; size];
    let mut back = vec![0u8; size];
    for i in 0..count {
        msg.fill(i as u8);
        let t = Instant::now();
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        times.push(t.elapsed());
        if back != msg {
            return Err(std::io::Error::other(format!("message {i} came back changed")));
        }
    }
    Ok(times)
}

/// The `p`-th percentile (0–100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_transfer_is_verified_and_a_changed_byte_is_caught() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sink = thread::spawn(move || bulk_sink(l, 1_000_003, 5, Duration::from_secs(5)).unwrap());
        bulk_source(addr, 1_000_003, 5).unwrap();
        let got = sink.join().unwrap();
        assert!(got.intact && got.bytes == 1_000_003, "{got:?}");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sink = thread::spawn(move || bulk_sink(l, 1000, 5, Duration::from_secs(5)).unwrap());
        let mut c = TcpStream::connect(addr).unwrap();
        let mut data = vec![0u8; 1000];
        Pattern::new(5).fill(&mut data);
        data[500] ^= 1;
        c.write_all(&data).unwrap();
        drop(c);
        assert!(!sink.join().unwrap().intact);
    }

    #[test]
    fn ping_pong_through_an_echo_and_percentiles() {
        let times = ping_pong(echo_backend().unwrap(), 50, 100, Duration::from_secs(5)).unwrap();
        assert_eq!(times.len(), 50);
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(
            (percentile(&samples, 50.0), percentile(&samples, 99.0), percentile(&samples, 100.0)),
            (ms(50), ms(99), ms(100))
        );
    }
}
