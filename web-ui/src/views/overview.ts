import { Chart } from '../chart';
import { h, setText } from '../dom';
import { byteRate, clock, count, duration, bytes, percent, perSecond } from '../format';
import type { Context, View } from '../view';

/** Live charts of the whole gateway, by transport, over the last five minutes. */
export class OverviewView implements View {
  private charts: Chart[] = [];
  private stop: (() => void)[] = [];
  private cards = new Map<string, HTMLElement>();
  private log!: HTMLOListElement;

  constructor(private readonly cx: Context) {}

  mount(root: HTMLElement): void {
    const m = this.cx.model;
    const card = (key: string, label: string) => {
      const value = h('span', { class: 'card-value', 'data-card': key }, '–');
      const detail = h('span', { class: 'card-detail', 'data-card-detail': key });
      this.cards.set(key, value);
      this.cards.set(`${key}-detail`, detail);
      return h('div', { class: 'card' }, h('span', { class: 'card-label' }, label), value, detail);
    };
    this.charts = [
      new Chart('Throughput (bytes/s)', m.throughput, [
        { label: 'UDP in', color: '--c1' },
        { label: 'UDP out', color: '--c2' },
        { label: 'WebTransport in', color: '--c3' },
        { label: 'WebTransport out', color: '--c4' },
      ], byteRate),
      new Chart('Sessions open', m.sessions, [
        { label: 'UDP', color: '--c1' },
        { label: 'WebTransport', color: '--c3' },
      ], count),
      new Chart('Retransmitted share of segments sent', m.retrans, [
        { label: 'UDP', color: '--c1' },
        { label: 'WebTransport', color: '--c3' },
      ], percent),
      new Chart('FEC recovered and lost segments', m.recovery, [
        { label: 'UDP FEC recovered', color: '--c1' },
        { label: 'UDP lost', color: '--c2', dash: true },
        { label: 'WebTransport FEC recovered', color: '--c3' },
        { label: 'WebTransport lost', color: '--c4', dash: true },
      ], perSecond),
    ];
    this.log = h('ol', { class: 'event-log', 'aria-label': 'Recent session events' });
    root.append(
      h('h1', {}, 'Overview'),
      h(
        'section',
        { class: 'cards', 'aria-label': 'Now' },
        card('sessions', 'Sessions open'),
        card('streams', 'Streams open'),
        card('in', 'In'),
        card('out', 'Out'),
        card('retrans', 'Retransmitted'),
        card('cpu', 'CPU'),
        card('rss', 'Memory'),
        card('uptime', 'Up for'),
      ),
      h('section', { class: 'charts', 'aria-label': 'The last five minutes' }, ...this.charts.map((c) => c.element)),
      h('section', { class: 'panel' }, h('h2', {}, 'Recent session events'), this.log),
    );
    this.stop.push(m.subscribe(() => this.refresh()));
    this.stop.push(m.subscribeSessions(() => this.renderLog()));
    this.refresh();
    this.renderLog();
  }

  private refresh(): void {
    for (const c of this.charts) c.refresh();
    const s = this.cx.model.snapshot;
    if (!s) return;
    const set = (k: string, v: string) => {
      const el = this.cards.get(k);
      if (el) setText(el, v);
    };
    const by = s.stats.transports.map((t) => `${count(t.sessions_open)} ${t.transport === 'udp' ? 'UDP' : 'WebTransport'}`).join(' · ');
    set('sessions', count(s.stats.sessions.open));
    set('sessions-detail', by);
    set('streams-detail', `${count(s.stats.streams.opened)} opened, ${count(s.stats.streams.dial_failures)} dials failed`);
    set('streams', count(s.stats.streams.open));
    set('in', s.bytesInPerSecond === null ? '–' : byteRate(s.bytesInPerSecond));
    set('out', s.bytesOutPerSecond === null ? '–' : byteRate(s.bytesOutPerSecond));
    set('retrans', s.retransShare === null ? '–' : percent(s.retransShare));
    set('cpu', s.cpuShare === null ? '–' : percent(s.cpuShare));
    set('rss', bytes(s.stats.process.rss_bytes));
    set('uptime', duration(s.stats.process.uptime_seconds * 1000));
  }

  private renderLog(): void {
    const items = this.cx.model.recent.slice(0, 12).map((e) => {
      const when = clock(e.at);
      const link = h('a', { href: `#/sessions/${e.id}` }, `session ${e.id}`);
      const what =
        e.type === 'session_opened'
          ? ` opened from ${e.remote} (${e.transport})`
          : e.type === 'session_moved'
            ? ` moved from ${e.from} to ${e.to}`
            : ` closed: ${e.reason}`;
      return h('li', { class: e.type }, h('time', {}, when), ' ', link, what);
    });
    this.log.replaceChildren(...(items.length ? items : [h('li', { class: 'muted' }, 'No session opened or closed since this page loaded.')]));
  }

  unmount(): void {
    for (const s of this.stop) s();
    for (const c of this.charts) c.destroy();
    this.charts = [];
    this.stop = [];
  }
}
