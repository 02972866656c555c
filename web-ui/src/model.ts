import { RateTracker, rate, retransmissionShare } from './rates';
import { Series } from './ring';
import type { SessionEvent, Stats, TransportKind } from './types';

/** Samples the overview keeps: 5 minutes at one a second. */
export const HISTORY = 300;
export const TRANSPORTS: TransportKind[] = ['udp', 'webtransport'];

/** What the overview shows now, besides the charts. */
export interface Snapshot {
  stats: Stats;
  bytesInPerSecond: number | null;
  bytesOutPerSecond: number | null;
  retransShare: number | null;
  cpuShare: number | null;
}

/**
 * The gateway's recent history, fed by the event stream whatever view is open, so
 * that the overview's charts are full when the operator comes back to them.
 */
export class Model {
  /** udp in, udp out, webtransport in, webtransport out (bytes/s). */
  readonly throughput = new Series(HISTORY, 4);
  /** Sessions open: udp, webtransport. */
  readonly sessions = new Series(HISTORY, 2);
  /** Retransmitted share of segments sent: udp, webtransport. */
  readonly retrans = new Series(HISTORY, 2);
  /** FEC recovered and lost segments per second: udp, webtransport each. */
  readonly recovery = new Series(HISTORY, 4);
  snapshot: Snapshot | null = null;
  readonly recent: (SessionEvent & { at: number })[] = [];
  private readonly rates = new RateTracker();
  private previousCpu: { at: number; seconds: number } | null = null;
  private readonly listeners = new Set<() => void>();
  private readonly sessionListeners = new Set<(e: SessionEvent) => void>();

  /** A `stats` event, received at `at` (ms). */
  onStats(stats: Stats, at: number): void {
    const time = at / 1000;
    const per = new Map(TRANSPORTS.map((t) => [t, null as Record<string, number | null> | null]));
    let inRate: number | null = null;
    let outRate: number | null = null;
    let retrans: number | null = null;
    let segments: number | null = null;
    for (const t of stats.transports) {
      const r = this.rates.observe(t.transport, {
        at,
        counters: {
          bytes_in: t.bytes_in,
          bytes_out: t.bytes_out,
          segments_out: t.segments_out,
          retrans: t.retrans_segs,
          lost: t.lost_segs,
          fec: t.fec_recovered,
        },
      });
      per.set(t.transport, r);
      if (r) {
        inRate = (inRate ?? 0) + (r.bytes_in ?? 0);
        outRate = (outRate ?? 0) + (r.bytes_out ?? 0);
        retrans = (retrans ?? 0) + (r.retrans ?? 0);
        segments = (segments ?? 0) + (r.segments_out ?? 0);
      }
    }
    const of = (t: TransportKind, name: string) => per.get(t)?.[name] ?? null;
    const open = (t: TransportKind) => stats.transports.find((x) => x.transport === t)?.sessions_open ?? 0;
    this.throughput.push(time, [of('udp', 'bytes_in'), of('udp', 'bytes_out'), of('webtransport', 'bytes_in'), of('webtransport', 'bytes_out')]);
    this.sessions.push(time, [open('udp'), open('webtransport')]);
    this.retrans.push(time, TRANSPORTS.map((t) => retransmissionShare(of(t, 'retrans'), of(t, 'segments_out'))));
    this.recovery.push(time, [of('udp', 'fec'), of('udp', 'lost'), of('webtransport', 'fec'), of('webtransport', 'lost')]);
    const cpu = this.previousCpu;
    const cpuShare = cpu ? rate(cpu.seconds, stats.process.cpu_seconds, (at - cpu.at) / 1000) : null;
    this.previousCpu = { at, seconds: stats.process.cpu_seconds };
    this.snapshot = {
      stats,
      bytesInPerSecond: inRate,
      bytesOutPerSecond: outRate,
      retransShare: retransmissionShare(retrans, segments),
      cpuShare,
    };
    for (const l of this.listeners) l();
  }

  /** A `session_opened`, `session_closed` or `session_moved` event. */
  onSession(event: SessionEvent, at: number): void {
    this.recent.unshift({ ...event, at });
    if (this.recent.length > 50) this.recent.length = 50;
    for (const l of this.sessionListeners) l(event);
  }

  /** Calls `listener` after every stats event; returns how to stop. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  subscribeSessions(listener: (e: SessionEvent) => void): () => void {
    this.sessionListeners.add(listener);
    return () => this.sessionListeners.delete(listener);
  }
}
