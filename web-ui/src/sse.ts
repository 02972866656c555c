/** One Server-Sent Event. */
export interface SseEvent {
  event: string;
  data: string;
}

/**
 * Parses a Server-Sent Events stream fed in arbitrary pieces (as a streaming
 * `fetch` delivers it): lines end in LF, CRLF or CR; an event ends at a blank
 * line; `event:` names it, `data:` lines are joined with LF, comments (`:`) and
 * unknown fields are ignored.
 */
export class SseParser {
  private buffer = '';
  private name = '';
  private data: string[] = [];
  private pendingCr = false;

  /** Feeds text and returns the events it completed. */
  push(text: string): SseEvent[] {
    const events: SseEvent[] = [];
    if (this.pendingCr && text.startsWith('\n')) text = text.slice(1);
    this.pendingCr = false;
    this.buffer += text;
    for (;;) {
      const end = this.buffer.search(/[\r\n]/);
      if (end < 0) break;
      // A CR at the very end may be the first half of a CRLF split across pieces.
      if (this.buffer[end] === '\r' && end === this.buffer.length - 1) {
        this.pendingCr = true;
      }
      const line = this.buffer.slice(0, end);
      const skip = this.buffer[end] === '\r' && this.buffer[end + 1] === '\n' ? 2 : 1;
      this.buffer = this.buffer.slice(end + skip);
      this.line(line, events);
    }
    return events;
  }

  private line(line: string, events: SseEvent[]): void {
    if (line === '') {
      if (this.data.length > 0) events.push({ event: this.name || 'message', data: this.data.join('\n') });
      this.name = '';
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.name = value;
    else if (field === 'data') this.data.push(value);
  }
}
