// The demo page: connects through kcpgate's WebTransport listener to its backend
// (an echo server in the demo), shows live round trips and the session's stats,
// and sends bulk data on several streams, verified by SHA-256.
//
// Query parameters preset the form: key, crypt, ds, ps, mode, smux, nocomp=1,
// and connect=1 connects at once. Everything the page does is also reachable as
// window.kcpgateDemo, for scripts and tests.

import init, { Client } from '/module/kcpgate_wasm.js';

const CRYPTS = ['aes', 'aes-128', 'aes-192', 'aes-128-gcm', 'salsa20', 'blowfish', 'twofish', 'cast5', '3des', 'tea', 'xtea', 'xor', 'sm4', 'none', 'null'];
const PING_BYTES = 64;
const PING_EVERY_MS = 100;
const PLOT_SECONDS = 30;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  status: 'idle',
  client: null,
  closedReason: null,
  lastError: null,
  /** [time ms, round trip ms] of recent pings. */
  pings: [],
};

for (const c of CRYPTS) $('crypt').add(new Option(c, c, c === 'aes', c === 'aes'));
for (const [param, id] of [['key', 'key'], ['crypt', 'crypt'], ['ds', 'ds'], ['ps', 'ps'], ['mode', 'mode'], ['smux', 'smux']]) {
  if (params.has(param)) $(id).value = params.get(param);
}
if (params.get('nocomp') === '1') $('comp').value = 'off';

function setStatus(text, kind = '') {
  state.status = text;
  $('status').textContent = text;
  $('status').className = kind;
}

function formOptions() {
  return {
    key: $('key').value,
    crypt: $('crypt').value,
    dataShards: Number($('ds').value),
    parityShards: Number($('ps').value),
    mode: $('mode').value,
    smuxVersion: Number($('smux').value),
    noComp: $('comp').value === 'off',
  };
}

/** The WebTransport listener's address and certificate hashes, from this gateway's public listener. */
async function listener() {
  const response = await fetch('/webtransport/certificate');
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail ?? `HTTP ${response.status}`);
  return body;
}

/** Connects with the form's settings (overridden by `overrides`). */
async function connect(overrides = {}) {
  if (state.client) return;
  state.closedReason = null;
  state.lastError = null;
  $('connect').disabled = true;
  setStatus('Connecting…');
  try {
    await init();
    const info = await listener();
    const options = { ...formOptions(), certificateHashes: info.hashes.map((h) => h.value), ...overrides };
    const url = options.url ?? info.url;
    const client = await Client.connect(url, options);
    state.client = client;
    client.closed.then((reason) => closed(client, reason));
    setStatus(`Connected to ${url} (MTU ${client.stats().mtu}).`, 'live');
    $('disconnect').disabled = false;
    $('bulk').disabled = false;
    pingLoop(client);
  } catch (e) {
    state.lastError = e.message;
    setStatus(`Cannot connect: ${e.message}`, 'error');
    $('connect').disabled = false;
    throw e;
  }
}

function closed(client, reason) {
  if (state.client !== client) return;
  state.client = null;
  state.closedReason = reason;
  setStatus(`Session over: ${reason}`, reason === 'closed by the page' ? '' : 'error');
  $('connect').disabled = false;
  $('disconnect').disabled = true;
  $('bulk').disabled = true;
}

function disconnect() {
  state.client?.close();
}

/** Reads exactly `n` bytes from `stream` (null if it ends first). */
async function readExactly(stream, n, pending) {
  while (pending.length < n) {
    const chunk = await stream.read();
    if (chunk === null) return null;
    pending.push(...chunk);
  }
  return Uint8Array.from(pending.splice(0, n));
}

/** One 64-byte round trip on `stream`, in ms. */
async function pingOnce(stream, pending) {
  const message = new Uint8Array(PING_BYTES);
  crypto.getRandomValues(message);
  const start = performance.now();
  await stream.write(message);
  const echo = await readExactly(stream, PING_BYTES, pending);
  const rtt = performance.now() - start;
  if (echo === null || echo.some((b, i) => b !== message[i])) throw new Error('the echo differs from the message');
  return rtt;
}

/** Pings every 100 ms on a stream of its own while the session lives. */
async function pingLoop(client) {
  let stream;
  try {
    stream = client.openStream();
  } catch {
    return;
  }
  const pending = [];
  while (state.client === client) {
    try {
      const rtt = await pingOnce(stream, pending);
      state.pings.push([performance.now(), rtt]);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, PING_EVERY_MS));
  }
}

/** `count` round trips back to back on a new stream: their times, ms. */
async function pingRound(count) {
  const stream = state.client.openStream();
  const pending = [];
  const times = [];
  for (let i = 0; i < count; i++) times.push(await pingOnce(stream, pending));
  stream.reset();
  return times;
}

function deterministicBytes(length, seed) {
  const out = new Uint8Array(length);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

async function sha256(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Sends `bytes` on each of `streams` new streams and reads the echo back; each
 * stream's echo must hash to what was sent. */
async function bulk({ streams = 4, bytes = 1 << 20 } = {}) {
  const client = state.client;
  if (!client) throw new Error('not connected');
  const chunk = 64 * 1024;
  const start = performance.now();
  const results = await Promise.all(Array.from({ length: streams }, async (_, i) => {
    const data = deterministicBytes(bytes, i + 1);
    const stream = client.openStream();
    const received = new Uint8Array(bytes);
    let got = 0;
    const reading = (async () => {
      while (got < bytes) {
        const part = await stream.read();
        if (part === null) break;
        received.set(part.subarray(0, Math.min(part.length, bytes - got)), got);
        got += part.length;
      }
    })();
    for (let at = 0; at < bytes; at += chunk) await stream.write(data.subarray(at, at + chunk));
    await reading;
    await stream.finish();
    const [sent, echoed] = await Promise.all([sha256(data), sha256(received)]);
    return { stream: stream.id, bytes, received: got, sent, echoed, ok: sent === echoed && got === bytes };
  }));
  const seconds = (performance.now() - start) / 1000;
  const total = streams * bytes;
  return { ok: results.every((r) => r.ok), seconds, megabytesPerSecond: total / seconds / 1e6, streams: results };
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN;
}

let last = null;
function refresh() {
  const now = performance.now();
  state.pings = state.pings.filter(([t]) => now - t < PLOT_SECONDS * 1000);
  const sorted = state.pings.map(([, r]) => r).sort((a, b) => a - b);
  const fixed = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '–');
  $('rtt-p50').textContent = fixed(percentile(sorted, 0.5));
  $('rtt-p99').textContent = fixed(percentile(sorted, 0.99));
  const s = state.client?.stats();
  if (s) {
    $('srtt').textContent = s.srtt;
    $('rto').textContent = s.rto;
    $('in-flight').textContent = s.inFlight;
    $('retrans').textContent = s.retransmissions;
    $('fec').textContent = s.fecRecovered;
    $('dropped').textContent = s.droppedDatagrams;
    if (last) {
      const dt = (now - last.at) / 1000;
      $('rate-in').textContent = fixed((s.bytesIn - last.bytesIn) / dt / 1e3);
      $('rate-out').textContent = fixed((s.bytesOut - last.bytesOut) / dt / 1e3);
    }
    last = { at: now, bytesIn: s.bytesIn, bytesOut: s.bytesOut };
  } else {
    last = null;
  }
  plot(now);
}

function plot(now) {
  const canvas = $('rtt-plot');
  const g = canvas.getContext('2d');
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const top = Math.max(5, ...state.pings.map(([, r]) => r)) * 1.1;
  g.fillStyle = '#666';
  g.font = '11px system-ui';
  g.fillText(`${top.toFixed(0)} ms`, 4, 12);
  g.fillText(`round trips, last ${PLOT_SECONDS} s`, width - 150, 12);
  g.strokeStyle = '#2456c5';
  g.beginPath();
  state.pings.forEach(([t, r], i) => {
    const x = width - ((now - t) / (PLOT_SECONDS * 1000)) * width;
    const y = height - (r / top) * (height - 16);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

$('connect').onclick = () => connect().catch(() => {});
$('disconnect').onclick = disconnect;
$('bulk').onclick = async () => {
  $('bulk').disabled = true;
  $('bulk-result').textContent = 'Sending…';
  try {
    const r = await bulk({ streams: Number($('bulk-streams').value), bytes: Math.round(Number($('bulk-mb').value) * (1 << 20)) });
    $('bulk-result').textContent = `${r.ok ? 'Every echo matches' : 'ECHO MISMATCH'}: ${r.streams.length} streams in ${r.seconds.toFixed(2)} s, ` +
      `${r.megabytesPerSecond.toFixed(2)} MB/s each way\n` + r.streams.map((s) => `stream ${s.stream}: sha256 ${s.echoed}${s.ok ? '' : ' (sent ' + s.sent + ')'}`).join('\n');
  } catch (e) {
    $('bulk-result').textContent = `Failed: ${e.message}`;
  } finally {
    $('bulk').disabled = !state.client;
  }
};
setInterval(refresh, 500);

window.kcpgateDemo = { state, connect, disconnect, bulk, pingRound };
if (params.get('connect') === '1') connect().catch(() => {});
