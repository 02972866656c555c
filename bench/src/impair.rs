//! What the relay does to one direction's datagrams, decided without I/O: random
//! and bursty (Gilbert–Elliott) loss, fixed and jittered delay, reordering,
//! duplication, corruption and a bandwidth cap. Seeded, so a run can be repeated.

use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The impairments of one direction. Parsed from `key=value,…`, e.g.
/// `loss=0.05,delay=20ms,jitter=5ms,reorder=0.01,dup=0.01,corrupt=0.001,rate=10MB`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spec {
    /// Probability that a datagram is lost, independently of the others.
    pub loss: f64,
    /// Gilbert–Elliott bursts: (probability to enter the bad state per datagram,
    /// probability to leave it); every datagram in the bad state is lost.
    pub burst: Option<(f64, f64)>,
    pub delay: Duration,
    /// Uniform extra delay in `0..jitter`.
    pub jitter: Duration,
    /// Probability that a datagram is held back (by one more `delay`, at least
    /// 10 ms) so later ones overtake it.
    pub reorder: f64,
    pub duplicate: f64,
    /// Probability that one byte of a datagram is flipped.
    pub corrupt: f64,
    /// Bytes per second; 0 is unlimited. Datagrams queue behind each other.
    pub rate: u64,
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Spec, String> {
        let mut spec = Spec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("{item:?} is not key=value"))?;
            let prob = || -> Result<f64, String> {
                let p: f64 = value.parse().map_err(|_| format!("{key}: {value:?} is not a number"))?;
                if (0.0..=1.0).contains(&p) {
                    Ok(p)
                } else {
                    Err(format!("{key}: {p} is not a probability between 0 and 1"))
                }
            };
            match key {
                "loss" => spec.loss = prob()?,
                "burst" => {
                    let (enter, leave) = value.split_once('/').ok_or("burst: give enter/leave, e.g. 0.01/0.3")?;
                    let p = |v: &str| v.parse::<f64>().map_err(|_| format!("burst: {v:?} is not a number"));
                    spec.burst = Some((p(enter)?, p(leave)?));
                }
                "delay" => spec.delay = duration(value)?,
                "jitter" => spec.jitter = duration(value)?,
                "reorder" => spec.reorder = prob()?,
                "dup" => spec.duplicate = prob()?,
                "corrupt" => spec.corrupt = prob()?,
                "rate" => spec.rate = bytes(value)?,
                _ => {
                    return Err(format!(
                        "unknown impairment {key:?} (loss, burst, delay, jitter, reorder, dup, corrupt, rate)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

fn duration(v: &str) -> Result<Duration, String> {
    let ms = v.strip_suffix("ms").unwrap_or(v);
    ms.parse::<f64>().map(|m| Duration::from_secs_f64(m / 1000.0)).map_err(|_| format!("{v:?} is not a delay in ms"))
}

fn bytes(v: &str) -> Result<u64, String> {
    let (num, mult) = match v {
        _ if v.ends_with("MB") => (&v[..v.len() - 2], 1_000_000.0),
        _ if v.ends_with("KB") => (&v[..v.len() - 2], 1_000.0),
        _ => (v, 1.0),
    };
    num.parse::<f64>().map(|n| (n * mult) as u64).map_err(|_| format!("{v:?} is not a rate in bytes/s"))
}

/// What happened to the datagrams of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub lost_random: u64,
    pub lost_burst: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    pub sent: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.received += o.received;
        self.lost_random += o.lost_random;
        self.lost_burst += o.lost_burst;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.reordered += o.reordered;
        self.sent += o.sent;
    }
}

impl Counters {
    /// The loss the receiver saw, as a fraction of what came in.
    pub fn loss(&self) -> f64 {
        (self.lost_random + self.lost_burst) as f64 / self.received.max(1) as f64
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {} out {} lost {} ({} random, {} in bursts; {:.2} %) duplicated {} corrupted {} reordered {}",
            self.received,
            self.sent,
            self.lost_random + self.lost_burst,
            self.lost_random,
            self.lost_burst,
            self.loss() * 100.0,
            self.duplicated,
            self.corrupted,
            self.reordered
        )
    }
}

/// Applies a [`Spec`] to datagrams. Time is given in as a duration since any fixed
/// start.
pub struct Impairer {
    spec: Spec,
    rng: SmallRng,
    bad: bool,
    /// When the bandwidth cap lets the link take the next byte.
    link_free: Duration,
    pub counters: Counters,
}

impl Impairer {
    pub fn new(spec: Spec, seed: u64) -> Impairer {
        Impairer {
            spec,
            rng: SmallRng::seed_from_u64(seed),
            bad: false,
            link_free: Duration::ZERO,
            counters: Counters::default(),
        }
    }

    /// Decides the fate of `datagram` arriving at `now`: `out` gets each copy to
    /// deliver with its departure time (none if lost). Corruption is applied to the
    /// copies.
    pub fn process(&mut self, now: Duration, datagram: &[u8], out: &mut Vec<(Duration, Vec<u8>)>) {
        self.counters.received += 1;
        if let Some((enter, leave)) = self.spec.burst {
            let flip = if self.bad { leave } else { enter };
            if self.rng.random_bool(flip) {
                self.bad = !self.bad;
            }
            if self.bad {
                self.counters.lost_burst += 1;
                return;
            }
        }
        if self.rng.random_bool(self.spec.loss) {
            self.counters.lost_random += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.spec.duplicate) {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = now;
            if self.spec.rate > 0 {
                let start = self.link_free.max(now);
                self.link_free = start + Duration::from_secs_f64(datagram.len() as f64 / self.spec.rate as f64);
                at = self.link_free;
            }
            at += self.spec.delay;
            if !self.spec.jitter.is_zero() {
                at += self.spec.jitter.mul_f64(self.rng.random::<f64>());
            }
            if self.rng.random_bool(self.spec.reorder) {
                self.counters.reordered += 1;
                at += self.spec.delay.max(Duration::from_millis(10));
            }
            let mut copy = datagram.to_vec();
            if !copy.is_empty() && self.rng.random_bool(self.spec.corrupt) {
                self.counters.corrupted += 1;
                let i = self.rng.random_range(0..copy.len());
                copy[i] ^= 1 << self.rng.random_range(0..8);
            }
            self.counters.sent += 1;
            out.push((at, copy));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: &str, n: usize) -> (Counters, Vec<(Duration, Vec<u8>)>) {
        let mut imp = Impairer::new(spec.parse().unwrap(), 7);
        let mut out = Vec::new();
        for i in 0..n {
            imp.process(Duration::from_millis(i as u64), &[i as u8; 100], &mut out);
        }
        (imp.counters, out)
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let s: Spec = "loss=0.05,delay=20ms,jitter=5,rate=1.5MB,burst=0.01/0.3".parse().unwrap();
        assert_eq!(
            (s.loss, s.delay, s.jitter, s.rate),
            (0.05, Duration::from_millis(20), Duration::from_millis(5), 1_500_000)
        );
        assert_eq!(s.burst, Some((0.01, 0.3)));
        assert!("loss=5".parse::<Spec>().unwrap_err().contains("probability"));
        assert!("lose=0.1".parse::<Spec>().unwrap_err().contains("unknown"));
    }

    #[test]
    fn realised_loss_is_near_the_setting_and_counted() {
        let (c, out) = run("loss=0.1", 20_000);
        assert!((c.loss() - 0.1).abs() < 0.01, "{c}");
        assert_eq!(out.len() as u64, c.sent);
        assert_eq!(c.received, c.sent + c.lost_random);
    }

    #[test]
    fn bursts_cluster_losses() {
        // Mean loss = enter / (enter + leave) = 0.01 / 0.26 ≈ 3.8 %, in runs of ~4.
        let (c, out) = run("burst=0.01/0.25", 50_000);
        assert!((c.loss() - 0.038).abs() < 0.01, "{c}");
        let gaps = out.windows(2).filter(|w| w[1].0 - w[0].0 > Duration::from_millis(1)).count() as u64;
        assert!(c.lost_burst > 3 * gaps, "lost {} datagrams in {gaps} gaps", c.lost_burst);
    }

    #[test]
    fn delay_reorder_duplicate_corrupt_and_rate() {
        let (_, out) = run("delay=20ms", 10);
        assert!(out.iter().enumerate().all(|(i, (at, _))| *at == Duration::from_millis(i as u64 + 20)));
        let (c, out) = run("delay=20ms,reorder=0.1,dup=0.1,corrupt=0.1", 10_000);
        assert!(c.reordered > 800 && c.duplicated > 800 && c.corrupted > 800, "{c}");
        assert!(out.windows(2).any(|w| w[1].0 < w[0].0), "some datagrams are overtaken");
        let changed = out.iter().filter(|(_, d)| d.iter().any(|&b| b != d[0]) || d[0] != d[1]).count();
        assert_eq!(changed as u64, c.corrupted, "one flipped bit per corrupted copy");
        // 100-byte datagrams every 1 ms against 50 KB/s: the queue grows 1 ms per datagram.
        let (_, out) = run("rate=50KB", 100);
        assert_eq!(out[99].0, Duration::from_millis(200));
    }
}
