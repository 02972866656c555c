// The dashboard with 2,000 sessions open: a sort and a filter, each timed from
// the click or the typing to the rows on screen.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, test } from 'node:test';

import { SHOTS, TOKEN, api, echoServer, gatewayWithToken, launchBrowser, openDashboard, parseBytes, tunnelClient, until } from './support.mjs';

const SESSIONS = Number(process.env.KCPGATE_DASHBOARD_SESSIONS ?? 2000);

let echo, gateway, client, browser, dash;

/** One connection through the tunnel: a byte there and back, then closed; its session stays. */
function touch(port, byte) {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.write(Buffer.from([byte])));
    s.setTimeout(20_000, () => s.destroy(new Error('no echo in 20 s')));
    s.once('data', (d) => {
      s.end();
      if (d[0] === byte) resolve();
      else reject(new Error('the echo came back different'));
    });
    s.once('error', reject);
  });
}

before(async () => {
  echo = await echoServer();
  // Every session comes from 127.0.0.1: lift the per-source rate.
  gateway = await gatewayWithToken(`127.0.0.1:${echo.port}`, ['--max-sessions', String(SESSIONS + 100), '--open-rate-per-source', '0', '--open-rate', '0']);
  // One kcpgate client with a session per connection, round-robin: SESSIONS connections open SESSIONS sessions.
  client = await tunnelClient('kcpgate', gateway, ['-conn', String(SESSIONS), '-mode', 'normal']);
  await until('the client listening', () => touch(client.port, 0).then(() => true, () => false));
  const started = Date.now();
  for (let i = 1; i < SESSIONS; i += 100) {
    await Promise.all(Array.from({ length: Math.min(100, SESSIONS - i) }, (_, j) => touch(client.port, (i + j) & 0xff)));
  }
  await until(`${SESSIONS} sessions`, async () => (await api(gateway, '/api/v1/stats')).sessions.open >= SESSIONS, 30_000);
  console.log(`# ${SESSIONS} sessions opened in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  browser = await launchBrowser();
  dash = await openDashboard(browser, gateway);
});

after(async () => {
  await browser?.close();
  await client?.stop();
  await gateway?.stop();
  await echo?.close();
});

/** Runs `act` in the page and times it until the table shows a new query, painted. */
async function timed(page, act) {
  return page.evaluate(async (act) => {
    const table = document.querySelector('table.sessions');
    const before = table.dataset.query;
    const t0 = performance.now();
    if (act.sort) document.querySelector(`button.sort[data-sort="${act.sort}"]`).click();
    if (act.filter !== undefined) {
      const input = document.getElementById('session-filter');
      input.value = act.filter;
      input.dispatchEvent(new Event('input', { bubbles: true }));
    }
    await new Promise((resolve) => {
      const check = () => (table.dataset.query !== before ? resolve() : requestAnimationFrame(check));
      check();
    });
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0))); // painted
    return performance.now() - t0;
  }, act);
}

test(`with ${SESSIONS} sessions, a sort and a filter each finish under 200 ms`, async () => {
  const { page, problems } = dash;
  await page.goto(`${gateway.base}/#/sessions`);
  await until('the first page', async () => (await page.locator('table.sessions').getAttribute('data-total')) >= String(SESSIONS));
  assert.equal(await page.locator('table.sessions tbody tr').count(), 50, 'one page of rows, not all of them');
  assert.match(await page.locator('#session-status').textContent(), new RegExp(`^Sessions 1–50 of ${SESSIONS.toLocaleString('en-US')}`));

  const sorts = [];
  for (let i = 0; i < 5; i++) {
    sorts.push(await timed(page, { sort: 'bytes_in' })); // toggles descending and ascending
  }
  const order = await page.locator('table.sessions').getAttribute('data-query');
  const values = (await page.locator('table.sessions tbody td:nth-child(8)').allTextContents()).map(parseBytes);
  const sorted = [...values].sort((a, b) => (order.includes('order=desc') ? b - a : a - b));
  assert.deepEqual(values, sorted, `rows sorted by bytes in (${order})`);

  const filters = [];
  for (const text of ['127.0.0.1:3', '127.0.0.1:5', '127.0.0.1:', '127.0.0.1:6', '127.0.0.1:4']) {
    filters.push(await timed(page, { filter: text }));
  }
  const status = await page.locator('#session-status').textContent();
  const { total } = await api(gateway, `/api/v1/sessions?remote=${encodeURIComponent('127.0.0.1:4')}&limit=1`);
  assert.ok(total > 0 && total < SESSIONS, `the filter matches some sessions (${total})`);
  assert.ok(status.includes(`of ${total.toLocaleString('en-US')} whose remote address contains “127.0.0.1:4”`), status);
  for (const remote of await page.locator('table.sessions tbody td:nth-child(2)').allTextContents()) {
    assert.ok(remote.includes('127.0.0.1:4'), remote);
  }
  await page.screenshot({ path: `${SHOTS}/sessions-2000.png`, fullPage: true });

  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const show = (xs) => xs.map((x) => x.toFixed(0)).join(', ');
  console.log(`# sort ms: ${show(sorts)} (median ${median(sorts).toFixed(0)}); filter ms: ${show(filters)} (median ${median(filters).toFixed(0)})`);
  assert.ok(Math.max(...sorts) < 200, `every sort under 200 ms: ${show(sorts)}`);
  assert.ok(Math.max(...filters) < 200, `every filter under 200 ms: ${show(filters)}`);
  assert.deepEqual(problems, []);
});

test('the event stream does not grow with the session count', async () => {
  const response = await fetch(`${gateway.base}/api/v1/events?interval_ms=100`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const reader = response.body.getReader();
  let text = '';
  while (!/event: stats\ndata: .*\n\n/.test(text)) text += new TextDecoder().decode((await reader.read()).value);
  await reader.cancel();
  const stats = /event: stats\ndata: (.*)\n\n/.exec(text)[1];
  assert.ok(JSON.parse(stats).sessions.open >= SESSIONS);
  // Counters and one entry per transport: the same size at 2 sessions or 10,000.
  assert.ok(stats.length < 3000, `a stats event is ${stats.length} bytes`);
  console.log(`# a stats event with ${SESSIONS} sessions open: ${stats.length} bytes`);
});
