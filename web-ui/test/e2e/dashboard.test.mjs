// The dashboard in headless Chromium against a real gateway, with Debian's kcptun
// and kcpgate clients pushing traffic through it.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  KEY, SHOTS, TOKEN, api, echoServer, gatewayWithToken, launchBrowser, openDashboard, parseBytes, pusher, tunnelClient, until,
} from './support.mjs';

let echo, gateway, browser, kcptun, kcpgate, viaKcptun, viaKcpgate, dash;

before(async () => {
  echo = await echoServer();
  gateway = await gatewayWithToken(`127.0.0.1:${echo.port}`);
  kcptun = await tunnelClient('kcptun', gateway);
  kcpgate = await tunnelClient('kcpgate', gateway);
  viaKcptun = await pusher(kcptun.port, 1);
  viaKcpgate = await pusher(kcpgate.port, 2);
  browser = await launchBrowser();
  dash = await openDashboard(browser, gateway);
});

after(async () => {
  viaKcptun?.stop();
  viaKcpgate?.stop();
  await browser?.close();
  await kcptun?.stop();
  await kcpgate?.stop();
  await gateway?.stop();
  await echo?.close();
});

/** The sessions API's view of the two clients: [kcptun's (smux v1), kcpgate's (v2)]. */
async function clientSessions() {
  const { sessions } = await api(gateway, '/api/v1/sessions');
  const v1 = sessions.find((s) => s.smux_version === 1);
  const v2 = sessions.find((s) => s.smux_version === 2);
  return v1 && v2 ? [v1, v2] : null;
}

test('the overview charts the live traffic', async () => {
  const { page } = dash;
  await until('two sessions on the overview', async () => (await page.locator('[data-card="sessions"]').textContent()) === '2');
  assert.equal(await page.locator('[data-card-detail="sessions"]').textContent(), '2 UDP · 0 WebTransport');
  await until('a byte rate', async () => /B\/s$/.test(await page.locator('[data-card="in"]').textContent()));
  assert.equal(await page.locator('figure.chart canvas').count(), 4, 'four charts');
  await page.waitForTimeout(3000); // a few seconds of history on the charts
  await page.screenshot({ path: `${SHOTS}/overview.png`, fullPage: true });
});

test('rows appear for both clients and their byte counts rise', async () => {
  const { page } = dash;
  await page.goto(`${gateway.base}/#/sessions`);
  const [v1, v2] = await until('both clients in the API', clientSessions);
  const rows = page.locator('table.sessions tbody tr');
  await until('two rows', async () => (await rows.count()) === 2);
  const bytesIn = async (id) => parseBytes(await page.locator(`tr[data-session="${id}"] td:nth-child(8)`).textContent());
  const first = [await bytesIn(v1.id), await bytesIn(v2.id)];
  await until('rising byte counts in both rows', async () => (await bytesIn(v1.id)) > first[0] && (await bytesIn(v2.id)) > first[1], 10_000);
  const remote = await page.locator(`tr[data-session="${v1.id}"] td:nth-child(2)`).textContent();
  assert.equal(remote, v1.remote);
  await page.screenshot({ path: `${SHOTS}/sessions.png`, fullPage: true });
});

test('the detail view shows the KCP state, draws its charts and lists the backend', async () => {
  const { page } = dash;
  const [v1] = await clientSessions();
  await page.locator(`tr[data-session="${v1.id}"] a`).click();
  await page.locator('h1', { hasText: `Session ${v1.id}` }).waitFor();
  await until('the SRTT', async () => /ms$/.test(await page.locator('[data-field="srtt"]').textContent()));
  assert.equal(await page.locator('[data-field="crypt"]').textContent(), 'aes');
  assert.equal(await page.locator('[data-field="fec"]').textContent(), '10 data + 3 parity');
  assert.match(await page.locator('[data-field="framing"]').textContent(), /smux v1/);
  await until('the backend of its stream', async () => (await page.locator('table.streams tbody').textContent()).includes(`127.0.0.1:${echo.port}`));
  await page.waitForTimeout(4000); // four samples a chart
  // Each chart drew lines: its canvas has pixels of a series colour, not only the background and grid.
  const drawn = await page.evaluate(() =>
    Array.from(document.querySelectorAll('figure.chart canvas'), (canvas) => {
      const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
      let coloured = 0;
      for (let i = 0; i < data.length; i += 4) {
        const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 80) coloured++;
      }
      return coloured;
    }));
  assert.equal(drawn.length, 3, 'three charts');
  for (const [i, pixels] of drawn.entries()) assert.ok(pixels > 50, `chart ${i} drew its lines (${pixels} coloured pixels)`);
  await page.screenshot({ path: `${SHOTS}/detail.png`, fullPage: true });
});

test('the inspector decodes captured packets of a live aes session and shows its smux frames', async () => {
  const { page } = dash;
  const [, v2] = await clientSessions();
  const sent = [];
  page.on('request', (r) => sent.push(`${r.url()} ${r.postData() ?? ''}`));
  await page.goto(`${gateway.base}/#/inspector/${v2.id}`);
  await page.getByLabel('Key (-key)').fill(KEY);
  await page.getByLabel('Datagrams', { exact: true }).fill('60');
  await page.getByRole('button', { name: 'Capture and decode' }).click();
  await until('decoded datagrams', async () => /decrypted/.test(await page.locator('#inspect-status').textContent()), 15_000);
  const status = await page.locator('#inspect-status').textContent();
  assert.match(status, /^60 datagrams of session \d+ \(\d+ in, \d+ out, aes, FEC 10\/3\): 60 decrypted/, status);
  const verdicts = await page.locator('table.inspector td.verdict').allTextContents();
  assert.deepEqual([...new Set(verdicts)], ['ok']);
  const frames = (await page.locator('table.inspector td.smux').allTextContents()).filter((t) => t !== '–');
  assert.ok(frames.some((t) => /PSH sid \d+ len \d+/.test(t)), `smux frames shown: ${frames.slice(0, 5)}`);
  await page.locator('table.inspector tbody tr').first().getByRole('button').click();
  await page.locator('#inspect-detail h2').waitFor();
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: `${SHOTS}/inspector.png` });
  // A wrong key decodes nothing, and says so.
  await page.getByLabel('Key (-key)').fill('not-the-key');
  await page.getByLabel('Datagrams', { exact: true }).fill('10');
  await page.getByRole('button', { name: 'Capture and decode' }).click();
  await until('the wrong key noticed', async () => /None decrypted: check the key/.test(await page.locator('#inspect-status').textContent()), 15_000);
  assert.ok(sent.length > 0 && !sent.some((s) => s.includes(KEY) || s.includes('not-the-key')), 'the key never left the page');
});

test('a bad tunable shows the API\'s error on its field, a good one is saved', async () => {
  const { page } = dash;
  await page.goto(`${gateway.base}/#/config`);
  const sndwnd = page.getByLabel('sndwnd');
  await until('the form filled', async () => (await sndwnd.inputValue()) === '1024');
  await sndwnd.fill('0');
  await page.getByLabel('rcvwnd').fill('big');
  await page.getByRole('button', { name: 'Apply to new sessions' }).click();
  const sndError = page.locator('#tunable-sndwnd-error');
  await until('the field errors', async () => (await sndError.textContent()) !== '');
  assert.equal(await sndError.textContent(), 'sndwnd must be between 1 and 65535 segments (got 0)', 'the settings table\'s words');
  assert.match(await page.locator('#tunable-rcvwnd-error').textContent(), /big/);
  assert.equal(await sndwnd.getAttribute('aria-invalid'), 'true');
  assert.equal(await page.locator('#tunable-interval-error').textContent(), '', 'only the wrong fields are marked');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: `${SHOTS}/config.png`, fullPage: true });
  assert.equal((await api(gateway, '/api/v1/config')).tunables.sndwnd, 1024, 'nothing changed');
  await sndwnd.fill('512');
  await page.getByLabel('rcvwnd').fill('1024');
  await page.getByRole('button', { name: 'Apply to new sessions' }).click();
  await until('saved', async () => /^Saved sndwnd/.test(await page.locator('#config-status').textContent()));
  assert.equal((await api(gateway, '/api/v1/config')).tunables.sndwnd, 512);
});

test('a kick, confirmed, removes the session and its client notices', async () => {
  const { page } = dash;
  const [, v2] = await clientSessions();
  await page.goto(`${gateway.base}/#/sessions`);
  const row = page.locator(`tr[data-session="${v2.id}"]`);
  await row.waitFor();
  await row.getByRole('button', { name: `Kick session ${v2.id}` }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByLabel(/Reason/).fill('dashboard test');
  await dialog.getByRole('button', { name: 'Kick' }).click();
  const kickedAt = Date.now();
  await row.waitFor({ state: 'detached', timeout: 5000 });
  await Promise.race([viaKcpgate.ended, new Promise((_, reject) => setTimeout(() => reject(new Error('the client never noticed the kick')), 5000))]);
  assert.ok(viaKcpgate.state.ended - kickedAt < 5000, 'the client\'s connection ended within 5 s');
  assert.equal(viaKcpgate.state.mismatch, null, 'every byte before the kick came back right');
  const { sessions } = await api(gateway, '/api/v1/sessions');
  assert.ok(!sessions.some((s) => s.id === v2.id), 'gone from the API');
  assert.equal(viaKcptun.state.mismatch, null);
  assert.ok(viaKcptun.state.received > 0, 'the other client carries on');
});

test('dark, at phone width: readable without sideways scrolling', async () => {
  const phone = await openDashboard(browser, gateway, { width: 390, height: 844, colorScheme: 'dark' });
  const { page } = phone;
  await until('the overview at phone width', async () => (await page.locator('[data-card="sessions"]').textContent()) !== '–');
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than the phone`);
  await page.screenshot({ path: `${SHOTS}/overview-phone-dark.png`, fullPage: true });
  await page.goto(`${gateway.base}/#/sessions`);
  await page.locator('table.sessions tbody tr').first().waitFor();
  assert.ok((await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)) <= 0, 'the table scrolls in its own box');
  // The Kick button is in view without scrolling the table sideways.
  const kickBox = await page.locator('table.sessions tbody tr').first().getByRole('button', { name: /^Kick session/ }).boundingBox();
  assert.ok(kickBox && kickBox.x >= 0 && kickBox.x + kickBox.width <= 390, `the Kick button at ${JSON.stringify(kickBox)}`);
  await page.screenshot({ path: `${SHOTS}/sessions-phone-dark.png` });
  // Keyboard: Tab from the top of a fresh load reaches the skip link first.
  await page.reload();
  await page.locator('table.sessions tbody tr').first().waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to the content');
  assert.deepEqual(phone.problems, []);
  await phone.context.close();
});

test('a link with the token signs in, and the token leaves the address bar', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${gateway.base}/#token=${TOKEN}`);
  await page.locator('#nav').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => location.hash), '#/');
  assert.ok(!page.url().includes(TOKEN));
  // The blank page a new tab starts with, and this one, its address replaced.
  assert.equal(await page.evaluate(() => history.length), 2, 'no history entry holds the token');
  await page.locator('[data-card="sessions"]').waitFor();
  await context.close();
});

test('the token stays out of URLs and the page reports its reconnection', async () => {
  const { page, problems } = dash;
  const urls = [];
  page.on('request', (r) => urls.push(r.url()));
  await page.goto(`${gateway.base}/#/`);
  await page.reload();
  await page.locator('#live.live').waitFor();
  assert.ok(urls.some((u) => u.includes('/api/v1/events')), 'the page reads the event stream');
  assert.ok(!urls.some((u) => u.includes(TOKEN)), 'no URL holds the token');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('kcpgate.adminToken')), TOKEN, 'kept in session storage');
  const csp = (await fetch(`${gateway.base}/`)).headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  // The gateway goes away: the page says it is reconnecting rather than freezing.
  await gateway.stop();
  await page.locator('#live.reconnecting').waitFor({ timeout: 10_000 });
  assert.match(await page.locator('#live').textContent(), /^reconnecting in .* \(attempt \d+\)$/);
  // Failed reconnections log network errors in the console; nothing else may.
  const unexpected = problems.filter((p) => !/Failed to load resource|ERR_CONNECTION_REFUSED/.test(p));
  assert.deepEqual(unexpected, []);
  gateway = null;
});
