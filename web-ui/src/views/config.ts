import { ApiError, call, get } from '../api';
import { h, setText } from '../dom';
import type { ListenerConfig, RunningConfig, Tunables } from '../types';
import type { Context, View } from '../view';

const MODES = ['normal', 'fast', 'fast2', 'fast3', 'manual'];

/** The run-time tunables, with what each means. */
const TUNABLES: { field: keyof Tunables; label: string; help: string }[] = [
  { field: 'mode', label: 'Mode', help: 'KCP preset; manual uses the four values below' },
  { field: 'nodelay', label: 'nodelay', help: '0 or 1 (manual mode)' },
  { field: 'interval', label: 'interval', help: 'ms between KCP flushes, 10–5000 (manual mode)' },
  { field: 'resend', label: 'resend', help: 'fast retransmit after this many skips, 0 = off (manual mode)' },
  { field: 'nc', label: 'nc', help: '1 turns congestion control off (manual mode)' },
  { field: 'sndwnd', label: 'sndwnd', help: 'send window, segments, 1–65535' },
  { field: 'rcvwnd', label: 'rcvwnd', help: 'receive window, segments, 1–65535' },
  { field: 'ratelimit', label: 'ratelimit', help: 'bytes per second per session, 0 = unlimited' },
  { field: 'max_sessions', label: 'max_sessions', help: 'sessions open at most, 0 = no limit' },
];

/** A field's text as JSON: numbers as numbers, anything else as typed, for the API to judge. */
function valueOf(text: string): unknown {
  const t = text.trim();
  return t !== '' && Number.isFinite(Number(t)) ? Number(t) : t;
}

function shown(v: unknown): string {
  return typeof v === 'boolean' ? (v ? '1' : '0') : String(v);
}

/** The running configuration, and a form for what changes at run time. */
export class ConfigView implements View {
  private inputs = new Map<string, HTMLInputElement | HTMLSelectElement>();
  private errors = new Map<string, HTMLElement>();
  private current: Tunables | null = null;
  private config: RunningConfig | null = null;
  private status!: HTMLElement;
  private fixed!: HTMLElement;
  private chooser!: HTMLElement;
  private listener!: HTMLSelectElement;

  constructor(private readonly cx: Context) {}

  mount(root: HTMLElement): void {
    this.status = h('p', { class: 'muted', role: 'status', id: 'config-status' });
    const fields = TUNABLES.map(({ field, label, help }) => {
      const id = `tunable-${field}`;
      const input =
        field === 'mode'
          ? h('select', { id, name: field, 'aria-describedby': `${id}-help ${id}-error` }, ...MODES.map((m) => h('option', { value: m }, m)))
          : h('input', { id, name: field, type: 'text', inputmode: 'numeric', autocomplete: 'off', 'aria-describedby': `${id}-help ${id}-error` });
      const error = h('p', { class: 'field-error', id: `${id}-error` });
      this.inputs.set(field, input);
      this.errors.set(field, error);
      return h('div', { class: 'field', 'data-field': field }, h('label', { for: id }, label), input, h('p', { class: 'help', id: `${id}-help` }, help), error);
    });
    this.listener = h('select', { id: 'tunable-listener', name: 'listener' }) as HTMLSelectElement;
    this.listener.addEventListener('change', () => this.config && this.fill(this.config));
    this.chooser = h('div', { class: 'field' }, h('label', { for: 'tunable-listener' }, 'Listener'), this.listener);
    const form = h('form', { class: 'tunables', novalidate: true }, this.chooser, ...fields, h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply to new sessions')));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.save();
    });
    this.fixed = h('div', { class: 'facts-grid' });
    root.append(
      h('h1', {}, 'Configuration'),
      h('section', { class: 'panel' }, h('h2', {}, 'Run-time tunables'), h('p', { class: 'muted' }, 'A change applies to sessions opened afterwards; open sessions keep what they started with.'), form, this.status),
      h('section', { class: 'panel' }, h('h2', {}, 'Fixed at start'), h('p', { class: 'muted' }, 'These must match the peers, so they change only with a restart. The key is never shown.'), this.fixed),
    );
    void this.load();
  }

  private async load(): Promise<void> {
    try {
      this.fill(await get<RunningConfig>('/api/v1/config'));
    } catch (e) {
      setText(this.status, (e as Error).message);
    }
  }

  /** The listener the form changes: the one chosen, else the first. */
  private chosen(config: RunningConfig): ListenerConfig {
    return config.listeners.find((l) => l.name === this.listener.value) ?? config.listeners[0];
  }

  private fill(config: RunningConfig): void {
    this.config = config;
    const names = config.listeners.map((l) => l.name);
    if ([...this.listener.options].map((o) => o.value).join('\n') !== names.join('\n')) {
      this.listener.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
    }
    // Shown only when there is a choice (.field's grid would override `hidden`).
    this.chooser.style.display = names.length < 2 ? 'none' : '';
    const tunables = this.chosen(config).tunables;
    this.current = tunables;
    for (const [field, input] of this.inputs) input.value = shown(tunables[field as keyof Tunables]);
    const facts = (title: string, entries: [string, unknown][]) =>
      h('div', {}, h('h3', {}, title), h('dl', { class: 'facts' }, ...entries.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v === null ? '—' : String(v))])));
    this.fixed.replaceChildren(
      facts(`Process (${config.role})`, Object.entries(config.process)),
      ...config.listeners.map((l) => facts(`Listener ${l.name}`, Object.entries(l).filter(([k]) => k !== 'tunables' && k !== 'name'))),
    );
  }

  private async save(): Promise<void> {
    for (const [field, error] of this.errors) {
      setText(error, '');
      this.inputs.get(field)!.removeAttribute('aria-invalid');
    }
    const change: Record<string, unknown> = {};
    for (const [field, input] of this.inputs) {
      const before = this.current ? shown(this.current[field as keyof Tunables]) : '';
      if (input.value.trim() !== before) change[field] = field === 'mode' ? input.value : valueOf(input.value);
    }
    if (Object.keys(change).length === 0) {
      setText(this.status, 'Nothing changed.');
      return;
    }
    try {
      const name = this.config ? this.chosen(this.config).name : '';
      const query = this.config && this.config.listeners.length > 1 ? `?listener=${encodeURIComponent(name)}` : '';
      const config = await call<RunningConfig>('PATCH', `/api/v1/config${query}`, change);
      this.fill(config);
      setText(this.status, `Saved ${Object.keys(change).join(', ')}: sessions opened from now on use them.`);
      this.cx.announce('The tunables were saved.');
    } catch (e) {
      if (e instanceof ApiError && e.fields.length > 0) {
        for (const f of e.fields) {
          const error = this.errors.get(f.field);
          if (error) {
            setText(error, f.message);
            this.inputs.get(f.field)!.setAttribute('aria-invalid', 'true');
          }
        }
        const first = e.fields.map((f) => this.inputs.get(f.field)).find(Boolean);
        first?.focus();
      }
      setText(this.status, e instanceof ApiError ? e.message : String(e));
    }
  }

  unmount(): void {}
}
