// What the dashboard's browser tests share: a gateway with an admin token,
// clients that push traffic through it, and a dashboard page that records errors.
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { KCPGATE, freePort, startGateway } from '../../../wasm/test/gateway.mjs';

export { KCPGATE, echoServer, freePort, launchBrowser, spawnReady, startGateway, untilReady } from '../../../wasm/test/gateway.mjs';

export const TOKEN = 'dashboard-test-token';
export const KEY = 'dashboard-key';

/** Where the tests write the screenshots of each view. */
export const SHOTS = process.env.KCPGATE_SCREENSHOTS ?? fileURLToPath(new URL('../../../target/dashboard-screenshots/', import.meta.url));
mkdirSync(SHOTS, { recursive: true });

/** A gateway with an admin token in front of `target`. */
export function gatewayWithToken(target, args = []) {
  return startGateway({ target, key: KEY, crypt: 'aes', args: ['--admin-token', TOKEN, '--mode', 'fast3', ...args] });
}

/** The admin API with the token. */
export async function api(gateway, path, init = {}) {
  const response = await fetch(`${gateway.base}${path}`, { ...init, headers: { Authorization: `Bearer ${TOKEN}`, ...(init.headers ?? {}) } });
  if (response.status === 204) return null;
  const body = await response.json();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

/** A client process (Debian's kcptun-client or kcpgate client) carrying a local port to the gateway. */
export async function tunnelClient(kind, gateway, extra = []) {
  const local = await freePort();
  const common = ['-r', `127.0.0.1:${gateway.udp}`, '-l', `127.0.0.1:${local}`, '-key', KEY, '-crypt', 'aes', '-mode', 'fast3', ...extra];
  const [bin, argv] = kind === 'kcptun' ? ['kcptun-client', common] : [KCPGATE, ['client', ...common]];
  const child = spawn(bin, argv, { stdio: ['ignore', 'ignore', 'ignore'] });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  child.on('error', (e) => {
    throw new Error(`${bin} did not start (${e.message}); Debian's kcptun: apt-get install -y kcptun`);
  });
  return {
    port: local,
    stop: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Pushes `chunk` bytes through a tunnel's local port every `everyMs`, and checks
 * that every byte comes back from the echo backend, in order.
 */
export async function pusher(port, seed, { chunk = 32 * 1024, everyMs = 100 } = {}) {
  const deadline = Date.now() + 10_000;
  let socket;
  for (;;) {
    try {
      socket = await new Promise((resolve, reject) => {
        const s = connect(port, '127.0.0.1', () => resolve(s));
        s.once('error', reject);
      });
      break;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const pattern = (offset, n) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      const x = offset + i;
      b[i] = (x * 31 + seed * 17 + (x >> 8)) & 0xff;
    }
    return b;
  };
  const state = { sent: 0, received: 0, mismatch: null, ended: null };
  socket.on('data', (d) => {
    const want = pattern(state.received, d.length);
    if (!state.mismatch && !want.equals(d)) state.mismatch = `byte ${state.received} differs`;
    state.received += d.length;
  });
  socket.on('error', () => {});
  const ended = new Promise((resolve) => socket.on('close', () => {
    state.ended = Date.now();
    resolve();
  }));
  const timer = setInterval(() => {
    if (state.sent - state.received > 8 * chunk) return; // do not outrun the echo
    socket.write(pattern(state.sent, chunk));
    state.sent += chunk;
  }, everyMs);
  return {
    state,
    ended,
    stop: () => {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

/** A dashboard page at `width`×`height`, signed in; `problems` collects console errors and page errors. */
export async function openDashboard(browser, gateway, { width = 1280, height = 800, colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, colorScheme });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page: ${e.message}`));
  await page.goto(`${gateway.base}/`);
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#nav').waitFor({ state: 'visible' });
  return { page, context, problems };
}

/** "12.3 kB" back to a number of bytes. */
export function parseBytes(text) {
  const m = /^([\d.]+) (B|kB|MB|GB|TB)$/.exec(text.trim());
  if (!m) throw new Error(`not a byte count: ${text}`);
  return Number(m[1]) * 1000 ** ['B', 'kB', 'MB', 'GB', 'TB'].indexOf(m[2]);
}

/** Waits until `check()` is truthy, polling, or fails with `what`. */
export async function until(what, check, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
