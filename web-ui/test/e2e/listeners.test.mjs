// The Configuration view of a gateway with two listeners (`kcpgate server -config`):
// both are shown, and a change goes to the listener chosen, not the other.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { KCPGATE, SHOTS, freePort, launchBrowser, spawnReady, untilReady } from './support.mjs';

let gateway;
let browser;
let dir;
let base;

before(async () => {
  const [native, legacy, admin] = [await freePort(), await freePort(), await freePort()];
  base = `http://127.0.0.1:${admin}`;
  dir = await mkdtemp(join(tmpdir(), 'kcpgate-listeners-'));
  const file = join(dir, 'kcpgate.toml');
  await writeFile(file, [
    `admin = "127.0.0.1:${admin}"`, 'quiet = true',
    '[[listener]]', 'name = "native"', `listen = "127.0.0.1:${native}"`, 'target = "127.0.0.1:9"', 'key = "native-key"',
    '[[listener]]', 'name = "legacy"', `listen = "127.0.0.1:${legacy}"`, 'target = "127.0.0.1:9"', 'key = "legacy-key"',
    'crypt = "salsa20"', 'sndwnd = 256',
  ].join('\n'));
  gateway = spawnReady(KCPGATE, ['server', '-config', file]);
  await untilReady(gateway, base);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  gateway?.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

const config = async () => (await fetch(`${base}/api/v1/config`)).json();

test('two listeners: both are shown, and a change goes to the one chosen', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/#/config`);
  const chooser = page.getByLabel('Listener');
  await page.waitForFunction(() => document.querySelectorAll('#tunable-listener option').length === 2);
  assert.deepEqual(await chooser.locator('option').allTextContents(), ['native', 'legacy']);
  assert.equal(await page.getByLabel('sndwnd').inputValue(), '1024', "the first listener's tunables");
  await chooser.selectOption('legacy');
  assert.equal(await page.getByLabel('sndwnd').inputValue(), '256', "the chosen listener's tunables");
  const headings = await page.locator('h3').allTextContents();
  assert.deepEqual(headings, ['Process (server)', 'Listener native', 'Listener legacy']);
  await page.getByLabel('sndwnd').fill('300');
  await page.getByRole('button', { name: 'Apply to new sessions' }).click();
  await page.waitForFunction(() => /^Saved sndwnd/.test(document.querySelector('#config-status').textContent));
  const windows = (await config()).listeners.map((l) => [l.name, l.tunables.sndwnd]);
  assert.deepEqual(windows, [['native', 1024], ['legacy', 300]], 'only the chosen listener changed');
  await page.screenshot({ path: `${SHOTS}/config-listeners.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});
