//! A token bucket for a session's outgoing datagram bytes (kcp-go's `SetRateLimit`,
//! docs/protocol.md §8.8): `rate` bytes per second, up to [`BURST`] bytes at once.
//!
//! Bytes are charged after they are sent, so the bucket may go into debt by what
//! one flush overshot; nothing more is sent until the debt is paid off. Time comes
//! in as milliseconds (wrapping, as the rest of the core counts it). Tokens are
//! kept in thousandths of a byte, so a rate that is not a multiple of 1000 bytes/s
//! loses nothing to rounding.

use crate::kcp::diff;

/// kcp-go's burst: 64 datagrams of 1500 bytes.
pub const BURST: u32 = 96_000;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second, which is thousandths of a byte per millisecond.
    rate: i64,
    /// Thousandths of a byte; negative while in debt.
    tokens: i64,
    /// When `tokens` was last brought up to date; `None` until the first call.
    updated: Option<u32>,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (`rate > 0`).
    pub fn new(rate: u32) -> TokenBucket {
        assert!(rate > 0, "a rate of 0 means no limit: use no bucket");
        TokenBucket { rate: i64::from(rate), tokens: Self::capacity(), updated: None }
    }

    fn capacity() -> i64 {
        i64::from(BURST) * 1000
    }

    fn refill(&mut self, now: u32) {
        match self.updated {
            Some(then) if diff(now, then) > 0 => {
                let elapsed = i64::from(diff(now, then));
                self.tokens = (self.tokens + elapsed * self.rate).min(Self::capacity());
                self.updated = Some(now);
            }
            Some(_) => {}
            None => self.updated = Some(now),
        }
    }

    /// Whole bytes that may be sent at `now` (0 while in debt).
    pub fn available(&mut self, now: u32) -> usize {
        self.refill(now);
        (self.tokens.max(0) / 1000) as usize
    }

    /// Takes `bytes` that were sent; the bucket may go into debt.
    pub fn charge(&mut self, bytes: usize) {
        self.tokens -= bytes as i64 * 1000;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_then_refills_at_the_rate_up_to_the_burst() {
        let mut b = TokenBucket::new(10_000);
        assert_eq!(b.available(0), 96_000);
        b.charge(96_000);
        assert_eq!(b.available(0), 0);
        assert_eq!(b.available(150), 1500);
        assert_eq!(b.available(1_000_000), 96_000, "a long idle refills only the burst");
    }

    #[test]
    fn debt_is_paid_before_anything_more_goes() {
        let mut b = TokenBucket::new(1_000);
        assert_eq!(b.available(0), 96_000);
        b.charge(97_000);
        assert_eq!(b.available(999), 0);
        assert_eq!(b.available(1000), 0);
        assert_eq!(b.available(1001), 1);
    }

    #[test]
    fn fractional_rates_lose_nothing_and_time_may_wrap() {
        let mut b = TokenBucket::new(1_500); // 1.5 bytes per ms
        let start = u32::MAX - 500;
        b.available(start);
        b.charge(96_000);
        assert_eq!(b.available(start.wrapping_add(1000)), 1500, "1000 ms across the wrap give 1500 bytes");
        assert_eq!(b.available(start.wrapping_add(500)), 1500, "an older time adds nothing");
        assert_eq!(b.available(start.wrapping_add(1001)), 1501);
    }
}
