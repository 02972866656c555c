// The demo page in headless Chromium, through a real `kcpgate server` and its
// WebTransport listener, to a TCP echo backend. Needs wasm/build and a kcpgate
// built after it (KCPGATE_BIN, default target/debug/kcpgate) and Debian's
// chromium (CHROMIUM_BIN, default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { echoServer, launchBrowser, openDemo as openDemoOf, startGateway } from './gateway.mjs';

let echo;
let gateway;
let browser;

before(async () => {
  echo = await echoServer();
  gateway = await startGateway({ target: `127.0.0.1:${echo.port}` });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  await echo?.close();
});

const openDemo = (query) => openDemoOf(browser, gateway, query);

test('the demo page loads without a request that fails (a favicon included)', async () => {
  const page = await browser.newPage();
  const failed = [];
  page.on('response', (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
  page.on('requestfailed', (r) => failed.push(`${r.failure()?.errorText} ${r.url()}`));
  await page.goto(`${gateway.public}/demo/`);
  await page.waitForFunction(() => window.kcpgateDemo);
  await page.waitForLoadState('networkidle');
  assert.deepEqual(failed, []);
  // Headless Chromium never asks for /favicon.ico; a browser with a tab bar does,
  // unless the page names its icon.
  assert.equal(await page.evaluate(() => document.querySelector('link[rel="icon"]')?.getAttribute('href')), 'data:,');
  await page.close();
});

test('4 streams of 1 MB echo byte for byte over KCP in WebTransport (aes, FEC 10/3); the API lists and kicks the session', async () => {
  const { page, errors } = await openDemo({ key: gateway.key, crypt: 'aes', ds: 10, ps: 3 });
  await page.evaluate(() => window.kcpgateDemo.connect());
  const result = await page.evaluate(() => window.kcpgateDemo.bulk({ streams: 4, bytes: 1 << 20 }));
  assert.equal(result.streams.length, 4);
  for (const s of result.streams) {
    assert.equal(s.received, 1 << 20, `stream ${s.stream}: every byte came back`);
    assert.equal(s.echoed, s.sent, `stream ${s.stream}: the echo's SHA-256 is the sent data's`);
  }
  assert.ok(result.ok);

  const { sessions } = await gateway.api('/api/v1/sessions');
  const browserSessions = sessions.filter((s) => s.transport === 'webtransport');
  assert.equal(browserSessions.length, 1, JSON.stringify(sessions));
  const [session] = browserSessions;
  assert.equal(session.crypt, 'aes');
  assert.equal(session.framing, 'streams');
  assert.deepEqual(session.fec, { data: 10, parity: 3 });
  const stats = await page.evaluate(() => window.kcpgateDemo.state.client.stats());
  assert.equal(session.conv, stats.conv, 'the API shows the page\'s conversation');
  assert.ok(stats.mtu <= 1211, `the page's MTU is clamped to the browser's datagram size (${stats.mtu})`);
  assert.equal(session.kcp.mtu, 1211, 'so is the gateway\'s');

  const metrics = await (await fetch(`${gateway.base}/metrics`)).text();
  assert.match(metrics, /kcpgate_transport_sessions_open\{transport="webtransport"\} 1\b/);
  assert.match(metrics, /kcpgate_transport_sessions_opened_total\{transport="webtransport"\} 1\b/);

  await gateway.api(`/api/v1/sessions/${session.id}?reason=browser+test`, { method: 'DELETE' });
  await page.waitForFunction(() => window.kcpgateDemo.state.closedReason !== null, null, { timeout: 5000 });
  const reason = await page.evaluate(() => window.kcpgateDemo.state.closedReason);
  assert.match(reason, /kicked: browser test/);
  assert.match(await page.textContent('#status'), /kicked: browser test/);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a run-time change of the tunables keeps WebTransport sessions within the browser\'s datagram size', async () => {
  const patched = await gateway.api('/api/v1/config', {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ sndwnd: 256 }),
  });
  assert.equal(patched.tunables.sndwnd, 256, JSON.stringify(patched));
  const { page, errors } = await openDemo({ key: gateway.key, crypt: 'aes', ds: 10, ps: 3 });
  await page.evaluate(() => window.kcpgateDemo.connect());
  const result = await page.evaluate(() => window.kcpgateDemo.bulk({ streams: 1, bytes: 256 << 10 }));
  assert.ok(result.ok, JSON.stringify(result));
  const { sessions } = await gateway.api('/api/v1/sessions');
  assert.deepEqual(sessions.filter((s) => s.transport === 'webtransport').map((s) => s.kcp.mtu), [1211]);
  assert.deepEqual(errors, []);
  await page.close();
});

test('plain KCP at /messages: messages of every size come back whole and in order through the backend', async () => {
  const { page, errors } = await openDemo({});
  await page.exposeFunction('lookUp', async (conv) => (await gateway.api('/api/v1/sessions')).sessions.find((s) => s.conv === conv));
  const result = await page.evaluate(async ({ key }) => {
    const { default: init, Client } = await import('/module/kcpgate_wasm.js');
    await init();
    const { port, hashes } = await (await fetch('/webtransport/certificate')).json();
    const client = await Client.connect(`https://127.0.0.1:${port}/messages`, {
      key, crypt: 'aes', dataShards: 10, parityShards: 3, messages: true, certificateHashes: hashes.map((h) => h.value),
    });
    const sizes = [1, 17, 1200, 5000, 65536, 2, 30000];
    const sent = sizes.map((n, i) => Uint8Array.from({ length: n }, (_, k) => (k * 13 + i) & 0xff));
    const refusals = [];
    for (const bad of [() => client.openStream(), () => client.send(new Uint8Array(65537))]) {
      try { await bad(); } catch (e) { refusals.push(e.message); }
    }
    await Promise.all(sent.map((m) => client.send(m)));
    const back = [];
    for (let i = 0; i < sent.length; i++) back.push(await client.receive());
    const same = back.every((m, i) => m.length === sent[i].length && m.every((b, k) => b === sent[i][k]));
    const { conv } = client.stats();
    // The admin API is not this page's origin: the test reads it on the page's behalf.
    const listed = await window.lookUp(conv);
    client.close();
    return { same, lengths: back.map((m) => m.length), refusals, listed };
  }, { key: gateway.key });
  assert.equal(result.listed.transport, 'webtransport');
  assert.equal(result.listed.framing, 'messages');
  assert.equal(result.listed.smux_version, null);
  // The page closed its side: the gateway ends the session without waiting for a timeout.
  const deadline = Date.now() + 5000;
  let gone = false;
  while (!gone && Date.now() < deadline) {
    const { sessions } = await gateway.api('/api/v1/sessions');
    gone = !sessions.some((s) => s.id === result.listed.id);
    if (!gone) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(gone, 'the closed page\'s session is gone within 5 s');
  assert.deepEqual(result.lengths, [1, 17, 1200, 5000, 65536, 2, 30000]);
  assert.ok(result.same, 'every message came back byte for byte');
  assert.match(result.refusals[0], /no streams: use send\(\) and receive\(\)/);
  assert.match(result.refusals[1], /a message holds 1 to 65536 bytes/);
  assert.deepEqual(errors, []);
  await page.close();
});
