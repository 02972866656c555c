import { defineConfig } from 'vitest/config';

// The gateway embeds dist/ and serves it at /; the API is on the same origin.
export default defineConfig({
  base: '/',
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, target: 'es2022', modulePreload: { polyfill: false } },
  test: { include: ['test/unit/**/*.test.ts'] },
  server: { proxy: { '/api': 'http://127.0.0.1:8080', '/auth': 'http://127.0.0.1:8080', '/demo': 'http://127.0.0.1:8080', '/openapi.json': 'http://127.0.0.1:8080' } },
});
