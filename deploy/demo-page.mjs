// Loads the browser demo page from a gateway's public listener in headless
// Chromium, connects with `key`, sends 1 MiB on 2 streams (each echo checked by
// SHA-256) and prints the outcome as JSON; exits 1 if anything failed.
// Usage: node deploy/demo-page.mjs http://127.0.0.1:8090 KEY
import { launchBrowser } from '../wasm/test/gateway.mjs';

const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error('usage: node deploy/demo-page.mjs PUBLIC_URL KEY');
  process.exit(2);
}
const browser = await launchBrowser();
let outcome;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/demo/?${new URLSearchParams({ key, crypt: 'aes', ds: 10, ps: 3, mode: 'fast3' })}`);
  await page.waitForFunction(() => window.kcpgateDemo);
  await page.evaluate(() => window.kcpgateDemo.connect());
  const state = await page.evaluate(() => ({ ...window.kcpgateDemo.state, client: undefined }));
  const bulk = state.lastError ? null : await page.evaluate(() => window.kcpgateDemo.bulk({ streams: 2, bytes: 512 << 10 }));
  outcome = { status: state.status, error: state.lastError, bulk, errors };
} finally {
  await browser.close();
}
console.log(JSON.stringify(outcome));
process.exit(outcome.bulk?.ok && outcome.errors.length === 0 ? 0 : 1);
