//! Which datagrams may open a session, checked before one is allocated: not a
//! copy of one that opened a session before, and within the rates, per source and
//! in all ([`OpeningGate`]). A driver with several listeners gives them one shared
//! [`Admission`] so the rules hold across them.
//!
//! A datagram that may open a session has passed the checksum, so it came from
//! someone with the key, or is a copy of one that did. Spoofed sources each get a
//! bucket of their own, so the global bucket is what bounds a flood from many
//! addresses; a source's own bucket keeps one address (a misbehaving client, a
//! replayer) from taking the whole global budget. Sources are 64-bit keys the
//! driver chooses (the gateway uses the IPv4 address, or an IPv6 address's /64,
//! so every port of one host, and every address of one IPv6 subnet, is one
//! source).

use crate::replay::RecentNonces;

/// Rates in sessions per second; a rate of 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpeningLimits {
    /// Sessions one source may open per second, on average.
    pub per_source_rate: u32,
    /// Sessions one source may open at once.
    pub per_source_burst: u32,
    /// Sessions all sources together may open per second, on average.
    pub global_rate: u32,
    /// Sessions all sources together may open at once.
    pub global_burst: u32,
}

impl OpeningLimits {
    /// No limit at all.
    pub const NONE: OpeningLimits =
        OpeningLimits { per_source_rate: 0, per_source_burst: 0, global_rate: 0, global_burst: 0 };
}

impl Default for OpeningLimits {
    /// 50 per second and 500 at once per source (a carrier NAT puts many players
    /// behind one address); 1,000 per second and 5,000 at once in all.
    fn default() -> OpeningLimits {
        OpeningLimits { per_source_rate: 50, per_source_burst: 500, global_rate: 1_000, global_burst: 5_000 }
    }
}

/// Why a datagram may not open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A copy of a datagram that opened a session before.
    Replayed,
    /// Its source's bucket is empty.
    Source,
    /// The global bucket is empty.
    Global,
}

/// The decision whether a datagram may open a session.
pub trait Admission: Send {
    /// Whether a datagram from `source` (see `listener::Listener::set_source_key`)
    /// whose nonce has `fingerprint` may open a session at `now`. Only an admitted
    /// datagram's fingerprint is remembered.
    fn admit(&mut self, now: u32, source: u64, fingerprint: Option<u64>) -> Result<(), Refusal>;
}

/// Nonces of session-opening datagrams remembered (1 MiB once used), so a copy
/// of one cannot open a session again, from any address.
pub const OPENING_NONCES: usize = 65_536;

/// The listener's default [`Admission`]: the last `OPENING_NONCES` opening
/// nonces, and the rate buckets.
#[derive(Debug, Clone)]
pub struct OpeningGate {
    openings: RecentNonces,
    guard: OpeningGuard,
}

impl OpeningGate {
    /// A gate with `limits`, its buckets full at `now`; `seed` keys the hash that
    /// places sources in slots (take it from the OS).
    pub fn new(limits: OpeningLimits, now: u32, seed: u64) -> OpeningGate {
        OpeningGate { openings: RecentNonces::new(OPENING_NONCES), guard: OpeningGuard::new(limits, now, seed) }
    }
}

impl Admission for OpeningGate {
    /// Copies are refused first, so they spend no tokens. A nonce is remembered
    /// only once the buckets admit it: refused openings (a flood over the rates)
    /// cannot push the nonces of real openings out of the log, and a copy of a
    /// refused one is no copy of a session.
    fn admit(&mut self, now: u32, source: u64, fingerprint: Option<u64>) -> Result<(), Refusal> {
        if fingerprint.is_some_and(|f| self.openings.contains(f)) {
            return Err(Refusal::Replayed);
        }
        self.guard.admit(now, source)?;
        if let Some(f) = fingerprint {
            self.openings.insert(f);
        }
        Ok(())
    }
}

/// Source slots. A source whose slot another holds takes the bucket over as it
/// is, not a full one: cycling through addresses gains no fresh bursts, and the
/// per-process seed keeps an attacker from choosing addresses that share a
/// victim's slot.
const SOURCE_SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Thousandths of a token.
    milli_tokens: u64,
    at: u32,
}

impl Bucket {
    fn full(burst: u32, now: u32) -> Bucket {
        Bucket { milli_tokens: u64::from(burst) * 1000, at: now }
    }

    /// Refills for the time since the last take, then takes one token if there is one.
    fn take(&mut self, now: u32, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        // A clock that steps back refills nothing (and moves nothing back).
        let elapsed = crate::kcp::diff(now, self.at);
        if elapsed > 0 {
            self.at = now;
            let cap = u64::from(burst.max(1)) * 1000;
            self.milli_tokens = (self.milli_tokens + elapsed as u64 * u64::from(rate)).min(cap);
        }
        if self.milli_tokens < 1000 {
            return false;
        }
        self.milli_tokens -= 1000;
        true
    }
}

/// The buckets. Fixed memory (128 KiB of source slots, taken on first use),
/// nothing allocated per datagram.
#[derive(Debug, Clone)]
pub struct OpeningGuard {
    limits: OpeningLimits,
    global: Bucket,
    sources: Vec<Option<(u64, Bucket)>>,
    slot_hash: foldhash::quality::FixedState,
}

impl OpeningGuard {
    /// Buckets for `limits`, full at `now`; `seed` keys the slot hash.
    pub fn new(limits: OpeningLimits, now: u32, seed: u64) -> OpeningGuard {
        OpeningGuard {
            limits,
            global: Bucket::full(limits.global_burst, now),
            sources: Vec::new(),
            slot_hash: foldhash::quality::FixedState::with_seed(seed),
        }
    }

    /// Takes a token from `source`'s bucket and the global one, or says which was
    /// empty (and then takes none: a refused source does not spend the global budget).
    pub fn admit(&mut self, now: u32, source: u64) -> Result<(), Refusal> {
        let l = self.limits;
        if l.per_source_rate > 0 {
            if self.sources.is_empty() {
                self.sources = vec![None; SOURCE_SLOTS];
            }
            let slot = std::hash::BuildHasher::hash_one(&self.slot_hash, source) as usize % SOURCE_SLOTS;
            let entry = &mut self.sources[slot];
            let (key, bucket) = entry.get_or_insert((source, Bucket::full(l.per_source_burst, now)));
            *key = source;
            // Peek first: only spend the source's token once the global one is there.
            let mut trial = *bucket;
            if !trial.take(now, l.per_source_rate, l.per_source_burst) {
                *bucket = trial;
                return Err(Refusal::Source);
            }
            if !self.global.take(now, l.global_rate, l.global_burst) {
                return Err(Refusal::Global);
            }
            *bucket = trial;
            return Ok(());
        }
        if !self.global.take(now, l.global_rate, l.global_burst) {
            return Err(Refusal::Global);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_source_rate: u32, per_source_burst: u32, global_rate: u32, global_burst: u32) -> OpeningLimits {
        OpeningLimits { per_source_rate, per_source_burst, global_rate, global_burst }
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut g = OpeningGuard::new(limits(10, 5, 0, 0), 1_000, 1);
        for _ in 0..5 {
            assert_eq!(g.admit(1_000, 7), Ok(()));
        }
        assert_eq!(g.admit(1_000, 7), Err(Refusal::Source));
        assert_eq!(g.admit(1_000, 8), Ok(()), "another source has its own bucket");
        assert_eq!(g.admit(1_099, 7), Err(Refusal::Source), "99 ms at 10/s is no token yet");
        assert_eq!(g.admit(1_100, 7), Ok(()), "100 ms is one");
        assert_eq!(g.admit(1_100, 7), Err(Refusal::Source));
        // A long pause refills to the burst, no more.
        let admitted = (0..20).filter(|_| g.admit(60_000, 7).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn the_global_bucket_bounds_many_sources() {
        let mut g = OpeningGuard::new(limits(10, 5, 100, 50), 0, 2);
        let admitted = (0..10_000u64).filter(|&s| g.admit(0, s).is_ok()).count();
        assert_eq!(admitted, 50, "one each from 10,000 sources, the global burst of 50");
        // One second later: 100 more in all.
        let admitted = (10_000..20_000u64).filter(|&s| g.admit(1_000, s).is_ok()).count();
        assert_eq!(admitted, 50, "refilled at 100/s but capped at the burst of 50");
        let admitted = (20_000..30_000u64).filter(|&s| g.admit(1_500, s).is_ok()).count();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn a_refused_source_spends_nothing_of_the_global_budget() {
        let mut g = OpeningGuard::new(limits(1, 1, 1, 2), 0, 3);
        assert_eq!(g.admit(0, 1), Ok(()));
        for _ in 0..100 {
            assert_eq!(g.admit(0, 1), Err(Refusal::Source));
        }
        assert_eq!(g.admit(0, 2), Ok(()), "the global bucket still had its second token");
        assert_eq!(g.admit(0, 3), Err(Refusal::Global));
    }

    #[test]
    fn no_limit_admits_everything_and_allocates_nothing() {
        let mut g = OpeningGuard::new(OpeningLimits::NONE, 0, 4);
        assert!((0..100_000u64).all(|s| g.admit(0, s % 3).is_ok()));
        assert!(g.sources.is_empty());
    }

    #[test]
    fn time_going_backwards_or_wrapping_refills_nothing_and_panics_nowhere() {
        let mut g = OpeningGuard::new(limits(1, 1, 0, 0), u32::MAX - 10, 5);
        assert_eq!(g.admit(u32::MAX - 10, 1), Ok(()));
        assert_eq!(g.admit(u32::MAX - 500, 1), Err(Refusal::Source), "earlier: no refill");
        assert_eq!(g.admit(u32::MAX - 20, 1), Err(Refusal::Source));
        assert_eq!(g.admit(1_000, 1), Ok(()), "a second later across the wrap: one token");
    }

    #[test]
    fn a_source_taking_over_a_slot_gets_no_fresh_burst() {
        let mut g = OpeningGuard::new(limits(1, 10, 0, 0), 0, 6);
        let admitted = (0..100).filter(|_| g.admit(0, 1).is_ok()).count();
        assert_eq!(admitted, 10);
        // Sources that share source 1's slot find its bucket as source 1 left it.
        let hash = |s: u64| std::hash::BuildHasher::hash_one(&g.slot_hash, s) as usize % SOURCE_SLOTS;
        let same_slot: Vec<u64> = (2..).filter(|&s| hash(s) == hash(1)).take(50).collect();
        let admitted = same_slot.iter().filter(|&&s| g.admit(0, s).is_ok()).count();
        assert_eq!(admitted, 0, "50 sources cycling through one slot get nothing of a drained bucket");
        // And refills go on at the rate, whoever holds the slot.
        assert_eq!(g.admit(1_000, same_slot[0]), Ok(()));
        assert_eq!(g.admit(1_000, 1), Err(Refusal::Source));
    }

    #[test]
    fn the_slot_hash_depends_on_the_seed() {
        let slots = |seed| {
            let g = OpeningGuard::new(limits(1, 1, 0, 0), 0, seed);
            (0..64u64)
                .map(|s| std::hash::BuildHasher::hash_one(&g.slot_hash, s) as usize % SOURCE_SLOTS)
                .collect::<Vec<_>>()
        };
        assert_eq!(slots(7), slots(7));
        assert_ne!(slots(7), slots(8), "another process places sources elsewhere");
    }

    #[test]
    fn only_admitted_openings_are_remembered() {
        let mut gate = OpeningGate::new(limits(1, 2, 0, 0), 0, 9);
        assert_eq!(gate.admit(0, 1, Some(100)), Ok(()));
        assert_eq!(gate.admit(0, 1, Some(100)), Err(Refusal::Replayed), "a copy of an admitted opening");
        assert_eq!(gate.admit(0, 1, Some(101)), Ok(()));
        // Over the rate: refused, and not remembered.
        for f in 200..10_200 {
            assert_eq!(gate.admit(0, 1, Some(f)), Err(Refusal::Source));
        }
        assert_eq!(gate.openings.len(), 2, "refused openings fill nothing of the log");
        assert_eq!(gate.admit(1_000, 1, Some(100)), Err(Refusal::Replayed), "the admitted ones are still known");
        assert_eq!(
            gate.admit(1_000, 1, Some(200)),
            Ok(()),
            "a refused opening sent again is admitted once there is room"
        );
    }
}
