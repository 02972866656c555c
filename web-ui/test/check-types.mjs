// Fails when the committed API types (src/api-types.ts) differ from what
// openapi/openapi.json generates now: after changing the API, run
// `cargo run -p kcpgate -- openapi > openapi/openapi.json`, then `npm run types`,
// and commit both.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const fresh = mkdtempSync(join(tmpdir(), 'kcpgate-types-'));

try {
  const out = join(fresh, 'api-types.ts');
  execFileSync('npx', ['openapi-typescript', '../openapi/openapi.json', '-o', out], { cwd: root, stdio: 'pipe' });
  if (!readFileSync(out).equals(readFileSync(join(root, 'src', 'api-types.ts')))) {
    console.error('web-ui/src/api-types.ts differs from what openapi/openapi.json generates:');
    console.error('run (cd web-ui && npm run types) and commit web-ui/src/api-types.ts.');
    process.exit(1);
  }
  console.log('web-ui/src/api-types.ts matches openapi/openapi.json');
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
