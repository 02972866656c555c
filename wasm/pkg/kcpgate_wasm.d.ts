/* tslint:disable */
/* eslint-disable */

/** Options of a {@link Codec}: the session's `-crypt` and `-key`, as kcptun takes them. */
export interface CodecOptions {
    /** kcptun's `-crypt` name (aes, aes-128, aes-192, aes-128-gcm, salsa20, blowfish, twofish, cast5, 3des, tea, xtea, xor, sm4, none, null). */
    crypt: string;
    /** kcptun's `-key` passphrase. */
    key: string;
}

/** One smux frame header found in a payload. */
export interface SmuxFrame {
    offset: number;
    version: number;
    cmd: "SYN" | "FIN" | "PSH" | "NOP" | "UPD";
    length: number;
    sid: number;
    /** Payload bytes present here; fewer than `length` when the frame continues in later segments. */
    present: number;
}

/** One snappy chunk found in a payload (kcptun compresses unless `-nocomp`). */
export interface SnappyChunk {
    offset: number;
    type: "identifier" | "compressed" | "uncompressed";
    length: number;
    complete: boolean;
    /** For a whole data chunk: whether its masked CRC-32C holds. */
    crcOk?: boolean;
    /** The smux frames a whole data chunk's data starts. */
    smux: SmuxFrame[];
}

/** One KCP segment. */
export interface Segment {
    /** Where its header starts in `Decoded.kcp`. */
    offset: number;
    conv: number;
    /** PUSH, ACK, WASK, WINS, or the raw byte when unknown. */
    cmd: "PUSH" | "ACK" | "WASK" | "WINS" | number;
    frg: number;
    wnd: number;
    ts: number;
    sn: number;
    una: number;
    len: number;
    data: Uint8Array;
    /** smux frames the payload starts (with `-nocomp`). */
    smux?: SmuxFrame[];
    /** snappy chunks the payload starts. */
    snappy?: SnappyChunk[];
}

/** A datagram taken apart. Every field but `length`, `verdict` and `segments` is absent unless `verdict` is "ok". */
export interface Decoded {
    length: number;
    /** "ok", "checksum" (wrong key or crypt, or a corrupt or forged datagram) or "too-short". */
    verdict: "ok" | "checksum" | "too-short";
    /** What a failed verdict means, in words. */
    error?: string;
    nonce?: Uint8Array;
    /** The CRC-32 field of CFB methods. */
    crc?: number;
    /** Shorter than any datagram a session takes. */
    runt?: boolean;
    fec?: {
        seqid: number;
        type: "data" | "parity" | "oob";
        /** A data shard's size field (2 + the KCP datagram's length when honest). */
        sizeField?: number;
        sizeMatches: boolean;
        payloadLength: number;
    };
    /** The bare KCP datagram (what FEC carries). */
    kcp?: Uint8Array;
    /** A parity shard's parity bytes. */
    parity?: Uint8Array;
    segments: Segment[];
    /** Why segment parsing stopped early. */
    segmentError?: string;
}

/** Fields of one segment for {@link Codec.encode}; `len` is the data's length. */
export interface SegmentFields {
    conv: number;
    cmd: "PUSH" | "ACK" | "WASK" | "WINS" | number;
    frg?: number;
    wnd?: number;
    ts?: number;
    sn?: number;
    una?: number;
    data?: Uint8Array;
}

/** What {@link Codec.encode} builds: KCP segments, or an FEC parity shard's bytes. */
export interface EncodeFields {
    segments?: SegmentFields[];
    /** FEC framing: a data shard around the segments, or a parity shard around `parity`. None: bare KCP. */
    fec?: { seqid: number; type: "data" | "parity" };
    parity?: Uint8Array;
    /** The nonce to seal with (a recorded datagram's reproduces it exactly); random when absent. */
    nonce?: Uint8Array;
}



/** Settings of a {@link Client}: kcptun's client flags, with kcptun's defaults. */
export interface ClientOptions {
    /** kcptun's `-key`. */
    key: string;
    /** kcptun's `-crypt` (default "aes"). */
    crypt?: string;
    /** SHA-256 hashes of the gateway's certificate (hex, or bytes), for a self-signed one (`serverCertificateHashes`). */
    certificateHashes?: (string | Uint8Array)[];
    /** FEC shards (default 10 and 3; 0 turns FEC off). */
    dataShards?: number;
    parityShards?: number;
    /** "normal", "fast" (default), "fast2" or "fast3". */
    mode?: string;
    /** Largest datagram (default 1350), clamped to what the browser sends (`maxDatagramSize`). */
    mtu?: number;
    /** KCP windows, segments (default 128 and 512). */
    sndwnd?: number;
    rcvwnd?: number;
    /** Acknowledge at once instead of with the next flush. */
    ackNodelay?: boolean;
    /** Turn snappy compression off (kcptun `-nocomp`; must match the gateway). */
    noComp?: boolean;
    /** smux version (default 2; Debian's kcptun speaks 1). */
    smuxVersion?: 1 | 2;
    /** smux keep-alive, seconds (default 10, 1 to 30: the gateway ends a session silent for 30 s). */
    keepAlive?: number;
    /** QPP on stream payloads (kcptun `-QPP`, `-QPPCount`, default 61 pads). */
    qpp?: boolean;
    qppCount?: number;
    /** How long `connect` waits for the gateway, ms (default 5000). */
    connectTimeout?: number;
    /** Plain KCP in message mode instead of kcptun's streams: no smux, no snappy; use `send()` and `receive()`.
     * Connect to the gateway's `/messages` path; its backend reads each message with a 4-byte big-endian length in front. */
    messages?: boolean;
}

/** A session's live figures. */
export interface ClientStats {
    conv: number;
    mtu: number;
    /** Smoothed round trip, its variation and the retransmission timeout, ms. */
    srtt: number;
    rttvar: number;
    rto: number;
    /** Congestion window and the peer's receive window, segments. */
    cwnd: number;
    remoteWindow: number;
    /** Segments sent and not yet acknowledged, and waiting to be sent. */
    inFlight: number;
    queued: number;
    retransmissions: number;
    fastRetransmissions: number;
    lostSegments: number;
    fecRecovered: number;
    fecErrors: number;
    datagramsIn: number;
    datagramsOut: number;
    bytesIn: number;
    bytesOut: number;
    /** Datagrams dropped before KCP: failed the crypto check (wrong key, forged, corrupt) or malformed. */
    droppedDatagrams: number;
    checksumFailures: number;
    streams: number;
}



/**
 * A kcptun session to kcpgate over WebTransport. See the module docs.
 */
export class Client {
    private constructor();
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Ends the session: every stream ends, the gateway is told, then the
     * WebTransport session closes.
     */
    close(): void;
    /**
     * Connects to a kcpgate WebTransport URL (`https://host:port/`). Rejects with
     * an `Error` that says what to check when the gateway refuses or does not
     * answer within `connectTimeout`; with a `TypeError` for bad options.
     */
    static connect(url: string, options: ClientOptions): Promise<Client>;
    /**
     * Opens a stream; data may be written at once.
     */
    openStream(): Stream;
    /**
     * Plain KCP (`messages: true`): the next message from the gateway's backend,
     * whole. One receive at a time.
     */
    receive(): Promise<Uint8Array>;
    /**
     * Plain KCP (`messages: true`): sends one message (at most 65,536 bytes), which
     * the gateway's backend reads with a 4-byte big-endian length in front.
     * Resolves once the session has taken it.
     */
    send(message: Uint8Array | number[]): Promise<void>;
    /**
     * The session's live figures.
     */
    stats(): ClientStats;
    /**
     * Resolves with the reason once the session is over (closed by the page,
     * by the gateway, or failed).
     */
    readonly closed: Promise<string>;
}

/**
 * Takes kcptun datagrams apart and builds them, under one `-crypt` and `-key`.
 */
export class Codec {
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Takes one datagram apart. Never throws: a wrong key or a malformed
     * datagram is reported in `verdict`, `runt` and `segmentError`. FEC framing
     * is recognised by its type field whatever the session's FEC setting, as
     * every kcptun receiver does.
     */
    decode(datagram: Uint8Array | number[]): Decoded;
    /**
     * Builds one datagram from fields; throws a `TypeError` on bad fields.
     */
    encode(fields: EncodeFields): Uint8Array;
    /**
     * A codec for `options.crypt` and `options.key`; throws a `TypeError` naming
     * the bad option.
     */
    constructor(options: CodecOptions);
    /**
     * The method's kcptun name.
     */
    readonly crypt: string;
}

/**
 * One smux stream of a {@link Client}'s session.
 */
export class Stream {
    private constructor();
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Ends the page's direction after what was written; the gateway's may go on.
     */
    finish(): Promise<void>;
    /**
     * The next bytes the gateway sent (at most 64 KiB), or `null` at the end of
     * the stream. One read at a time.
     */
    read(): Promise<Uint8Array | null>;
    /**
     * Ends the stream at once, both directions.
     */
    reset(): void;
    /**
     * Queues `data` on the stream; resolves once the session has taken all of it
     * (its windows decide when).
     */
    write(data: Uint8Array | number[]): Promise<void>;
    /**
     * The smux stream id.
     */
    readonly id: number;
}

/**
 * kcptun's key derivation: PBKDF2-HMAC-SHA1 of the passphrase, salt "kcp-go",
 * 4096 rounds, 32 bytes.
 */
export function deriveKey(passphrase: string): Uint8Array;

export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

export interface InitOutput {
    readonly memory: WebAssembly.Memory;
    readonly __wbg_client_free: (a: number, b: number) => void;
    readonly __wbg_codec_free: (a: number, b: number) => void;
    readonly __wbg_stream_free: (a: number, b: number) => void;
    readonly client_close: (a: number) => void;
    readonly client_closed: (a: number) => any;
    readonly client_connect: (a: number, b: number, c: any) => any;
    readonly client_openStream: (a: number) => [number, number, number];
    readonly client_receive: (a: number) => any;
    readonly client_send: (a: number, b: number, c: number) => any;
    readonly client_stats: (a: number) => any;
    readonly codec_crypt: (a: number) => [number, number];
    readonly codec_decode: (a: number, b: number, c: number) => any;
    readonly codec_encode: (a: number, b: any) => [number, number, number];
    readonly codec_new: (a: any) => [number, number, number];
    readonly deriveKey: (a: number, b: number) => [number, number];
    readonly stream_finish: (a: number) => any;
    readonly stream_id: (a: number) => number;
    readonly stream_read: (a: number) => any;
    readonly stream_reset: (a: number) => void;
    readonly stream_write: (a: number, b: number, c: number) => any;
    readonly wasm_bindgen__convert__closures_____invoke__h146dba2cb6658f18: (a: number, b: number, c: any) => [number, number];
    readonly wasm_bindgen__convert__closures_____invoke__h9dd8cc5d39ef0842: (a: number, b: number, c: any, d: any) => void;
    readonly wasm_bindgen__convert__closures_____invoke__hfc22511026a38509: (a: number, b: number, c: any) => [number, number];
    readonly wasm_bindgen__convert__closures_____invoke__hdd22aa51fb9e3fa8: (a: number, b: number, c: any) => void;
    readonly wasm_bindgen__convert__closures_____invoke__h84b7bf19dd5cad85: (a: number, b: number) => void;
    readonly __wbindgen_malloc: (a: number, b: number) => number;
    readonly __wbindgen_realloc: (a: number, b: number, c: number, d: number) => number;
    readonly __wbindgen_free: (a: number, b: number, c: number) => void;
    readonly __wbindgen_exn_store: (a: number) => void;
    readonly __externref_table_alloc: () => number;
    readonly __wbindgen_externrefs: WebAssembly.Table;
    readonly __wbindgen_destroy_closure: (a: number, b: number) => void;
    readonly __externref_table_dealloc: (a: number) => void;
    readonly __wbindgen_start: () => void;
}

export type SyncInitInput = BufferSource | WebAssembly.Module;

/**
 * Instantiates the given `module`, which can either be bytes or
 * a precompiled `WebAssembly.Module`.
 *
 * @param {{ module: SyncInitInput }} module - Passing `SyncInitInput` directly is deprecated.
 *
 * @returns {InitOutput}
 */
export function initSync(module: { module: SyncInitInput } | SyncInitInput): InitOutput;

/**
 * If `module_or_path` is {RequestInfo} or {URL}, makes a request and
 * for everything else, calls `WebAssembly.instantiate` directly.
 *
 * @param {{ module_or_path: InitInput | Promise<InitInput> }} module_or_path - Passing `InitInput` directly is deprecated.
 *
 * @returns {Promise<InitOutput>}
 */
export default function __wbg_init (module_or_path?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>): Promise<InitOutput>;
