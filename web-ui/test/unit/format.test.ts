import { describe, expect, it } from 'vitest';
import { byteRate, bytes, clock, count, cwnd, duration, hex, millis, percent, perSecond } from '../../src/format';

describe('format', () => {
  it('gives bytes three significant digits in decimal units', () => {
    expect(bytes(0)).toBe('0 B');
    expect(bytes(999)).toBe('999 B');
    expect(bytes(1000)).toBe('1.00 kB');
    expect(bytes(1234)).toBe('1.23 kB');
    expect(bytes(12_345)).toBe('12.3 kB');
    expect(bytes(123_456)).toBe('123 kB');
    expect(bytes(999_999)).toBe('1.00 MB');
    expect(bytes(4.2e12)).toBe('4.20 TB');
    expect(bytes(-2048)).toBe('-2.05 kB');
    expect(bytes(Number.NaN)).toBe('–');
    expect(byteRate(105_810_000)).toBe('106 MB/s');
  });

  it('writes counts, rates and shares', () => {
    expect(count(1_234_567)).toBe('1,234,567');
    expect(count(Infinity)).toBe('–');
    expect(perSecond(4.04)).toBe('4.0/s');
    expect(perSecond(1234.4)).toBe('1,234/s');
    expect(percent(0.0123)).toBe('1.2 %');
    expect(millis(41.6)).toBe('42 ms');
  });

  it('writes durations a person reads at a glance', () => {
    expect(duration(850)).toBe('850 ms');
    expect(duration(1500)).toBe('1.5 s');
    expect(duration(42_000)).toBe('42 s');
    expect(duration(200_000)).toBe('3 min 20 s');
    expect(duration(7_500_000)).toBe('2 h 5 min');
    expect(duration(3 * 86_400_000 + 4 * 3_600_000)).toBe('3 d 4 h');
    expect(duration(-1)).toBe('–');
  });

  it('shows bytes as hex, cut with an ellipsis', () => {
    expect(hex(new Uint8Array([0, 15, 255]))).toBe('00 0f ff');
    expect(hex(new Uint8Array(10), 4)).toBe('00 00 00 00 …');
  });
});

describe('clock and congestion window', () => {
  it('writes times on a 24-hour clock, as the charts do', () => {
    const afternoon = new Date(2026, 11, 7, 14, 3, 27);
    expect(clock(afternoon)).toMatch(/^14.03.27$/);
    expect(clock(new Date(2026, 11, 7, 0, 5, 9))).toMatch(/^00.05.09$/);
  });
  it('says off for a window congestion control never set', () => {
    expect(cwnd(0)).toBe('off');
    expect(cwnd(32)).toBe('32');
  });
});
