import { ApiError, call } from '../api';
import { h, setText } from '../dom';
import { count, hex } from '../format';
import type { CaptureResult } from '../types';
import type { Context, View } from '../view';
import type { Codec, Decoded, Segment, SmuxFrame } from '../../../wasm/pkg/kcpgate_wasm';

// The browser module's own declarations, as wasm-bindgen writes them with it.
type CodecModule = typeof import('../../../wasm/pkg/kcpgate_wasm');

/** Where the gateway serves the browser module (the demo page uses it too). */
const MODULE_URL = '/module/kcpgate_wasm.js';
let codecModule: Promise<CodecModule> | null = null;

function loadCodec(): Promise<CodecModule> {
  codecModule ??= (async () => {
    const url = MODULE_URL;
    const module = (await import(/* @vite-ignore */ url)) as CodecModule;
    await module.default();
    return module;
  })();
  codecModule.catch(() => {
    codecModule = null;
  });
  return codecModule;
}

/** Every smux frame a segment starts, directly or inside snappy chunks. */
function framesOf(s: Segment): SmuxFrame[] {
  return [...(s.smux ?? []), ...(s.snappy ?? []).flatMap((c) => c.smux)];
}

function segmentSummary(s: Segment): string {
  const cmd = typeof s.cmd === 'number' ? `cmd ${s.cmd}` : s.cmd;
  return s.cmd === 'PUSH' ? `${cmd} sn ${s.sn} len ${s.len}` : `${cmd} sn ${s.sn} una ${s.una}`;
}

function frameSummary(f: SmuxFrame): string {
  return `${f.cmd} sid ${f.sid}${f.cmd === 'PSH' || f.cmd === 'UPD' ? ` len ${f.length}` : ''}`;
}

function base64Bytes(text: string): Uint8Array {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/**
 * The packet inspector: the gateway captures a session's next datagrams as they
 * cross the wire (still encrypted), and this page decodes them with the browser
 * module and the key the operator types. The key stays in this page: it is given
 * to the codec only, never sent, never stored.
 */
export class InspectorView implements View {
  private results!: HTMLElement;
  private status!: HTMLElement;
  private detail!: HTMLElement;
  private busy = false;

  constructor(
    private readonly cx: Context,
    private readonly session: number | null,
  ) {}

  mount(root: HTMLElement): void {
    const id = h('input', { type: 'number', id: 'inspect-session', name: 'session', min: 1, required: true, value: this.session ?? undefined });
    const howMany = h('input', { type: 'number', id: 'inspect-count', name: 'count', min: 1, max: 1000, value: 50, required: true });
    const key = h('input', { type: 'password', id: 'inspect-key', name: 'key', autocomplete: 'off', spellcheck: 'false', required: true });
    this.status = h('p', { id: 'inspect-status', class: 'muted', 'aria-live': 'polite' }, 'Captures the session’s next datagrams both ways, up to 5 s, and decodes them here.');
    this.results = h('div', { class: 'table-scroll', tabindex: 0, 'aria-label': 'Captured datagrams' });
    this.detail = h('section', { class: 'panel', id: 'inspect-detail', hidden: true });
    const form = h(
      'form',
      { class: 'inspect-form', autocomplete: 'off' },
      h('label', { for: 'inspect-session' }, 'Session'), id,
      h('label', { for: 'inspect-count' }, 'Datagrams'), howMany,
      h('label', { for: 'inspect-key' }, 'Key (-key)'), key,
      h('button', { type: 'submit' }, 'Capture and decode'),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.capture(Number(id.value), Number(howMany.value), key.value);
    });
    root.append(
      h('h1', {}, 'Packet inspector'),
      h('p', { class: 'muted' }, 'The key never leaves this page: the gateway sends the datagrams as they are on the wire, and they are decrypted here, in WebAssembly.'),
      form,
      this.status,
      this.results,
      this.detail,
    );
    if (this.session === null) id.focus();
    else key.focus();
  }

  private async capture(id: number, wanted: number, key: string): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    setText(this.status, `Capturing up to ${wanted} datagrams of session ${id}…`);
    this.status.classList.remove('warn');
    try {
      const module = await loadCodec().catch((e: unknown) => {
        throw new Error(`cannot load the browser module, which decodes the packets (${MODULE_URL}): ${e instanceof Error ? e.message : String(e)}`);
      });
      const result = await call<CaptureResult>('POST', `/api/v1/sessions/${id}/capture?count=${wanted}&timeout_ms=5000`);
      const codec = new module.Codec({ crypt: result.session.crypt, key });
      try {
        this.show(result, codec);
      } finally {
        codec.free();
      }
    } catch (e) {
      const text = e instanceof ApiError && e.status === 404 ? `No live session has id ${id}.` : (e as Error).message;
      setText(this.status, text);
      this.status.classList.add('warn');
    } finally {
      this.busy = false;
    }
  }

  private show(result: CaptureResult, codec: Codec): void {
    let decrypted = 0;
    let frames = 0;
    let parity = 0;
    const decoded = result.datagrams.map((d) => {
      const bytes = base64Bytes(d.data);
      const seen = codec.decode(bytes);
      if (seen.verdict === 'ok') decrypted++;
      if (seen.fec?.type === 'parity') parity++;
      frames += seen.segments.reduce((n, s) => n + framesOf(s).length, 0);
      return { ...d, bytes, seen };
    });
    const s = result.session;
    const ins = decoded.filter((d) => d.direction === 'in').length;
    const summary = `${count(decoded.length)} datagrams of session ${s.id} (${ins} in, ${decoded.length - ins} out, ${s.crypt}${s.fec ? `, FEC ${s.fec.data}/${s.fec.parity}` : ''}): ${count(decrypted)} decrypted, ${count(parity)} parity shards, ${count(frames)} smux frames.`;
    const hint = decoded.length > 0 && decrypted === 0 ? ' None decrypted: check the key (and that the session is this one).' : '';
    const partial = result.complete ? '' : ' The session sent fewer within 5 s.';
    setText(this.status, summary + hint + partial);
    this.cx.announce(`Decoded ${decoded.length} datagrams.`);
    this.status.classList.toggle('warn', hint !== '');
    const rows = decoded.map((d, i) => {
      const segs = d.seen.segments;
      const smux = segs.flatMap(framesOf).map(frameSummary);
      const verdict = d.seen.verdict === 'ok' ? 'ok' : d.seen.verdict;
      const open = () => this.open(i, d.direction, d.bytes, d.seen);
      return h(
        'tr',
        { class: `dir-${d.direction} verdict-${verdict}`, 'data-index': i },
        h('td', { class: 'num' }, h('button', { type: 'button', class: 'link', onclick: open, 'aria-label': `Datagram ${i + 1} in detail` }, String(i + 1))),
        h('td', { class: 'num' }, `${(d.at_us / 1000).toFixed(1)} ms`),
        h('td', {}, d.direction === 'in' ? '→ in' : '← out'),
        h('td', { class: 'num' }, String(d.bytes.length)),
        h('td', { class: `verdict ${verdict}` }, verdict),
        h('td', {}, d.seen.fec ? `${d.seen.fec.type} #${d.seen.fec.seqid}` : '–'),
        h('td', { class: 'segments' }, segs.map(segmentSummary).join(' · ') || (d.seen.verdict === 'ok' ? '–' : d.seen.error ?? '')),
        h('td', { class: 'smux' }, smux.join(' · ') || '–'),
      );
    });
    const table = h(
      'table',
      { class: 'inspector' },
      h('thead', {}, h('tr', {}, ...['#', 'Time', 'Way', 'Bytes', 'Crypto', 'FEC', 'KCP segments', 'smux frames'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, ...rows),
    );
    this.results.replaceChildren(table);
    this.detail.hidden = true;
  }

  private open(i: number, direction: string, bytes: Uint8Array, seen: Decoded): void {
    const segs = seen.segments.map((s) =>
      h('tr', {},
        ...[typeof s.cmd === 'number' ? `cmd ${s.cmd}` : s.cmd, s.conv, s.sn, s.una, s.frg, s.wnd, s.ts, s.len].map((v) => h('td', {}, String(v))),
        h('td', {}, framesOf(s).map((f) => `v${f.version} ${frameSummary(f)}`).join(' · ') || '–')));
    const parts: (HTMLElement | null)[] = [
      h('h2', {}, `Datagram ${i + 1} (${direction}, ${bytes.length} bytes)`),
      h('p', {}, seen.verdict === 'ok' ? 'Decrypted; the checksum holds.' : `Not decrypted: ${seen.error ?? seen.verdict}.`),
      seen.segmentError ? h('p', { class: 'warn' }, `Segments stop early: ${seen.segmentError}.`) : null,
      segs.length
        ? h('div', { class: 'table-scroll' }, h('table', {},
            h('thead', {}, h('tr', {}, ...['Cmd', 'Conv', 'SN', 'UNA', 'Frg', 'Wnd', 'TS', 'Len', 'smux frames'].map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, ...segs)))
        : null,
      h('p', {}, 'On the wire: ', h('code', { class: 'hex' }, hex(bytes, 96))),
    ];
    this.detail.replaceChildren(...parts.filter((p): p is HTMLElement => p !== null));
    this.detail.hidden = false;
    this.detail.scrollIntoView({ block: 'nearest' });
  }

  unmount(): void {}
}
