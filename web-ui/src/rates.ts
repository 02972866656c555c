// Rates from counters: the API gives counters that only grow, and the dashboard
// divides the change between two readings by the time between them.

/** Per-second change of each counter between two readings taken `seconds` apart. */
export function rate(before: number, after: number, seconds: number): number | null {
  if (!(seconds > 0) || !Number.isFinite(before) || !Number.isFinite(after)) return null;
  // A counter that went down was reset (a restarted gateway): no rate for that step.
  if (after < before) return null;
  return (after - before) / seconds;
}

/** A reading of named counters at a time (milliseconds). */
export interface Reading {
  at: number;
  counters: Record<string, number>;
}

/**
 * Keeps the previous reading per key (a session id, a transport) and answers the
 * rates since it: the first reading of a key has none.
 */
export class RateTracker {
  private readonly previous = new Map<string | number, Reading>();

  /** Rates of every counter in `reading` since the previous reading of `key`. */
  observe(key: string | number, reading: Reading): Record<string, number | null> | null {
    const before = this.previous.get(key);
    this.previous.set(key, reading);
    if (!before) return null;
    const seconds = (reading.at - before.at) / 1000;
    const out: Record<string, number | null> = {};
    for (const [name, value] of Object.entries(reading.counters)) {
      out[name] = rate(before.counters[name] ?? Number.NaN, value, seconds);
    }
    return out;
  }

  /** Forgets every key not in `live` (sessions that closed), so memory follows what is shown. */
  retain(live: Set<string | number>): void {
    for (const key of this.previous.keys()) if (!live.has(key)) this.previous.delete(key);
  }

  get size(): number {
    return this.previous.size;
  }
}

/** Retransmitted segments as a fraction of segments sent; null when nothing was sent. */
export function retransmissionShare(retransPerSecond: number | null, segmentsPerSecond: number | null): number | null {
  if (retransPerSecond === null || segmentsPerSecond === null || segmentsPerSecond <= 0) return null;
  return Math.min(1, retransPerSecond / segmentsPerSecond);
}
