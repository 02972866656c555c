// The browser benchmark: KCP over WebTransport from headless Chromium through
// kcpgate, beside a native `kcpgate client` in the same run, then KCP against a
// plain WebTransport stream through the impairment relay. Run it with
// bench/browser (which builds what it needs); writes results.md, samples.csv and
// latency.svg into --out.
//
//   node bench/browser.mjs --kcpgate target/release/kcpgate \
//     --bench target/release/kcpgate-bench --out bench/results/browser [--pings 1000] [--megabytes 8]
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect as tcpConnect } from 'node:net';
import { parseArgs } from 'node:util';

// playwright-core and the gateway helpers live with the browser module's tests.
const require = createRequire(new URL('../wasm/package.json', import.meta.url));
const { chromium } = require('playwright-core');
const { echoServer, freePort, startGateway } = await import('../wasm/test/gateway.mjs');

const { values: opts } = parseArgs({
  options: {
    kcpgate: { type: 'string', default: 'target/release/kcpgate' },
    bench: { type: 'string', default: 'target/release/kcpgate-bench' },
    out: { type: 'string', default: 'bench/results/browser' },
    pings: { type: 'string', default: '1000' },
    megabytes: { type: 'string', default: '8' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
const PINGS = Number(opts.pings);
const BULK_BYTES = Number(opts.megabytes) * (1 << 20);
const STREAMS = 4;
const IMPAIRMENT = 'loss=0.05,delay=20ms';
const KEY = 'browser-bench-key';
const log = (line) => console.error(`[${((performance.now()) / 1000).toFixed(0).padStart(4)} s] ${line}`);

const children = [];
function start(bin, args) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  child.on('exit', (code) => { if (code && code !== 0 && !child.stopping) log(`${bin} ${args[0]} exited ${code}: ${err}`); });
  return child;
}
function firstLine(child) {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    child.on('exit', () => reject(new Error('exited before printing')));
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function percentile(samples, p) {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
}

// The native side: a TCP connection through `kcpgate client`.
async function nativePings(port, count) {
  const socket = await new Promise((resolve, reject) => {
    const s = tcpConnect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
  socket.setNoDelay(true);
  const times = [];
  let pending = Buffer.alloc(0);
  let wake = null;
  socket.on('data', (d) => { pending = Buffer.concat([pending, d]); wake?.(); });
  for (let i = 0; i < count; i++) {
    const message = Buffer.alloc(64, i & 0xff);
    const t = performance.now();
    socket.write(message);
    while (pending.length < 64) await new Promise((r) => { wake = r; });
    const echo = pending.subarray(0, 64);
    pending = pending.subarray(64);
    times.push(performance.now() - t);
    if (!echo.equals(message)) throw new Error(`native ping ${i} came back changed`);
  }
  socket.destroy();
  return times;
}

async function nativeBulk(port, streams, bytes) {
  const t = performance.now();
  await Promise.all(Array.from({ length: streams }, (_, i) => new Promise((resolve, reject) => {
    const data = Buffer.alloc(bytes);
    for (let k = 0; k < bytes; k++) data[k] = (k * 31 + i * 7) & 0xff;
    let got = 0;
    const chunks = [];
    const socket = tcpConnect(port, '127.0.0.1', () => socket.end(data));
    socket.on('data', (d) => {
      chunks.push(d);
      got += d.length;
      if (got >= bytes) {
        socket.destroy();
        Buffer.concat(chunks).subarray(0, bytes).equals(data) ? resolve() : reject(new Error(`native stream ${i}: echo differs`));
      }
    });
    socket.on('error', reject);
  })));
  return (streams * bytes) / ((performance.now() - t) / 1000) / 1e6;
}

/** Round trips of 64 B on one bidirectional WebTransport stream to the plain echo, from the page. */
async function streamPings(page, url, hash, count) {
  return page.evaluate(async ({ url, hash, count }) => {
    const bytes = Uint8Array.from(hash.match(/../g).map((h) => parseInt(h, 16)));
    const wt = new WebTransport(url, { serverCertificateHashes: [{ algorithm: 'sha-256', value: bytes }] });
    await wt.ready;
    const stream = await wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    let pending = [];
    const times = [];
    for (let i = 0; i < count; i++) {
      const message = new Uint8Array(64).fill(i & 0xff);
      const t = performance.now();
      await writer.write(message);
      while (pending.length < 64) {
        const { value, done } = await reader.read();
        if (done) throw new Error('the echo stream ended');
        pending.push(...value);
      }
      pending = pending.slice(64);
      times.push(performance.now() - t);
    }
    wt.close();
    return times;
  }, { url, hash, count });
}

/** How many datagrams of 1,200 bytes a second the page gets back from the plain
 * echo when it offers `rate` a second for 2 s: the browser's own datagram ceiling. */
async function datagramCapacity(page, url, hash, rate) {
  return page.evaluate(async ({ url, hash, rate }) => {
    const bytes = Uint8Array.from(hash.match(/../g).map((h) => parseInt(h, 16)));
    const wt = new WebTransport(url, { serverCertificateHashes: [{ algorithm: 'sha-256', value: bytes }] });
    await wt.ready;
    wt.datagrams.incomingHighWaterMark = 1024;
    const writer = wt.datagrams.writable.getWriter();
    const reader = wt.datagrams.readable.getReader();
    let got = 0;
    let done = false;
    (async () => { while (!done) { if ((await reader.read()).done) break; got++; } })();
    const start = performance.now();
    let sent = 0;
    while (performance.now() - start < 2000) {
      const due = Math.floor(((performance.now() - start) / 1000) * rate);
      for (; sent < due; sent++) writer.write(new Uint8Array(1200)).catch(() => {});
      await new Promise((r) => setTimeout(r, 1));
    }
    await new Promise((r) => setTimeout(r, 300));
    done = true;
    wt.close();
    return got / 2;
  }, { url, hash, rate });
}

async function main() {
  mkdirSync(opts.out, { recursive: true });
  const echo = await echoServer();
  const gateway = await startGateway({ target: `127.0.0.1:${echo.port}`, key: KEY, args: ['-mode', 'fast3'], bin: opts.kcpgate });
  log(`kcpgate server: UDP ${gateway.udp}, WebTransport ${gateway.webtransport}`);
  const browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
  const page = await browser.newPage();
  await page.goto(`${gateway.public}/demo/?key=${KEY}&crypt=aes&ds=10&ps=3&mode=fast3`);
  await page.waitForFunction(() => window.kcpgateDemo);
  const connectVia = (url) => page.evaluate((url) => window.kcpgateDemo.connect(url ? { url } : {}), url);
  const disconnect = () => page.evaluate(() => window.kcpgateDemo.disconnect());
  const rows = [];

  log(`clean path: ${PINGS} round trips of 64 B and ${STREAMS} × ${opts.megabytes} MB echoed, browser then native`);
  await connectVia(null);
  const browserPings = await page.evaluate((n) => window.kcpgateDemo.pingRound(n), PINGS);
  const browserBulk = await page.evaluate(({ streams, bytes }) => window.kcpgateDemo.bulk({ streams, bytes }), { streams: STREAMS, bytes: BULK_BYTES });
  if (!browserBulk.ok) throw new Error('the browser bulk echo differs');
  await disconnect();
  // Each measurement runs with only what it needs beside it.
  const clientPort = await freePort();
  const client = start(opts.kcpgate, ['client', '-l', `127.0.0.1:${clientPort}`, '-r', `127.0.0.1:${gateway.udp}`,
    '-key', KEY, '-crypt', 'aes', '-ds', '10', '-ps', '3', '-mode', 'fast3', '-quiet']);
  await sleep(500);
  const native = await nativePings(clientPort, PINGS);
  const nativeMBps = await nativeBulk(clientPort, STREAMS, BULK_BYTES);
  rows.push(['clean', 'browser: KCP over WebTransport datagrams → kcpgate', browserPings, browserBulk.megabytesPerSecond]);
  rows.push(['clean', 'native: kcpgate client (UDP) → kcpgate', native, nativeMBps]);
  client.stopping = true;
  client.kill('SIGINT');

  const baseline = start(opts.bench, ['webtransport-echo', '--listen', `127.0.0.1:${await freePort()}`]);
  const { port: baselinePort, hash: baselineHash } = JSON.parse(await firstLine(baseline));
  const [kcpRelayPort, streamRelayPort] = [await freePort(), await freePort()];
  for (const [listen, target] of [[kcpRelayPort, gateway.webtransport], [streamRelayPort, baselinePort]]) {
    start(opts.bench, ['relay', '--listen', `127.0.0.1:${listen}`, '--target', `127.0.0.1:${target}`, '--up', IMPAIRMENT, '--down', IMPAIRMENT]);
  }
  await sleep(500);

  const capacity = await datagramCapacity(page, `https://127.0.0.1:${baselinePort}/`, baselineHash, 20_000);
  log(`the browser's datagram ceiling: ${capacity.toFixed(0)} echoed datagrams of 1,200 B a second`);

  const lossy = Math.max(200, Math.round(PINGS / 2));
  log(`impaired path (${IMPAIRMENT} each way): ${lossy} round trips each way of carrying them`);
  await connectVia(`https://127.0.0.1:${kcpRelayPort}/`);
  const kcpLossy = await page.evaluate((n) => window.kcpgateDemo.pingRound(n), lossy);
  await disconnect();
  const streamLossy = await streamPings(page, `https://127.0.0.1:${streamRelayPort}/`, baselineHash, lossy);
  rows.push([IMPAIRMENT, 'browser: KCP over WebTransport datagrams → kcpgate', kcpLossy, null]);
  rows.push([IMPAIRMENT, 'browser: WebTransport bidirectional stream → plain echo', streamLossy, null]);

  await browser.close();
  for (const c of children) { c.stopping = true; c.kill('SIGINT'); }
  await gateway.stop();
  await echo.close();

  const md = ['| path | what carries the round trips | p50 ms | p99 ms | max ms | bulk MB/s |', '| --- | --- | ---: | ---: | ---: | ---: |'];
  for (const [path, what, times, mbps] of rows) {
    md.push(`| ${path} | ${what} | ${percentile(times, 0.5).toFixed(2)} | ${percentile(times, 0.99).toFixed(2)} | ${Math.max(...times).toFixed(2)} | ${mbps === null ? '' : mbps.toFixed(2)} |`);
  }
  const table = md.join('\n') + '\n';
  writeFileSync(`${opts.out}/results.md`, `# Browser benchmark\n\n${PINGS} round trips of 64 B on the clean path (${STREAMS} streams × ${opts.megabytes} MB for bulk, each way, echo verified); ` +
    `${lossy} through the relay. kcpgate: aes, FEC 10/3, mode fast3.\n\n${table}\n` +
    `The browser's own datagram ceiling, for scale: a plain WebTransport echo returned ${capacity.toFixed(0)} datagrams ` +
    `of 1,200 bytes a second (${(capacity * 1200 / 1e6).toFixed(1)} MB/s each way) when offered 20,000 a second.\n\n![round trips](latency.svg)\n`);
  writeFileSync(`${opts.out}/samples.csv`, 'path,carrier,index,rtt_ms\n' + rows.flatMap(([path, what, times]) => times.map((t, i) => `"${path}","${what}",${i},${t.toFixed(3)}`)).join('\n') + '\n');
  writeFileSync(`${opts.out}/latency.svg`, cdfPlot(rows.filter(([path]) => path === IMPAIRMENT), `64-byte round trips from Chromium, ${IMPAIRMENT} each way`));
  process.stdout.write(`${table}\nbrowser datagram ceiling: ${capacity.toFixed(0)} echoed datagrams/s of 1,200 B\n`);
  log(`wrote ${opts.out}/results.md, samples.csv, latency.svg`);
}

/** Each series' round trips as the fraction slower than each time (log scale,
 * so the tail that p99 measures is as visible as the bulk), as an SVG. */
function cdfPlot(series, title) {
  const [w, h, left, bottom, top, right] = [780, 400, 96, 44, 40, 20];
  const all = series.flatMap(([, , t]) => t);
  const xmax = Math.ceil(Math.max(...all) / 50) * 50;
  const floor = 1e-3;
  const x = (v) => left + (Math.min(v, xmax) / xmax) * (w - left - right);
  const y = (q) => top + (-Math.log10(Math.max(q, floor)) / 3) * (h - top - bottom);
  const colours = ['#2456c5', '#c0392b', '#27ae60', '#8e44ad'];
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="12">`,
    `<rect width="${w}" height="${h}" fill="white"/>`, `<text x="${left}" y="22" font-size="14">${title}</text>`];
  for (let i = 0; i <= 6; i++) {
    const v = (xmax / 6) * i;
    parts.push(`<line x1="${x(v)}" y1="${y(1)}" x2="${x(v)}" y2="${y(floor)}" stroke="#eee"/>`, `<text x="${x(v)}" y="${h - 26}" text-anchor="middle">${v.toFixed(0)}</text>`);
  }
  for (const [q, label] of [[1, 'all'], [0.1, '10 %'], [0.01, '1 % (p99)'], [0.001, '0.1 %']]) {
    parts.push(`<line x1="${x(0)}" y1="${y(q)}" x2="${x(xmax)}" y2="${y(q)}" stroke="#ddd"/>`, `<text x="${left - 6}" y="${y(q) + 4}" text-anchor="end">${label}</text>`);
  }
  parts.push(`<text x="${(w + left) / 2}" y="${h - 8}" text-anchor="middle">round trip, ms</text>`);
  parts.push(`<text transform="translate(14 ${(h + top - bottom) / 2}) rotate(-90)" text-anchor="middle">round trips slower</text>`);
  series.forEach(([, what, times], i) => {
    const s = [...times].sort((a, b) => a - b);
    const points = s.map((t, k) => `${x(t).toFixed(1)},${y((s.length - k) / s.length).toFixed(1)}`).join(' ');
    parts.push(`<polyline fill="none" stroke="${colours[i]}" stroke-width="2" points="${points}"/>`);
    parts.push(`<text x="${x(xmax) - 8}" y="${y(1) + 18 + 18 * i}" text-anchor="end" fill="${colours[i]}">${what}: p99 ${percentile(s, 0.99).toFixed(1)} ms</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

main().catch(async (e) => {
  console.error(`browser benchmark failed: ${e.stack ?? e}`);
  for (const c of children) { c.stopping = true; c.kill('SIGKILL'); }
  process.exit(1);
});
