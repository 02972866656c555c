import { beforeEach, describe, expect, it, vi } from 'vitest';
import { Backoff } from '../../src/backoff';
import { EventStream, type StreamState } from '../../src/events';

function streamOf(chunks: string[], thenFail = false): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  const left = [...chunks];
  return new ReadableStream({
    pull(controller) {
      const next = left.shift();
      if (next !== undefined) controller.enqueue(encoder.encode(next));
      else if (thenFail) controller.error(new Error('connection reset'));
      else controller.close();
    },
  });
}

beforeEach(() => {
  const store = new Map<string, string>([['kcpgate.adminToken', 't0ken']]);
  vi.stubGlobal('sessionStorage', {
    getItem: (k: string) => store.get(k) ?? null,
    setItem: (k: string, v: string) => store.set(k, v),
    removeItem: (k: string) => store.delete(k),
  });
});

describe('Backoff', () => {
  it('doubles from the initial delay up to the cap, and resets on success', () => {
    const b = new Backoff(500, 4000, 0);
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([500, 1000, 2000, 4000, 4000]);
    expect(b.attempts).toBe(5);
    b.reset();
    expect(b.next()).toBe(500);
  });

  it('spreads each delay by the jitter', () => {
    expect(new Backoff(1000, 10_000, 0.2, () => 0).next()).toBe(800);
    expect(new Backoff(1000, 10_000, 0.2, () => 1).next()).toBe(1200);
  });
});

describe('EventStream', () => {
  it('sends the token in a header, never in the URL, and delivers events', async () => {
    const seen: string[] = [];
    const calls: { url: string; init: RequestInit }[] = [];
    let stream: EventStream | undefined;
    stream = new EventStream(
      '/api/v1/events?interval_ms=1000',
      (e) => {
        seen.push(`${e.event}:${e.data}`);
        if (seen.length === 2) stream?.stop();
      },
      () => {},
      async (url, init) => {
        calls.push({ url, init });
        return new Response(streamOf(['event: stats\nda', 'ta: 1\n\nevent: session_opened\ndata: 2\n\n']));
      },
      async () => {},
    );
    await stream.run();
    expect(seen).toEqual(['stats:1', 'session_opened:2']);
    expect(calls[0].url).not.toContain('t0ken');
    expect((calls[0].init.headers as Record<string, string>).Authorization).toBe('Bearer t0ken');
  });

  it('reconnects with growing delays while the gateway is away, and resets once it delivers', async () => {
    const states: StreamState[] = [];
    const waits: number[] = [];
    let attempt = 0;
    const stream = new EventStream(
      '/events',
      () => {},
      (s) => states.push(s),
      async () => {
        attempt++;
        if (attempt <= 3) throw new TypeError('Failed to fetch');
        if (attempt === 4) return new Response(streamOf(['event: stats\ndata: {}\n\n'], true));
        if (attempt === 5) return new Response('busy', { status: 503 });
        stream.stop();
        return new Response(streamOf([]));
      },
      async (ms) => {
        waits.push(ms);
      },
      new Backoff(100, 1000, 0),
    );
    await stream.run();
    expect(waits).toEqual([100, 200, 400, 100, 200]);
    const kinds = states.map((s) => s.kind);
    expect(kinds).toContain('live');
    const reasons = states.filter((s) => s.kind === 'reconnecting').map((s) => (s as { reason: string }).reason);
    expect(reasons[0]).toMatch(/did not answer/);
    expect(reasons[3]).toMatch(/broke/);
    expect(reasons[4]).toMatch(/503/);
  });

  it('stops for good when the token is refused', async () => {
    const states: StreamState[] = [];
    let calls = 0;
    const stream = new EventStream(
      '/events',
      () => {},
      (s) => states.push(s),
      async () => {
        calls++;
        return new Response('', { status: 401 });
      },
      async () => {},
    );
    await stream.run();
    expect(calls).toBe(1);
    expect(states.at(-1)).toEqual({ kind: 'unauthorized' });
  });
});
