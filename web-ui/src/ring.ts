/**
 * A fixed-size ring of samples behind a chart: pushing never allocates, and the
 * oldest sample falls out once it is full. `ordered` writes the samples, oldest
 * first, into arrays the chart library reads.
 */
export class Ring {
  private readonly values: Float64Array;
  private start = 0;
  private size = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`a ring holds at least one sample (got ${capacity})`);
    this.values = new Float64Array(capacity);
  }

  get length(): number {
    return this.size;
  }

  push(value: number): void {
    const at = (this.start + this.size) % this.capacity;
    this.values[at] = value;
    if (this.size < this.capacity) this.size++;
    else this.start = (this.start + 1) % this.capacity;
  }

  /** The i-th sample, oldest first; undefined outside the ring. */
  at(i: number): number | undefined {
    if (i < 0 || i >= this.size) return undefined;
    return this.values[(this.start + i) % this.capacity];
  }

  /** The newest sample. */
  last(): number | undefined {
    return this.at(this.size - 1);
  }

  clear(): void {
    this.start = 0;
    this.size = 0;
  }

  /** The samples, oldest first, as a new array. */
  toArray(): number[] {
    const out = new Array<number>(this.size);
    for (let i = 0; i < this.size; i++) out[i] = this.values[(this.start + i) % this.capacity];
    return out;
  }
}

/**
 * Several series over one time axis: a time column and one ring per series, all
 * the same length, in the shape uPlot draws (`[times, ...series]`).
 */
export class Series {
  readonly times: Ring;
  readonly columns: Ring[];

  constructor(capacity: number, columns: number) {
    this.times = new Ring(capacity);
    this.columns = Array.from({ length: columns }, () => new Ring(capacity));
  }

  /** One sample of every series at `time` (seconds); a missing value is drawn as a gap. */
  push(time: number, values: (number | null)[]): void {
    if (values.length !== this.columns.length) throw new RangeError(`${this.columns.length} values expected (got ${values.length})`);
    this.times.push(time);
    values.forEach((v, i) => this.columns[i].push(v ?? Number.NaN));
  }

  get length(): number {
    return this.times.length;
  }

  clear(): void {
    this.times.clear();
    for (const c of this.columns) c.clear();
  }

  /** The data as uPlot takes it; gaps are null. */
  data(): (number | null)[][] {
    return [this.times.toArray(), ...this.columns.map((c) => c.toArray().map((v) => (Number.isNaN(v) ? null : v)))];
  }
}
