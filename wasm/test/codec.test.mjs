// The browser module's codec against a real kcptun capture: every datagram of
// core/tests/vectors/kcptun-capture.json decodes to the recorded fields with the
// right key, builds back to the same bytes, and a wrong key is a verdict, not an
// exception. Run after wasm/build: node --test wasm/test/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { initSync, Client, Codec, deriveKey } from '../pkg/kcpgate_wasm.js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
initSync({ module: readFileSync(here('../pkg/kcpgate_wasm_bg.wasm')) });
const capture = JSON.parse(readFileSync(here('../../core/tests/vectors/kcptun-capture.json'), 'utf8'));
const crypt = JSON.parse(readFileSync(here('../../core/tests/vectors/crypt.json'), 'utf8'));

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const bytes = (text) => Uint8Array.from(Buffer.from(text, 'hex'));
const codec = new Codec({ crypt: capture.crypt, key: capture.key });

test('the key derivation is kcptun\'s', () => {
  assert.equal(hex(deriveKey(capture.key)), capture.derived_key_hex);
  assert.equal(crypt.passphrases.length, 2);
  for (const { passphrase, derived_key_hex } of crypt.passphrases) assert.equal(hex(deriveKey(passphrase)), derived_key_hex, passphrase);
});

test('every captured datagram decodes to the recorded fields', () => {
  assert.equal(capture.datagrams.length, 78);
  for (const d of capture.datagrams) {
    const seen = codec.decode(bytes(d.wire_hex));
    const at = `datagram ${d.index}`;
    assert.equal(seen.verdict, 'ok', at);
    assert.equal(seen.length, d.len, at);
    assert.equal(hex(seen.nonce), d.decrypted_nonce_hex, at);
    assert.equal(seen.crc, Number(d.crc32_field), at);
    assert.equal(seen.fec.seqid, d.fec.seqid, at);
    assert.equal(seen.fec.type, d.fec.type.startsWith('data') ? 'data' : 'parity', at);
    if ('size_field' in d.fec) {
      assert.equal(seen.fec.sizeField, d.fec.size_field, at);
      assert.equal(seen.fec.sizeMatches, true, at);
    }
    if ('parity_payload_len' in d) assert.equal(seen.fec.payloadLength, d.parity_payload_len, at);
    if (d.kcp_packet_hex !== undefined) assert.equal(hex(seen.kcp), d.kcp_packet_hex, at);
    const segments = d.segments ?? [];
    assert.equal(seen.segments.length, segments.length, at);
    segments.forEach((want, i) => {
      const got = seen.segments[i];
      for (const field of ['conv', 'cmd', 'frg', 'wnd', 'ts', 'sn', 'una', 'len']) {
        assert.equal(got[field], want[field], `${at} segment ${i} ${field}`);
      }
      assert.equal(got.offset, want.offset_in_kcp_packet, `${at} segment ${i} offset`);
      assert.equal(hex(got.data), want.data_hex ?? '', `${at} segment ${i} data`);
    });
    assert.equal(seen.segmentError, undefined, at);
  }
});

test('the snappy chunks and smux frames a segment starts are the recorded ones', () => {
  // Each direction's KCP byte stream is its PUSH data in sn order; map every
  // chunk found in a segment to its offset in that stream.
  for (const [dir, recorded] of [['c2s', capture.client_to_server], ['s2c', capture.server_to_client]]) {
    const pushes = new Map();
    for (const d of capture.datagrams.filter((d) => d.dir === dir)) {
      for (const s of codec.decode(bytes(d.wire_hex)).segments) if (s.cmd === 'PUSH' && !pushes.has(s.sn)) pushes.set(s.sn, s);
    }
    let offset = 0;
    const chunks = new Map(recorded.snappy_chunks.map((c) => [c.offset, c]));
    const frames = recorded.smux_frames.map((f) => `${f.cmd}/${f.sid}/${f.length}`);
    let checkedChunks = 0;
    let checkedFrames = 0;
    for (const sn of [...pushes.keys()].sort((a, b) => a - b)) {
      const s = pushes.get(sn);
      for (const c of s.snappy ?? []) {
        const want = chunks.get(offset + c.offset);
        assert.ok(want, `${dir} sn ${sn}: a chunk at stream offset ${offset + c.offset} was recorded`);
        assert.equal(c.length, want.body_len, `${dir} sn ${sn}: chunk length`);
        assert.ok(want.type.includes(c.type), `${dir} sn ${sn}: ${c.type} vs ${want.type}`);
        if (c.complete && c.type !== 'identifier') assert.equal(c.crcOk, true, `${dir} sn ${sn}: chunk CRC`);
        for (const f of c.smux) {
          assert.ok(frames.includes(`${f.cmd}/${f.sid}/${f.length}`), `${dir} sn ${sn}: frame ${f.cmd} ${f.sid} ${f.length}`);
          checkedFrames++;
        }
        checkedChunks++;
      }
      // The server writes a chunk's header and its body apart, so a segment may
      // start with the smux frame inside an uncompressed chunk.
      for (const f of s.smux ?? []) {
        assert.ok(frames.includes(`${f.cmd}/${f.sid}/${f.length}`), `${dir} sn ${sn}: frame ${f.cmd} ${f.sid} ${f.length}`);
        checkedFrames++;
      }
      offset += s.len;
    }
    assert.equal(offset, recorded.kcp_stream_len, `${dir}: the PUSH data make up the recorded stream`);
    assert.ok(checkedChunks >= 2 && checkedFrames >= 2, `${dir}: ${checkedChunks} chunks, ${checkedFrames} frames checked`);
  }
});

test('every captured datagram builds back to its wire bytes', () => {
  for (const d of capture.datagrams) {
    const seen = codec.decode(bytes(d.wire_hex));
    const fields = { nonce: seen.nonce, fec: { seqid: seen.fec.seqid, type: seen.fec.type } };
    if (seen.fec.type === 'parity') {
      fields.parity = seen.parity;
    } else {
      fields.segments = seen.segments.map(({ conv, cmd, frg, wnd, ts, sn, una, data }) => ({ conv, cmd, frg, wnd, ts, sn, una, data }));
    }
    assert.equal(hex(codec.encode(fields)), d.wire_hex, `datagram ${d.index} (${seen.fec.type})`);
  }
});

test('a wrong key or a corrupt datagram is a verdict, never an exception', () => {
  const wrong = new Codec({ crypt: capture.crypt, key: 'not the key' });
  for (const d of capture.datagrams) {
    const seen = wrong.decode(bytes(d.wire_hex));
    assert.equal(seen.verdict, 'checksum', `datagram ${d.index}`);
    assert.match(seen.error, /wrong key/);
    assert.deepEqual(seen.segments, []);
  }
  const wire = bytes(capture.datagrams[0].wire_hex);
  for (let len = 0; len <= wire.length; len++) {
    const seen = codec.decode(wire.subarray(0, len));
    assert.ok(['ok', 'checksum', 'too-short'].includes(seen.verdict));
  }
  for (let i = 0; i < wire.length; i++) {
    const bad = wire.slice();
    bad[i] ^= 0x40;
    assert.equal(codec.decode(bad).verdict, 'checksum', `byte ${i} flipped`);
  }
  // Without crypto nothing hides a malformed datagram: it is reported, not thrown.
  const plain = new Codec({ crypt: 'null', key: '' });
  const forged = plain.encode({ segments: [{ conv: 1, cmd: 'PUSH', sn: 0, data: new Uint8Array(40) }] });
  const truncated = plain.decode(forged.subarray(0, forged.length - 10));
  assert.equal(truncated.verdict, 'ok');
  assert.match(truncated.segmentError, /length exceeds/);
  assert.equal(plain.decode(new Uint8Array(5)).runt, true);
});

test('bad options are refused with a TypeError that names them', () => {
  assert.throws(() => new Codec({ crypt: 'aes-512', key: 'k' }), { name: 'TypeError', message: /crypt/ });
  assert.throws(() => new Codec({ crypt: 'aes' }), { name: 'TypeError', message: /key/ });
  assert.throws(() => codec.encode({ segments: [{ conv: -1, cmd: 'PUSH' }] }), { name: 'TypeError', message: /conv/ });
  assert.throws(() => codec.encode({ segments: [{ conv: 1, cmd: 'JUMP' }] }), { name: 'TypeError', message: /cmd/ });
  assert.throws(() => codec.encode({ nonce: new Uint8Array(3) }), { name: 'TypeError', message: /nonce/ });
});

test("a client's numbers are checked against the gateway's table before any connection", async () => {
  // The same ranges and words as the gateway's flags (kcpgate server -sndwnd 0).
  const refused = [
    [{ sndwnd: 0 }, 'option `sndwnd`: sndwnd must be between 1 and 65535 segments (got 0)'],
    [{ keepAlive: 0 }, 'option `keepAlive`: keepalive must be between 1 and 30 seconds (got 0)'],
    [{ keepAlive: 31 }, 'option `keepAlive`: keepalive must be between 1 and 30 seconds (got 31)'],
    [{ dataShards: 256 }, 'option `dataShards`: datashard must be between 0 and 255 shards (got 256)'],
    [{ mtu: 1501 }, 'option `mtu`: mtu must be between 1 and 1500 bytes (got 1501)'],
    [{ smuxVersion: 3 }, 'option `smuxVersion`: smuxver must be between 1 and 2 (got 3)'],
    [{ rcvwnd: 1.5 }, 'option `rcvwnd`: must be a whole number'],
    [{ mtu: 40 }, /^options: MTU 40 is too small/],
    [{ dataShards: 200, parityShards: 100 }, /^options: datashard and parityshard must add up to at most 255/],
  ];
  for (const [options, message] of refused) {
    await assert.rejects(Client.connect('https://127.0.0.1:1/', { key: 'k', ...options }), { name: 'TypeError', message });
  }
});

test('the module stays under 300 KB gzipped', () => {
  const wasm = readFileSync(here('../pkg/kcpgate_wasm_bg.wasm'));
  const zipped = gzipSync(wasm, { level: 9 }).length;
  assert.ok(zipped < 300_000, `${zipped} bytes gzipped`);
});
