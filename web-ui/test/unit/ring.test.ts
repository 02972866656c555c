import { describe, expect, it } from 'vitest';
import { Ring, Series } from '../../src/ring';

describe('Ring', () => {
  it('keeps the newest samples, oldest first', () => {
    const r = new Ring(3);
    expect(r.toArray()).toEqual([]);
    expect(r.last()).toBeUndefined();
    r.push(1);
    r.push(2);
    expect(r.toArray()).toEqual([1, 2]);
    r.push(3);
    r.push(4);
    r.push(5);
    expect(r.toArray()).toEqual([3, 4, 5]);
    expect(r.length).toBe(3);
    expect([r.at(0), r.last(), r.at(3), r.at(-1)]).toEqual([3, 5, undefined, undefined]);
    r.clear();
    expect(r.length).toBe(0);
    r.push(9);
    expect(r.toArray()).toEqual([9]);
  });

  it('wraps around many times without drifting', () => {
    const r = new Ring(7);
    for (let i = 0; i < 1000; i++) r.push(i);
    expect(r.toArray()).toEqual([993, 994, 995, 996, 997, 998, 999]);
  });

  it('refuses a size that holds nothing', () => {
    expect(() => new Ring(0)).toThrow(RangeError);
    expect(() => new Ring(1.5)).toThrow(RangeError);
  });
});

describe('Series', () => {
  it('keeps columns in step with the time axis and turns gaps into nulls', () => {
    const s = new Series(2, 2);
    s.push(10, [1, 2]);
    s.push(11, [null, 4]);
    s.push(12, [5, 6]);
    expect(s.length).toBe(2);
    expect(s.data()).toEqual([
      [11, 12],
      [null, 5],
      [4, 6],
    ]);
    expect(() => s.push(13, [1])).toThrow(RangeError);
  });
});
