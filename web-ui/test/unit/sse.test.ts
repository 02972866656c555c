import { describe, expect, it } from 'vitest';
import { SseParser } from '../../src/sse';

describe('SseParser', () => {
  it('parses named events with multi-line data', () => {
    const p = new SseParser();
    expect(p.push('event: stats\ndata: {"a":1}\n\nevent: x\ndata: one\ndata: two\n\n')).toEqual([
      { event: 'stats', data: '{"a":1}' },
      { event: 'x', data: 'one\ntwo' },
    ]);
  });

  it('completes events split anywhere, CRLF included', () => {
    const text = 'event: session_opened\r\ndata: {"id":42}\r\n\r\n: keep-alive\r\n\r\ndata: plain\r\n\r\n';
    for (let cut = 1; cut < text.length; cut++) {
      const p = new SseParser();
      const events = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
      expect(events, `cut at ${cut}`).toEqual([
        { event: 'session_opened', data: '{"id":42}' },
        { event: 'message', data: 'plain' },
      ]);
    }
  });

  it('ignores comments, unknown fields and events without data', () => {
    const p = new SseParser();
    expect(p.push(':hello\nretry: 10\nid: 4\nevent: nothing\n\n')).toEqual([]);
    expect(p.push('data:no-space\n\n')).toEqual([{ event: 'message', data: 'no-space' }]);
  });
});
