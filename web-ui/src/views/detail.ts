import { ApiError, get } from '../api';
import { Chart } from '../chart';
import { h, setText } from '../dom';
import { byteRate, bytes, count, duration, millis } from '../format';
import { RateTracker } from '../rates';
import { Series } from '../ring';
import type { SessionInfo } from '../types';
import type { Context, View } from '../view';
import { confirmKick } from './kick';

const POLL_MS = 1000;
/** Ten minutes of samples. */
const KEEP = 600;

/** One session: its KCP state, charts of RTT, RTO, cwnd and throughput, and its streams. */
export class DetailView implements View {
  private readonly rtt = new Series(KEEP, 3);
  private readonly window = new Series(KEEP, 3);
  private readonly throughput = new Series(KEEP, 2);
  private readonly rates = new RateTracker();
  private charts: Chart[] = [];
  private timer = 0;
  private closed = false;
  private fields = new Map<string, HTMLElement>();
  private title!: HTMLElement;
  private status!: HTMLElement;
  private streams!: HTMLTableSectionElement;

  constructor(
    private readonly cx: Context,
    private readonly id: number,
  ) {}

  mount(root: HTMLElement): void {
    this.charts = [
      new Chart('Round trip (ms)', this.rtt, [
        { label: 'SRTT', color: '--c1' },
        { label: 'RTT variance', color: '--c3' },
        { label: 'RTO', color: '--c2', dash: true },
      ], millis, KEEP),
      new Chart('Window (segments)', this.window, [
        { label: 'cwnd', color: '--c1' },
        { label: 'in flight', color: '--c2' },
        { label: 'peer window', color: '--c3', dash: true },
      ], count, KEEP),
      new Chart('Throughput (bytes/s)', this.throughput, [
        { label: 'in', color: '--c1' },
        { label: 'out', color: '--c2' },
      ], byteRate, KEEP),
    ];
    const groups: [string, [string, string][]][] = [
      ['Session', [['remote', 'Remote'], ['local', 'Local'], ['transport', 'Transport'], ['conv', 'Conversation'], ['age', 'Age'], ['idle', 'Idle'], ['crypt', 'Crypt'], ['fec', 'FEC'], ['mode', 'Mode (the gateway\'s; the client sets its own)'], ['framing', 'Framing']]],
      ['KCP', [['srtt', 'SRTT'], ['rttvar', 'RTT variance'], ['rto', 'RTO'], ['cwnd', 'cwnd'], ['ssthresh', 'ssthresh'], ['wnd', 'Windows (send / receive / peer)'], ['flight', 'In flight'], ['queues', 'Queued (send / receive / out of order)'], ['mtu', 'MTU'], ['dead', 'Link']]],
      ['Traffic', [['bytes', 'Bytes (in / out)'], ['packets', 'Datagrams (in / out)'], ['retrans', 'Retransmitted (fast / early / lost)'], ['fecstats', 'FEC (recovered / errors)']]],
    ];
    const grids = groups.map(([name, items]) =>
      h('section', { class: 'panel' }, h('h2', {}, name), h('dl', { class: 'facts' }, ...items.flatMap(([key, label]) => {
        const dd = h('dd', { 'data-field': key }, '–');
        this.fields.set(key, dd);
        return [h('dt', {}, label), dd];
      }))),
    );
    this.title = h('h1', {}, `Session ${this.id}`);
    this.status = h('p', { class: 'muted', 'aria-live': 'polite' }, 'Loading…');
    this.streams = h('tbody');
    root.append(
      h('p', { class: 'crumbs' }, h('a', { href: '#/sessions' }, '← Sessions')),
      this.title,
      h('div', { class: 'toolbar' },
        h('a', { class: 'button secondary', href: `#/inspector/${this.id}` }, 'Inspect packets'),
        h('button', { type: 'button', class: 'danger', onclick: () => this.kick() }, 'Kick…'),
      ),
      this.status,
      h('div', { class: 'facts-grid' }, ...grids),
      h('section', { class: 'charts', 'aria-label': 'Since this page opened' }, ...this.charts.map((c) => c.element)),
      h('section', { class: 'panel' }, h('h2', {}, 'Streams and their backends'),
        h('div', { class: 'table-scroll' }, h('table', { class: 'streams' },
          h('thead', {}, h('tr', {}, ...['Stream', 'Backend', 'To backend', 'From backend', 'Age'].map((t, i) => h('th', { scope: 'col', class: i > 1 ? 'num' : undefined }, t)))),
          this.streams))),
    );
    void this.poll();
  }

  private last: SessionInfo | null = null;

  private async kick(): Promise<void> {
    if (await confirmKick(this.id, this.last?.remote ?? `session ${this.id}`)) {
      this.cx.announce(`Session ${this.id} was kicked.`);
      void this.poll();
    }
  }

  private async poll(): Promise<void> {
    clearTimeout(this.timer);
    try {
      const s = await get<SessionInfo>(`/api/v1/sessions/${this.id}`);
      if (this.closed) return;
      this.last = s;
      this.render(s);
      setText(this.status, s.kcp.dead ? 'The link looks dead: a segment was retransmitted too often.' : 'Live, every second.');
    } catch (e) {
      if (this.closed) return;
      if (e instanceof ApiError && e.status === 404) {
        setText(this.status, `Session ${this.id} has closed; the figures below are its last.`);
        this.status.classList.add('warn');
        return;
      }
      setText(this.status, (e as Error).message);
    }
    if (!this.closed) this.timer = window.setTimeout(() => void this.poll(), POLL_MS);
  }

  private render(s: SessionInfo): void {
    const now = performance.now();
    const t = Date.now() / 1000;
    const k = s.kcp;
    const tr = s.traffic;
    this.rtt.push(t, [k.srtt_ms, k.rttvar_ms, k.rto_ms]);
    this.window.push(t, [k.cwnd, k.in_flight, k.remote_wnd]);
    const r = this.rates.observe(s.id, { at: now, counters: { bytes_in: tr.bytes_in, bytes_out: tr.bytes_out } });
    this.throughput.push(t, [r?.bytes_in ?? null, r?.bytes_out ?? null]);
    for (const c of this.charts) c.refresh();
    const set = (key: string, v: string) => setText(this.fields.get(key)!, v);
    setText(this.title, `Session ${s.id}`);
    set('remote', s.remote);
    set('local', s.local);
    set('transport', s.transport === 'udp' ? 'UDP' : 'WebTransport');
    set('conv', `${s.conv} (0x${s.conv.toString(16).padStart(8, '0')})`);
    set('age', duration(s.age_ms));
    set('idle', duration(s.idle_ms));
    set('crypt', s.crypt);
    set('fec', s.fec ? `${s.fec.data} data + ${s.fec.parity} parity` : 'off');
    set('mode', s.mode);
    set('framing', s.framing === 'streams' ? `streams (smux ${s.smux_version ? `v${s.smux_version}` : 'version not yet seen'})` : 'messages (plain KCP)');
    set('srtt', millis(k.srtt_ms));
    set('rttvar', millis(k.rttvar_ms));
    set('rto', millis(k.rto_ms));
    set('cwnd', k.cwnd === 0 ? 'off (congestion control disabled: nc=1)' : count(k.cwnd));
    set('ssthresh', count(k.ssthresh));
    set('wnd', `${count(k.snd_wnd)} / ${count(k.rcv_wnd)} / ${count(k.remote_wnd)}`);
    set('flight', count(k.in_flight));
    set('queues', `${count(k.snd_queue)} / ${count(k.rcv_queue)} / ${count(k.rcv_buf)}`);
    set('mtu', `${k.mtu} bytes`);
    set('dead', k.dead ? 'dead' : 'alive');
    set('bytes', `${bytes(tr.bytes_in)} / ${bytes(tr.bytes_out)}`);
    set('packets', `${count(tr.packets_in)} / ${count(tr.packets_out)}`);
    set('retrans', `${count(tr.retrans)} (${count(tr.fast_retrans)} / ${count(tr.early_retrans)} / ${count(tr.lost)})`);
    set('fecstats', `${count(tr.fec_recovered)} / ${count(tr.fec_errors)}`);
    const rows = s.streams.map((st) =>
      h('tr', { 'data-stream': st.id },
        h('td', {}, String(st.id)),
        h('td', {}, st.tcp_peer ?? 'connecting…'),
        h('td', { class: 'num' }, bytes(st.bytes_to_tcp)),
        h('td', { class: 'num' }, bytes(st.bytes_from_tcp)),
        h('td', { class: 'num' }, duration(st.age_ms))));
    this.streams.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No stream open.'))]));
  }

  unmount(): void {
    this.closed = true;
    clearTimeout(this.timer);
    for (const c of this.charts) c.destroy();
  }
}
