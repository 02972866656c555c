import { ApiError, get } from '../api';
import { h, setText } from '../dom';
import { byteRate, bytes, count, cwnd, duration, millis } from '../format';
import { RateTracker } from '../rates';
import type { SessionInfo, SessionPage } from '../types';
import type { Context, View } from '../view';
import { confirmKick } from './kick';

/** Rows per page: the table never holds more, whatever the session count. */
const PAGE = 50;
/** How often the page's rows are fetched again. */
const REFRESH_MS = 2000;

interface Column {
  title: string;
  /** The API's sort key, when the column sorts. */
  sort?: string;
  numeric?: boolean;
  /** What the column means, shown on hover and read by screen readers. */
  hint?: string;
  cell(s: SessionInfo, rates: Record<string, number | null> | undefined): string;
}

const COLUMNS: Column[] = [
  { title: 'ID', sort: 'id', numeric: true, cell: (s) => String(s.id) },
  { title: 'Remote', cell: (s) => s.remote },
  { title: 'Transport', cell: (s) => (s.transport === 'udp' ? 'UDP' : 'WebTransport') },
  { title: 'Age', sort: 'age_ms', numeric: true, cell: (s) => duration(s.age_ms) },
  { title: 'SRTT', sort: 'srtt_ms', numeric: true, cell: (s) => millis(s.kcp.srtt_ms) },
  { title: 'RTO', sort: 'rto_ms', numeric: true, cell: (s) => millis(s.kcp.rto_ms) },
  { title: 'cwnd', hint: 'Congestion window, segments; off when congestion control is disabled (nc=1, as in every -mode preset)', sort: 'cwnd', numeric: true, cell: (s) => cwnd(s.kcp.cwnd) },
  { title: 'Bytes in', sort: 'bytes_in', numeric: true, cell: (s) => bytes(s.traffic.bytes_in) },
  { title: 'Bytes out', sort: 'bytes_out', numeric: true, cell: (s) => bytes(s.traffic.bytes_out) },
  { title: 'In/s', numeric: true, cell: (_s, r) => (r?.bytes_in == null ? '–' : byteRate(r.bytes_in)) },
  { title: 'Out/s', numeric: true, cell: (_s, r) => (r?.bytes_out == null ? '–' : byteRate(r.bytes_out)) },
  { title: 'Retrans', sort: 'retrans', numeric: true, cell: (s) => count(s.traffic.retrans) },
  { title: 'Lost', sort: 'lost', numeric: true, cell: (s) => count(s.traffic.lost) },
  { title: 'FEC rec.', sort: 'fec_recovered', numeric: true, cell: (s) => count(s.traffic.fec_recovered) },
  { title: 'Streams', sort: 'streams', numeric: true, cell: (s) => count(s.streams.length) },
];

interface Row {
  tr: HTMLTableRowElement;
  /** Where each column's text goes: the cell, or the ID cell's link. */
  cells: HTMLElement[];
  remote: string;
}

/**
 * The live session list: sorted, filtered and paged by the gateway, so the page
 * holds one page of rows whatever the count; rows are kept per session and only
 * changed cells are written.
 */
export class SessionsView implements View {
  private sort = 'id';
  private order: 'asc' | 'desc' = 'asc';
  private filter = '';
  private offset = 0;
  private rows = new Map<number, Row>();
  private rates = new RateTracker();
  private timer = 0;
  private inflight: AbortController | null = null;
  private stopEvents: (() => void) | null = null;
  private table!: HTMLTableElement;
  private tbody!: HTMLTableSectionElement;
  private status!: HTMLElement;
  private pager!: HTMLElement;
  private headers: HTMLButtonElement[] = [];
  private filterTimer = 0;
  private closed = false;

  constructor(private readonly cx: Context) {
    const params = new URLSearchParams(location.hash.split('?')[1] ?? '');
    this.sort = params.get('sort') ?? 'id';
    this.order = params.get('order') === 'desc' ? 'desc' : 'asc';
    this.filter = params.get('remote') ?? '';
  }

  mount(root: HTMLElement): void {
    const filter = h('input', {
      type: 'search',
      id: 'session-filter',
      value: this.filter,
      placeholder: 'e.g. 203.0.113.7',
      autocomplete: 'off',
      'aria-describedby': 'session-status',
    });
    filter.addEventListener('input', () => {
      clearTimeout(this.filterTimer);
      // Typing is coalesced: one request per pause, not per key.
      this.filterTimer = window.setTimeout(() => {
        this.filter = filter.value.trim();
        this.offset = 0;
        void this.load();
      }, 60);
    });
    this.headers = [];
    const head = h(
      'tr',
      {},
      ...COLUMNS.map((c) => {
        if (!c.sort) return h('th', { scope: 'col', class: c.numeric ? 'num' : undefined, title: c.hint }, c.title);
        const button = h('button', { type: 'button', class: 'sort', 'data-sort': c.sort, title: c.hint, onclick: () => this.sortBy(c.sort!) }, c.title);
        this.headers.push(button);
        return h('th', { scope: 'col', class: c.numeric ? 'num' : undefined }, button);
      }),
      h('th', { scope: 'col', class: 'actions' }, h('span', { class: 'visually-hidden' }, 'Actions')),
    );
    this.tbody = h('tbody');
    this.table = h('table', { class: 'sessions', 'aria-describedby': 'session-status' }, h('thead', {}, head), this.tbody);
    this.status = h('p', { id: 'session-status', class: 'muted', 'aria-live': 'polite' }, 'Loading…');
    this.pager = h('div', { class: 'pager' });
    root.append(
      h('h1', {}, 'Sessions'),
      h('div', { class: 'toolbar' }, h('label', { for: 'session-filter' }, 'Remote address contains'), filter),
      this.status,
      h('div', { class: 'table-scroll', tabindex: 0, 'aria-label': 'Session table' }, this.table),
      this.pager,
    );
    this.stopEvents = this.cx.model.subscribeSessions(() => this.soon());
    void this.load();
  }

  private sortBy(key: string): void {
    if (this.sort === key) this.order = this.order === 'asc' ? 'desc' : 'asc';
    else {
      this.sort = key;
      this.order = key === 'id' ? 'asc' : 'desc';
    }
    this.offset = 0;
    void this.load();
  }

  /** A session opened or closed: refresh soon, once for a burst of events. */
  private soon(): void {
    clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.load(), 300);
  }

  private query(): string {
    const q = new URLSearchParams({ sort: this.sort, order: this.order, limit: String(PAGE), offset: String(this.offset) });
    if (this.filter) q.set('remote', this.filter);
    return q.toString();
  }

  async load(): Promise<void> {
    clearTimeout(this.timer);
    this.inflight?.abort();
    const abort = new AbortController();
    this.inflight = abort;
    const query = this.query();
    this.table.setAttribute('aria-busy', 'true');
    try {
      const page = await get<SessionPage>(`/api/v1/sessions?${query}`, abort.signal);
      if (abort.signal.aborted) return;
      this.render(page, query);
    } catch (e) {
      if (abort.signal.aborted) return;
      setText(this.status, e instanceof ApiError ? e.message : String(e));
    } finally {
      if (this.inflight === abort) {
        this.inflight = null;
        this.table.setAttribute('aria-busy', 'false');
        if (!this.closed) this.timer = window.setTimeout(() => void this.load(), REFRESH_MS);
      }
    }
  }

  private render(page: SessionPage, query: string): void {
    const now = performance.now();
    const live = new Set<number>();
    const ordered: HTMLTableRowElement[] = [];
    for (const s of page.sessions) {
      live.add(s.id);
      const r = this.rates.observe(s.id, { at: now, counters: { bytes_in: s.traffic.bytes_in, bytes_out: s.traffic.bytes_out } }) ?? undefined;
      let row = this.rows.get(s.id);
      if (!row || row.remote !== s.remote) row = this.row(s);
      COLUMNS.forEach((c, i) => setText(row!.cells[i], c.cell(s, r)));
      row.tr.classList.toggle('dead', s.kcp.dead);
      ordered.push(row.tr);
    }
    for (const id of this.rows.keys()) if (!live.has(id)) this.rows.delete(id);
    this.rates.retain(live);
    // Rows are moved, not rebuilt: at most one page of them.
    const current = Array.from(this.tbody.children);
    if (current.length !== ordered.length || current.some((el, i) => el !== ordered[i])) this.tbody.replaceChildren(...ordered);
    for (const b of this.headers) {
      const th = b.parentElement!;
      if (b.dataset.sort === this.sort) th.setAttribute('aria-sort', this.order === 'asc' ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    const first = page.total === 0 ? 0 : page.offset + 1;
    const last = Math.min(page.total, page.offset + page.sessions.length);
    const filtered = this.filter ? ` whose remote address contains “${this.filter}”` : '';
    setText(this.status, page.total === 0 ? `No sessions${filtered}.` : `Sessions ${count(first)}–${count(last)} of ${count(page.total)}${filtered}.`);
    this.renderPager(page);
    // For tests and for the curious: what the table shows now, and when it was drawn.
    this.table.dataset.query = query;
    this.table.dataset.total = String(page.total);
    history.replaceState(null, '', `#/sessions?${new URLSearchParams({ sort: this.sort, order: this.order, ...(this.filter ? { remote: this.filter } : {}) })}`);
  }

  private renderPager(page: SessionPage): void {
    const prev = h('button', { type: 'button', class: 'secondary', disabled: page.offset === 0, onclick: () => this.turn(-PAGE) }, '← Previous');
    const next = h('button', { type: 'button', class: 'secondary', disabled: page.offset + PAGE >= page.total, onclick: () => this.turn(PAGE) }, 'Next →');
    const pages = Math.max(1, Math.ceil(page.total / PAGE));
    this.pager.replaceChildren(prev, h('span', {}, `Page ${Math.floor(page.offset / PAGE) + 1} of ${pages}`), next);
  }

  private turn(by: number): void {
    this.offset = Math.max(0, this.offset + by);
    void this.load();
  }

  private row(s: SessionInfo): Row {
    const cells = COLUMNS.map((c) => h('td', { class: c.numeric ? 'num' : undefined }));
    const link = h('a', { href: `#/sessions/${s.id}`, 'aria-label': `Session ${s.id}` });
    cells[0].append(link);
    const kick = h('button', {
      type: 'button',
      class: 'danger small',
      'aria-label': `Kick session ${s.id}`,
      onclick: async () => {
        if (await confirmKick(s.id, s.remote)) {
          this.cx.announce(`Session ${s.id} was kicked.`);
          void this.load();
        }
      },
    }, 'Kick');
    const tr = h('tr', { 'data-session': s.id }, ...cells, h('td', { class: 'actions' }, kick));
    const row = { tr, cells: [link, ...cells.slice(1)], remote: s.remote };
    this.rows.set(s.id, row);
    return row;
  }

  unmount(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.filterTimer);
    this.inflight?.abort();
    this.stopEvents?.();
  }
}
