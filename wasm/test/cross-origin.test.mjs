// A game page on its own site, as players get it: served by a small HTTP server
// of its own (another origin than any of the gateway's), it fetches the
// WebTransport address and certificate hashes from the gateway's public
// listener, imports the browser module from there, connects and echoes 1 MiB
// byte for byte. A page of an origin the gateway does not allow is refused by
// CORS and by the WebTransport listener, and the admin API is not reachable
// through the public listener. In headless Chromium (Playwright) and Firefox
// (Puppeteer over WebDriver BiDi).
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { echoServer, freePort, launchBrowser, launchFirefox, startGateway } from './gateway.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>a game</title>
<link rel="icon" href="data:,"></head><body><p>A game on its own site.</p></body></html>`;

/** A site of its own: serves PAGE at / on 127.0.0.1 (another origin than the gateway's). */
async function gameSite() {
  const server = createServer((request, response) => {
    response.writeHead(request.url === '/' ? 200 : 404, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(request.url === '/' ? PAGE : 'not found');
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** What the page does: everything from the gateway's public listener at `gateway`. */
async function echoMiB({ gateway, key }) {
  const out = { steps: [] };
  try {
    const info = await (await fetch(`${gateway}/webtransport/certificate`)).json();
    out.steps.push('hashes');
    const { default: init, Client } = await import(`${gateway}/module/kcpgate_wasm.js`);
    await init();
    out.steps.push('module');
    const client = await Client.connect(info.url, {
      key, crypt: 'aes', dataShards: 10, parityShards: 3, certificateHashes: info.hashes.map((h) => h.value),
    });
    out.steps.push('connected');
    const size = 1 << 20;
    const sent = Uint8Array.from({ length: size }, (_, i) => (i * 31 + (i >> 10)) & 0xff);
    const stream = client.openStream();
    const writing = (async () => {
      for (let at = 0; at < size; at += 16384) await stream.write(sent.subarray(at, at + 16384));
    })();
    const back = new Uint8Array(size);
    let got = 0;
    while (got < size) {
      const chunk = await stream.read();
      if (chunk === null || chunk === undefined || chunk.length === 0) break;
      back.set(chunk.subarray(0, size - got), got);
      got += chunk.length;
    }
    await writing;
    out.bytes = got;
    out.same = got === size && back.every((b, i) => b === sent[i]);
    client.close();
  } catch (e) {
    out.error = `${e.name}: ${e.message}`;
  }
  return out;
}

/** What a page of an origin the gateway does not allow meets: the fetch, and a
 * WebTransport session with hashes it got elsewhere. */
async function refusedPage({ gateway, url, hashes }) {
  const out = {};
  try {
    await fetch(`${gateway}/webtransport/certificate`);
    out.fetch = 'allowed';
  } catch (e) {
    out.fetch = `${e.name}: ${e.message}`;
  }
  try {
    const wt = new WebTransport(url, { serverCertificateHashes: hashes.map((h) => ({ algorithm: 'sha-256', value: Uint8Array.from(h.match(/../g).map((x) => parseInt(x, 16))) })) });
    await wt.ready;
    out.webtransport = 'opened';
    wt.close();
  } catch (e) {
    out.webtransport = `${e.name}: ${e.message}`;
  }
  return out;
}

const BROWSERS = [
  { name: 'Chromium', launch: launchBrowser },
  { name: 'Firefox', launch: launchFirefox },
];

for (const { name, launch } of BROWSERS) {
  describe(`a game page on its own site, in ${name}`, () => {
    let echo;
    let open;
    let strict;
    let site;
    let browser;
    before(async () => {
      echo = await echoServer();
      site = await gameSite();
      open = await startGateway({ target: `127.0.0.1:${echo.port}` });
      strict = await startGateway({ target: `127.0.0.1:${echo.port}`, args: ['--webtransport-origin', 'https://game.example'] });
      browser = await launch();
    });
    after(async () => {
      await browser?.close();
      await open?.stop();
      await strict?.stop();
      await site?.close();
      await echo?.close();
    });

    test('fetches the hashes from the public listener, connects over WebTransport and echoes 1 MiB byte for byte', async () => {
      const page = await browser.newPage();
      await page.goto(`${site.origin}/`);
      const result = await page.evaluate(echoMiB, { gateway: open.public, key: open.key });
      await page.close();
      console.log(`${name}: ${JSON.stringify(result)}`);
      assert.equal(result.error, undefined, JSON.stringify(result));
      assert.equal(result.bytes, 1 << 20);
      assert.ok(result.same, 'every byte came back');
      const { sessions } = await open.api('/api/v1/sessions');
      assert.ok(sessions.length <= 1, 'the page closed its session');
    });

    test('a page of an origin not allowed is refused by CORS and by the WebTransport listener', async () => {
      const info = await (await fetch(`${strict.public}/webtransport/certificate`, { headers: { Origin: 'https://game.example' } })).json();
      const before = (await strict.refusals()).origin ?? 0;
      const page = await browser.newPage();
      await page.goto(`${site.origin}/`);
      const result = await page.evaluate(refusedPage, { gateway: strict.public, url: info.url, hashes: info.hashes.map((h) => h.value) });
      await page.close();
      console.log(`${name}: ${JSON.stringify(result)}`);
      assert.notEqual(result.fetch, 'allowed', 'CORS refuses the fetch');
      assert.notEqual(result.webtransport, 'opened', 'the WebTransport listener refuses the session');
      assert.equal((await strict.refusals()).origin, before + 1, 'the refusal is counted by its reason');
    });

    test('the demo page from the public listener connects and echoes on two streams', async () => {
      const page = await browser.newPage();
      await page.goto(`${open.public}/demo/?key=${open.key}&crypt=aes&ds=10&ps=3`);
      await page.waitForFunction(() => window.kcpgateDemo);
      await page.evaluate(() => window.kcpgateDemo.connect());
      const status = await page.evaluate(() => [window.kcpgateDemo.state.status, window.kcpgateDemo.state.lastError]);
      const bulk = await page.evaluate(() => window.kcpgateDemo.bulk({ streams: 2, bytes: 256 << 10 }));
      await page.evaluate(() => window.kcpgateDemo.disconnect());
      await page.close();
      console.log(`${name}: demo ${JSON.stringify(status)}, bulk ok: ${bulk.ok}`);
      assert.equal(status[1], null, status[1]);
      assert.ok(bulk.ok, JSON.stringify(bulk));
    });

    test('the admin API is not reachable through the public listener', async () => {
      const page = await browser.newPage();
      await page.goto(`${site.origin}/`);
      const statuses = await page.evaluate(async (gateway) => {
        const out = {};
        for (const path of ['/api/v1/sessions', '/api/v1/config', '/metrics', '/']) {
          out[path] = (await fetch(`${gateway}${path}`)).status;
        }
        return out;
      }, open.public);
      await page.close();
      assert.deepEqual(statuses, { '/api/v1/sessions': 404, '/api/v1/config': 404, '/metrics': 404, '/': 404 });
    });
  });
}
