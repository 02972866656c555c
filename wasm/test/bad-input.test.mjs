// Bad input in the browser: a wrong key, a gateway that refuses or never answers,
// datagrams that fail decryption or are malformed, and a page that opens sessions
// in a loop. Each gives the page a clear answer within seconds, is counted, and
// never throws an uncaught exception. Needs target/debug/kcpgate-bench too.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { after, before, test } from 'node:test';

import { BENCH, echoServer, freePort, launchBrowser, openDemo as openDemoOf, startGateway } from './gateway.mjs';

const LIMIT = 2;
let echo;
let gateway;
let browser;

before(async () => {
  echo = await echoServer();
  gateway = await startGateway({ target: `127.0.0.1:${echo.port}`, args: ['-max-sessions', String(LIMIT)] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  await echo?.close();
});

const openDemo = (query) => openDemoOf(browser, gateway, query);

/** Connects the demo with `options`; resolves to { error, ms }. */
function tryConnect(page, options = {}) {
  return page.evaluate(async (options) => {
    const start = performance.now();
    try {
      await window.kcpgateDemo.connect(options);
      return { error: null, ms: performance.now() - start };
    } catch (e) {
      return { error: e.message, ms: performance.now() - start };
    }
  }, options);
}

test('a wrong key: the page hears why from the gateway within 5 s, and the refusal is counted', async () => {
  const before = (await gateway.refusals()).crypto;
  const { page, errors } = await openDemo({ key: 'not-the-gateways-key' });
  const { error } = await tryConnect(page);
  assert.equal(error, null, 'the WebTransport session itself opens');
  const start = Date.now();
  await page.waitForFunction(() => window.kcpgateDemo.state.closedReason !== null, null, { timeout: 5000 });
  const reason = await page.evaluate(() => window.kcpgateDemo.state.closedReason);
  assert.match(reason, /crypto check: the key or crypt differ/);
  assert.ok(Date.now() - start < 5000);
  assert.match(await page.textContent('#status'), /key or crypt differ/);
  assert.equal((await gateway.refusals()).crypto, before + 1);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a gateway that refuses (nothing listens) is a clear error within 5 s', async () => {
  const { page, errors } = await openDemo({ key: gateway.key });
  const { error, ms } = await tryConnect(page, { url: `https://127.0.0.1:${await freePort()}/` });
  assert.match(error, /refused the connection or did not answer|no answer from the gateway/);
  assert.ok(ms < 5500, `${ms} ms`);
  assert.match(await page.textContent('#status'), /Cannot connect/);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a gateway that never answers is a clear error within 5 s', async () => {
  const silent = createSocket('udp4');
  await new Promise((resolve) => silent.bind(0, '127.0.0.1', resolve));
  const { page, errors } = await openDemo({ key: gateway.key });
  const { error, ms } = await tryConnect(page, { url: `https://127.0.0.1:${silent.address().port}/` });
  silent.close();
  // Chromium gives up on the QUIC handshake after about 4 s; the client's own
  // limit is 5 s. Either way the page hears it in time, with what to check.
  assert.match(error, /(no answer from the gateway at .* within 5 s|refused the connection or did not answer).*-webtransport/);
  assert.ok(ms < 5500, `${ms} ms`);
  assert.deepEqual(errors, []);
  await page.close();
});

test('datagrams that fail decryption or are malformed are counted, never thrown', async () => {
  const garbler = spawn(BENCH, ['webtransport-echo', '--garble', '--listen', `127.0.0.1:${await freePort()}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const line = await new Promise((resolve, reject) => {
      garbler.stdout.once('data', (d) => resolve(String(d)));
      garbler.once('exit', (code) => reject(new Error(`webtransport-echo exited ${code}`)));
    });
    const { port, hash } = JSON.parse(line);
    const { page, errors } = await openDemo({ key: gateway.key });
    const { error } = await tryConnect(page, { url: `https://127.0.0.1:${port}/`, certificateHashes: [hash] });
    assert.equal(error, null);
    // The page's pings go out; only corrupted copies and junk come back.
    await page.waitForFunction(() => window.kcpgateDemo.state.closedReason !== null, null, { timeout: 8000 });
    const reason = await page.evaluate(() => window.kcpgateDemo.state.closedReason);
    assert.match(reason, /did not answer for 5 s: check the key/);
    const dropped = await page.evaluate(() => document.getElementById('dropped').textContent);
    assert.ok(Number(dropped) >= 2, `dropped datagrams shown: ${dropped}`);
    assert.deepEqual(errors, []);
    await page.close();
  } finally {
    garbler.kill();
  }
});

test(`sessions opened in a loop are held by -max-sessions ${LIMIT}, as UDP sessions are`, async () => {
  const before = (await gateway.refusals()).limit;
  const { page, errors } = await openDemo();
  const outcomes = await page.evaluate(async ({ key, tries }) => {
    const { default: init, Client } = await import('/module/kcpgate_wasm.js');
    await init();
    const { port, hashes } = await (await fetch('/webtransport/certificate')).json();
    const options = { key, certificateHashes: hashes.map((h) => h.value) };
    const outcomes = [];
    const clients = [];
    for (let i = 0; i < tries; i++) {
      try {
        const client = await Client.connect(`https://127.0.0.1:${port}/`, options);
        clients.push(client);
        const stream = client.openStream();
        await stream.write(new Uint8Array(64).fill(i));
        const echo = await Promise.race([stream.read(), client.closed.then((r) => { throw new Error(r); })]);
        outcomes.push(echo && echo.length > 0 ? 'served' : 'no echo');
      } catch (e) {
        outcomes.push(`refused: ${e.message}`);
      }
    }
    for (const c of clients) c.close();
    return outcomes;
  }, { key: gateway.key, tries: LIMIT + 4 });
  assert.equal(outcomes.filter((o) => o === 'served').length, LIMIT, outcomes.join('\n'));
  for (const o of outcomes.slice(LIMIT)) assert.match(o, /refused: .*(session limit|refused the connection or did not answer)/, o);
  assert.ok((await gateway.refusals()).limit >= before + 4, JSON.stringify(await gateway.refusals()));
  assert.deepEqual(errors, []);
  await page.close();
});
