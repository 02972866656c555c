/**
 * When to try again after a connection failed: exponential back-off from `initial`
 * to `max` milliseconds, with up to `jitter` of each delay randomised so that many
 * dashboards do not reconnect in step. A success resets it.
 */
export class Backoff {
  private failures = 0;

  constructor(
    private readonly initial = 500,
    private readonly max = 15_000,
    private readonly jitter = 0.2,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt, counting one more failure. */
  next(): number {
    const base = Math.min(this.max, this.initial * 2 ** this.failures);
    this.failures++;
    const spread = base * this.jitter;
    return Math.round(base - spread + 2 * spread * this.random());
  }

  /** Failures in a row so far. */
  get attempts(): number {
    return this.failures;
  }

  reset(): void {
    this.failures = 0;
  }
}
