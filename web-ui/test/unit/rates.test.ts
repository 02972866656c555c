import { describe, expect, it } from 'vitest';
import { RateTracker, rate, retransmissionShare } from '../../src/rates';

describe('rates', () => {
  it('divides the change by the time between readings', () => {
    expect(rate(1000, 3000, 2)).toBe(1000);
    expect(rate(5, 5, 1)).toBe(0);
  });

  it('gives no rate without time or after a counter reset', () => {
    expect(rate(0, 10, 0)).toBeNull();
    expect(rate(0, 10, -1)).toBeNull();
    expect(rate(500, 100, 1)).toBeNull();
    expect(rate(Number.NaN, 1, 1)).toBeNull();
  });

  it('tracks each key on its own and forgets closed ones', () => {
    const t = new RateTracker();
    expect(t.observe(1, { at: 0, counters: { bytes: 0 } })).toBeNull();
    expect(t.observe(2, { at: 0, counters: { bytes: 100 } })).toBeNull();
    expect(t.observe(1, { at: 500, counters: { bytes: 1000 } })).toEqual({ bytes: 2000 });
    expect(t.observe(2, { at: 2000, counters: { bytes: 300 } })).toEqual({ bytes: 100 });
    // A counter the earlier reading lacked has no rate.
    expect(t.observe(1, { at: 1500, counters: { bytes: 2000, packets: 5 } })).toEqual({ bytes: 1000, packets: null });
    t.retain(new Set([2]));
    expect(t.size).toBe(1);
    expect(t.observe(1, { at: 2500, counters: { bytes: 3000 } })).toBeNull();
  });

  it('shares retransmissions of segments sent, within 0 to 1', () => {
    expect(retransmissionShare(5, 100)).toBe(0.05);
    expect(retransmissionShare(5, 0)).toBeNull();
    expect(retransmissionShare(null, 10)).toBeNull();
    expect(retransmissionShare(20, 10)).toBe(1);
  });
});
