import { authHeaders } from './api';
import { Backoff } from './backoff';
import { SseParser, type SseEvent } from './sse';

/** What the event stream is doing, for the status badge. */
export type StreamState =
  | { kind: 'connecting' }
  | { kind: 'live' }
  | { kind: 'reconnecting'; inMs: number; attempt: number; reason: string }
  | { kind: 'unauthorized' };

/** A way to open the stream: the browser's `fetch`, or a fake in tests. */
export type Fetcher = (url: string, init: RequestInit) => Promise<Response>;

/** A timer: `setTimeout`, or a fake in tests. */
export type Sleeper = (ms: number, signal: AbortSignal) => Promise<void>;

const sleep: Sleeper = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });

/**
 * The admin API's event stream, read with a streaming `fetch` so that the token
 * goes in a header, never in a URL (EventSource cannot send headers). It
 * reconnects on its own with back-off and says so through `onState`; a 401 stops it.
 */
export class EventStream {
  private readonly abort = new AbortController();
  private readonly backoff: Backoff;

  constructor(
    private readonly url: string,
    private readonly onEvent: (e: SseEvent) => void,
    private readonly onState: (s: StreamState) => void,
    private readonly fetcher: Fetcher = (u, i) => fetch(u, i),
    private readonly wait: Sleeper = sleep,
    backoff = new Backoff(),
  ) {
    this.backoff = backoff;
  }

  /** Runs until {@link stop}, or until the token is refused. */
  async run(): Promise<void> {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      this.onState({ kind: 'connecting' });
      let reason: string;
      try {
        const response = await this.fetcher(this.url, { headers: authHeaders(), signal, cache: 'no-store' });
        if (response.status === 401) {
          this.onState({ kind: 'unauthorized' });
          return;
        }
        if (!response.ok || !response.body) {
          reason = `the gateway answered ${response.status}`;
        } else {
          reason = await this.read(response.body, signal);
        }
      } catch (e) {
        if (signal.aborted) return;
        reason = `the gateway did not answer (${(e as Error).message})`;
      }
      if (signal.aborted) return;
      const inMs = this.backoff.next();
      this.onState({ kind: 'reconnecting', inMs, attempt: this.backoff.attempts, reason });
      await this.wait(inMs, signal);
    }
  }

  /** Reads events until the stream ends; returns why it ended. */
  private async read(body: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<string> {
    const parser = new SseParser();
    const decoder = new TextDecoder();
    const reader = body.getReader();
    let live = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return 'the gateway ended the event stream';
        for (const event of parser.push(decoder.decode(value, { stream: true }))) {
          if (!live) {
            // Only a stream that delivers counts as a success for the back-off.
            live = true;
            this.backoff.reset();
            this.onState({ kind: 'live' });
          }
          this.onEvent(event);
        }
      }
    } catch (e) {
      if (signal.aborted) return 'stopped';
      return `the event stream broke (${(e as Error).message})`;
    } finally {
      reader.releaseLock();
    }
  }

  stop(): void {
    this.abort.abort();
  }
}
