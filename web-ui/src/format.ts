// How figures read on the dashboard: short, with units, never "NaN".

const BYTE_UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];

/** Bytes in decimal units with three significant digits: 1234 → "1.23 kB". */
export function bytes(n: number): string {
  if (!Number.isFinite(n)) return '–';
  const sign = n < 0 ? '-' : '';
  let v = Math.abs(n);
  let unit = 0;
  while (v >= 999.5 && unit < BYTE_UNITS.length - 1) {
    v /= 1000;
    unit++;
  }
  const digits = unit === 0 ? 0 : v >= 99.95 ? 0 : v >= 9.995 ? 1 : 2;
  return `${sign}${v.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

/** A byte rate: 1234 → "1.23 kB/s". */
export function byteRate(perSecond: number): string {
  return Number.isFinite(perSecond) ? `${bytes(perSecond)}/s` : '–';
}

/** A whole count with thousands separators: 1234567 → "1,234,567". */
export function count(n: number): string {
  if (!Number.isFinite(n)) return '–';
  return Math.round(n).toLocaleString('en-US');
}

/** A rate of events: one decimal below 10, none above. */
export function perSecond(n: number): string {
  if (!Number.isFinite(n)) return '–';
  return `${n < 10 ? n.toFixed(1) : count(n)}/s`;
}

/** A fraction as a percentage with one decimal: 0.0123 → "1.2 %". */
export function percent(fraction: number): string {
  if (!Number.isFinite(fraction)) return '–';
  return `${(fraction * 100).toFixed(1)} %`;
}

/** Milliseconds as a span a person reads at a glance: "850 ms", "12.5 s", "3 min 20 s", "2 h 5 min", "3 d 4 h". */
export function duration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.floor(s)} s`;
  const whole = Math.floor(s);
  const [d, h, m, sec] = [Math.floor(whole / 86400), Math.floor(whole / 3600) % 24, Math.floor(whole / 60) % 60, whole % 60];
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  return `${m} min ${sec} s`;
}

/** A moment as a 24-hour wall-clock time, "14:03:27", as the charts' axes read. */
export function clock(at: number | Date): string {
  return new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
}

/** A congestion window: "off" when it is 0, as it stays with congestion control
 * disabled (kcptun's nc=1, which every -mode preset sets). */
export function cwnd(segments: number): string {
  return segments === 0 ? 'off' : count(segments);
}

/** A round-trip time in milliseconds. */
export function millis(ms: number): string {
  return Number.isFinite(ms) ? `${Math.round(ms)} ms` : '–';
}

/** Bytes as hex pairs separated by spaces, at most `limit` bytes, "…" when cut. */
export function hex(data: Uint8Array, limit = 64): string {
  const shown = Array.from(data.subarray(0, limit), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return data.length > limit ? `${shown} …` : shown;
}
