// Helpers for the browser tests: free ports, a TCP echo backend, a kcpgate
// server with its WebTransport listener, and headless Chromium.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const KCPGATE = process.env.KCPGATE_BIN ?? fileURLToPath(new URL('../../target/debug/kcpgate', import.meta.url));
export const BENCH = process.env.KCPGATE_BENCH_BIN ?? fileURLToPath(new URL('../../target/debug/kcpgate-bench', import.meta.url));
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
export const FIREFOX = process.env.FIREFOX_BIN ?? '/usr/bin/firefox-esr';

/** Ports this process handed out: the OS may offer a released port again at once. */
const given = new Set();

/** A UDP and TCP port that were free a moment ago, never one handed out before. */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
    });
    const udpFree = await new Promise((resolve) => {
      const u = createSocket('udp4');
      u.once('error', () => resolve(false));
      u.bind(port, '127.0.0.1', () => u.close(() => resolve(true)));
    });
    if (udpFree && !given.has(port)) {
      given.add(port);
      return port;
    }
  }
}

/** A TCP echo server; resolves to { port, close() }. */
export async function echoServer() {
  const sockets = new Set();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** `bin` with `argv` (and `env` besides the test's), its stderr kept in `child.log`. */
export function spawnReady(bin, argv, env = {}) {
  const child = spawn(bin, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  child.log = '';
  child.stderr.on('data', (d) => { child.log += d; });
  return child;
}

/** Resolves once the admin listener at `base` answers /readyz; fails with the
 * gateway's log if it exits first or is not ready in 20 s. */
export async function untilReady(child, base) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`kcpgate exited with ${child.exitCode}:\n${child.log}`);
    try {
      if ((await fetch(`${base}/readyz`)).ok) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`kcpgate not ready in 20 s:\n${child.log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** `kcpgate server` (`bin`) in front of `target`, with WebTransport and the
 * public listener for game pages; resolves once /readyz answers. `args` adds
 * flags. `base` is the admin listener's address, `public` the game pages'. */
export async function startGateway({ target, key = 'browser-test-key', crypt = 'aes', args = [], bin = KCPGATE }) {
  const [udp, webtransport, admin, pub] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const argv = [
    'server', '--listen', `127.0.0.1:${udp}`, '--target', target, '--key', key, '--crypt', crypt,
    '--datashard', '10', '--parityshard', '3', '--webtransport', `127.0.0.1:${webtransport}`,
    '--admin', `127.0.0.1:${admin}`, '--public', `127.0.0.1:${pub}`, '--quiet', ...args,
  ];
  const child = spawnReady(bin, argv);
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const base = `http://127.0.0.1:${admin}`;
  await untilReady(child, base);
  const log = () => child.log;
  return {
    base, public: `http://127.0.0.1:${pub}`, udp, webtransport, key, crypt,
    log,
    /** The gateway's resident memory now, and its peak, in bytes (Linux). */
    memory: async () => {
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
      const kib = (name) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm'))[1]) * 1024;
      return { rss: kib('VmRSS'), peak: kib('VmHWM') };
    },
    api: async (path, init) => {
      const response = await fetch(`${base}${path}`, init);
      return response.status === 204 ? null : response.json();
    },
    /** WebTransport sessions refused, by reason, from /metrics. */
    refusals: async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      return Object.fromEntries([...text.matchAll(/kcpgate_webtransport_refused_sessions_total\{reason="(\w+)"\} (\d+)/g)].map((m) => [m[1], Number(m[2])]));
    },
    stop: async () => {
      child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Headless Chromium with a fresh profile. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Containers run as root, where Chromium's sandbox cannot start.
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
}

/** Headless Firefox with a fresh profile, driven over WebDriver BiDi (Puppeteer):
 * `newPage()`, `page.goto(url)`, `page.evaluate(fn, arg)` and `close()` as with
 * Playwright. */
export function launchFirefox() {
  return puppeteer.launch({ browser: 'firefox', executablePath: FIREFOX, headless: true });
}

/** The demo page of `gateway` in a new page of `browser`, preset by `query`;
 * `errors` collects uncaught exceptions and unhandled rejections. */
export async function openDemo(browser, gateway, query = {}) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${gateway.public}/demo/?${new URLSearchParams(query)}`);
  await page.waitForFunction(() => window.kcpgateDemo);
  return { page, errors };
}
