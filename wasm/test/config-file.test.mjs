// One `kcpgate server -config FILE` with three listeners, each with its own key:
// UDP aes for Debian's kcptun, UDP salsa20 over a port range for a kcpgate client,
// and WebTransport for a browser page. All three carry traffic at once, and every
// byte comes back. Needs Debian's kcptun (kcptun-client) besides what the other
// browser tests need.
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { KCPGATE, echoServer, freePort, launchBrowser, openDemo, spawnReady, untilReady } from './gateway.mjs';

const KEYS = { native: 'native-key-0123456789', legacy: 'legacy-key-0123456789', browser: 'browser-key-0123456789' };
const children = [];
let echo;
let browser;
let dir;
let ports;

/** Two neighbouring UDP ports that are free, for a listener's port range. */
async function freePair() {
  for (;;) {
    const low = await freePort();
    const free = await new Promise((resolve) => {
      const u = createSocket('udp4');
      u.once('error', () => resolve(false));
      u.bind(low + 1, '127.0.0.1', () => u.close(() => resolve(true)));
    });
    if (free) return low;
  }
}

function run(bin, args, env = {}) {
  const child = spawnReady(bin, args, env);
  children.push(child);
  return child;
}

/** Sends `bytes` through the local TCP port of a client and resolves to the echo.
 * The connection stays open until the echo is whole: Debian's kcptun ends a
 * stream when its local side half-closes. */
function echoThrough(port, bytes) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let got = 0;
    const attempt = (left) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(bytes));
      socket.on('data', (d) => { chunks.push(d); got += d.length; if (got >= bytes.length) socket.destroy(); });
      let retrying = false;
      socket.on('error', (e) => {
        retrying = left > 0 && got === 0 && e.code === 'ECONNREFUSED';
        if (retrying) setTimeout(() => attempt(left - 1), 200);
        else reject(e);
      });
      socket.on('close', () => {
        if (got >= bytes.length) resolve(Buffer.concat(chunks));
        else if (!retrying) reject(new Error(`port ${port}: ${got} of ${bytes.length} bytes back`));
      });
    };
    attempt(25); // the client may still be starting
  });
}

before(async () => {
  echo = await echoServer();
  ports = {
    native: await freePort(), legacy: await freePair(), browser: await freePort(),
    admin: await freePort(), public: await freePort(),
  };
  dir = await mkdtemp(join(tmpdir(), 'kcpgate-config-'));
  const file = join(dir, 'kcpgate.toml');
  const target = `target = "127.0.0.1:${echo.port}"`;
  await writeFile(file, [
    `admin = "127.0.0.1:${ports.admin}"`, `public = "127.0.0.1:${ports.public}"`, 'quiet = true', '',
    '[[listener]]', 'name = "native"', `listen = "127.0.0.1:${ports.native}"`, target,
    'key-env = "TEST_NATIVE_KEY"', 'crypt = "aes"', 'mode = "fast3"', '',
    '[[listener]]', 'name = "legacy"', `listen = "127.0.0.1:${ports.legacy}-${ports.legacy + 1}"`, target,
    'key-env = "TEST_LEGACY_KEY"', 'crypt = "salsa20"', 'mode = "fast2"', 'datashard = 0', 'parityshard = 0', '',
    '[[listener]]', 'name = "browser"', 'transport = "webtransport"', `listen = "127.0.0.1:${ports.browser}"`, target,
    'key-env = "TEST_BROWSER_KEY"', 'crypt = "aes"', '',
  ].join('\n'));
  const gateway = run(KCPGATE, ['server', '-config', file], {
    TEST_NATIVE_KEY: KEYS.native, TEST_LEGACY_KEY: KEYS.legacy, TEST_BROWSER_KEY: KEYS.browser,
  });
  await untilReady(gateway, `http://127.0.0.1:${ports.admin}`);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill('SIGKILL');
  await echo?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('three listeners of one file serve kcptun, a kcpgate client and a browser page at once, every byte checked', async () => {
  const [kcptunLocal, kcpgateLocal] = [await freePort(), await freePort()];
  run('kcptun-client', ['-l', `127.0.0.1:${kcptunLocal}`, '-r', `127.0.0.1:${ports.native}`,
    '-key', KEYS.native, '-crypt', 'aes', '-mode', 'fast3', '-quiet']);
  run(KCPGATE, ['client', '-l', `127.0.0.1:${kcpgateLocal}`, '-r', `127.0.0.1:${ports.legacy}-${ports.legacy + 1}`,
    '-key', KEYS.legacy, '-crypt', 'salsa20', '-mode', 'fast2', '-ds', '0', '-ps', '0', '-admin', 'off', '-quiet']);
  const { page, errors } = await openDemo(browser, { public: `http://127.0.0.1:${ports.public}` },
    { key: KEYS.browser, crypt: 'aes', ds: 10, ps: 3 });
  await page.evaluate(() => window.kcpgateDemo.connect());

  const [native, legacy] = [randomBytes(512 * 1024), randomBytes(512 * 1024)];
  const [nativeBack, legacyBack, bulk] = await Promise.all([
    echoThrough(kcptunLocal, native),
    echoThrough(kcpgateLocal, legacy),
    page.evaluate(() => window.kcpgateDemo.bulk({ streams: 2, bytes: 512 * 1024 })),
  ]);
  assert.ok(nativeBack.equals(native), 'Debian\'s kcptun through the aes listener: every byte back');
  assert.ok(legacyBack.equals(legacy), 'a kcpgate client through the salsa20 port range: every byte back');
  for (const s of bulk.streams) {
    assert.equal(s.received, 512 * 1024, `browser stream ${s.stream}: every byte came back`);
    assert.equal(s.echoed, s.sent, `browser stream ${s.stream}: the echo's SHA-256 is the sent data's`);
  }
  const { sessions } = await (await fetch(`http://127.0.0.1:${ports.admin}/api/v1/sessions`)).json();
  const by = (crypt, transport) => sessions.filter((s) => s.crypt === crypt && s.transport === transport).length;
  assert.deepEqual([by('aes', 'udp'), by('salsa20', 'udp'), by('aes', 'webtransport')], [1, 1, 1], JSON.stringify(sessions));
  assert.deepEqual(errors, []);
  await page.close();
});
