// Fails when the committed build (dist/, which kcpgate embeds) differs from what
// the sources build now: after changing src/, run `npm run build` and commit dist/.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const fresh = mkdtempSync(join(tmpdir(), 'kcpgate-dist-'));

function files(dir) {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

try {
  execFileSync('npx', ['vite', 'build', '--logLevel', 'warn', '--outDir', fresh, '--emptyOutDir'], { cwd: root, stdio: 'inherit' });
  const [committed, built] = [files(join(root, 'dist')), files(fresh)];
  const differ = [...new Set([...committed, ...built])].filter(
    (f) => !committed.includes(f) || !built.includes(f) || !readFileSync(join(root, 'dist', f)).equals(readFileSync(join(fresh, f))),
  );
  if (differ.length > 0) {
    console.error(`web-ui/dist differs from what web-ui/src builds (${differ.join(', ')}):`);
    console.error('run (cd web-ui && npm run build) and commit web-ui/dist, which kcpgate embeds.');
    process.exit(1);
  }
  console.log(`web-ui/dist matches the sources (${committed.length} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
