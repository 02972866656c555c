// What a WebTransport session may cost a gateway when the page is hostile: no
// key is needed to open one, so the listener grants only what kcpgate uses. Two
// Chromium pages each try to open 50 bidirectional and 50 unidirectional streams
// and write 1.25 MB into each (what QUIC's default limits would let them buffer
// in the gateway, about 125 MB a page); the gateway must grow by less than 20 MB,
// and an honest session opened beside them still echoes.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { echoServer, launchBrowser, openDemo, startGateway } from './gateway.mjs';

/** In the page: open the streams and write into them without waiting (the
 * writes a gateway refuses to buffer simply stay pending in the page). */
async function flood({ gateway, streams, bytes }) {
  const info = await (await fetch(`${gateway}/webtransport/certificate`)).json();
  const hashes = info.hashes.map((h) => ({ algorithm: 'sha-256', value: Uint8Array.from(h.value.match(/../g).map((x) => parseInt(x, 16))) }));
  const wt = new WebTransport(info.url, { serverCertificateHashes: hashes });
  await wt.ready;
  const chunk = new Uint8Array(bytes).fill(7);
  let opened = 0;
  const write = (stream) => { opened += 1; const w = stream.getWriter(); w.write(chunk).catch(() => {}); };
  for (let i = 0; i < streams; i++) {
    wt.createBidirectionalStream().then((s) => write(s.writable), () => {});
    wt.createUnidirectionalStream().then(write, () => {});
  }
  await new Promise((r) => setTimeout(r, 4000));
  window.kept = wt; // keep the session open while the gateway is measured
  return { opened };
}

let backend;
let gateway;
let browser;

before(async () => {
  backend = await echoServer();
  gateway = await startGateway({ target: `127.0.0.1:${backend.port}` });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  backend?.close();
});

test('two pages writing 50 + 50 streams × 1.25 MB grow the gateway by less than 20 MB; an honest session beside them works', async () => {
  await new Promise((r) => setTimeout(r, 500));
  const before = await gateway.memory();
  const pages = [await browser.newPage(), await browser.newPage()];
  for (const page of pages) await page.goto(`${gateway.public}/demo/`);
  const results = await Promise.all(pages.map((page) => page.evaluate(flood, { gateway: gateway.public, streams: 50, bytes: 1_250_000 })));
  const during = await gateway.memory();
  const grown = (during.peak - before.rss) / 1e6;
  console.log(`# streams a page could open: ${results.map((r) => r.opened).join(', ')} of 100; gateway RSS ${(before.rss / 1e6).toFixed(1)} MB before, peak ${(during.peak / 1e6).toFixed(1)} MB during (+${grown.toFixed(1)} MB)`);
  assert.ok(grown < 20, `the gateway grew by ${grown.toFixed(1)} MB`);

  const { page } = await openDemo(browser, gateway, { key: gateway.key, crypt: 'aes', ds: 10, ps: 3 });
  await page.evaluate(() => window.kcpgateDemo.connect());
  const result = await page.evaluate(() => window.kcpgateDemo.bulk({ streams: 2, bytes: 256 * 1024 }));
  assert.ok(result.ok, `an honest session beside the hostile ones echoes: ${JSON.stringify(result)}`);
});
