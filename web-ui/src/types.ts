// The admin API's objects, as far as the dashboard reads them (openapi/openapi.json has all).

export type TransportKind = 'udp' | 'webtransport';

export interface TransportStats {
  transport: TransportKind;
  sessions_open: number;
  sessions_opened: number;
  bytes_in: number;
  bytes_out: number;
  packets_in: number;
  packets_out: number;
  segments_out: number;
  retrans_segs: number;
  lost_segs: number;
  fec_recovered: number;
}

export interface Stats {
  sessions: { open: number; refused_datagrams: number };
  streams: { open: number; opened: number; closed: number; dial_failures: number; tcp_failures: number };
  process: { version: string; role: string; uptime_seconds: number; rss_bytes: number; cpu_seconds: number };
  transports: TransportStats[];
}

export interface StreamInfo {
  id: number;
  tcp_peer: string | null;
  bytes_to_tcp: number;
  bytes_from_tcp: number;
  age_ms: number;
}

export interface SessionInfo {
  id: number;
  conv: number;
  remote: string;
  local: string;
  transport: TransportKind;
  age_ms: number;
  idle_ms: number;
  framing: 'streams' | 'messages';
  smux_version: number | null;
  crypt: string;
  fec: { data: number; parity: number } | null;
  mode: string;
  kcp: {
    mtu: number;
    srtt_ms: number;
    rttvar_ms: number;
    rto_ms: number;
    cwnd: number;
    ssthresh: number;
    snd_wnd: number;
    rcv_wnd: number;
    remote_wnd: number;
    in_flight: number;
    snd_queue: number;
    rcv_queue: number;
    rcv_buf: number;
    dead: boolean;
  };
  traffic: {
    bytes_in: number;
    bytes_out: number;
    packets_in: number;
    packets_out: number;
    retrans: number;
    fast_retrans: number;
    early_retrans: number;
    lost: number;
    fec_recovered: number;
    fec_errors: number;
  };
  streams: StreamInfo[];
}

export interface SessionPage {
  total: number;
  offset: number;
  limit: number;
  sessions: SessionInfo[];
}

export type SessionEvent =
  | { type: 'session_opened'; id: number; conv: number; remote: string; transport: TransportKind }
  | { type: 'session_closed'; id: number; conv: number; remote: string; reason: string; transport: TransportKind };

export interface Tunables {
  mode: string;
  nodelay: boolean;
  interval: number;
  resend: number;
  nc: boolean;
  sndwnd: number;
  rcvwnd: number;
  ratelimit: number;
  max_sessions: number;
}

export interface ListenerConfig {
  name: string;
  transport: string;
  tunables: Tunables;
  [setting: string]: unknown;
}

export interface RunningConfig {
  role: string;
  process: Record<string, unknown>;
  listeners: ListenerConfig[];
  tunables: Tunables;
}

export interface CaptureResult {
  session: SessionInfo;
  complete: boolean;
  datagrams: { direction: 'in' | 'out'; at_us: number; data: string }[];
}
