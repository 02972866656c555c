//! The datagram codec: one kcptun datagram taken apart into a plain object (for
//! the dashboard's packet inspector), or built from fields (for tests). The
//! decoding itself is the core's [`kcpgate_core::inspect`]; this is its JS face.

use js_sys::{Array, Uint8Array};
use kcpgate_core::crypto::{self, Method, OpenError, PacketCrypto};
use kcpgate_core::fec;
use kcpgate_core::inspect::{self, FecFraming, Payload, SmuxFrame, SnappyChunk, Verdict};
use kcpgate_core::kcp::{Command, Header};
use kcpgate_core::{smux, snappy};
use wasm_bindgen::prelude::*;

use crate::js::{self, Obj};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
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
"#;

/// The `-crypt` method a name gives; unlike kcptun, an unknown name is refused
/// rather than taken for `aes`, so a typo shows.
pub fn method_of(name: &str) -> Result<Method, JsValue> {
    Method::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        js::bad_option("crypt", &format!("one of {}", known.join(", ")))
    })
}

/// kcptun's key derivation: PBKDF2-HMAC-SHA1 of the passphrase, salt "kcp-go",
/// 4096 rounds, 32 bytes.
#[wasm_bindgen(js_name = deriveKey)]
pub fn derive_key(passphrase: &str) -> Vec<u8> {
    crypto::derive_key(passphrase).to_vec()
}

/// Takes kcptun datagrams apart and builds them, under one `-crypt` and `-key`.
#[wasm_bindgen]
pub struct Codec {
    crypto: PacketCrypto,
}

#[wasm_bindgen]
impl Codec {
    /// A codec for `options.crypt` and `options.key`; throws a `TypeError` naming
    /// the bad option.
    #[wasm_bindgen(constructor)]
    pub fn new(#[wasm_bindgen(unchecked_param_type = "CodecOptions")] options: JsValue) -> Result<Codec, JsValue> {
        let crypt = js::string(&options, "crypt")?.ok_or_else(|| js::bad_option("crypt", "given"))?;
        let key = js::string(&options, "key")?.ok_or_else(|| js::bad_option("key", "given"))?;
        Ok(Codec { crypto: PacketCrypto::from_passphrase(method_of(&crypt)?, &key) })
    }

    /// The method's kcptun name.
    #[wasm_bindgen(getter)]
    pub fn crypt(&self) -> String {
        self.crypto.method().name().to_string()
    }

    /// Takes one datagram apart. Never throws: a wrong key or a malformed
    /// datagram is reported in `verdict`, `runt` and `segmentError`. FEC framing
    /// is recognised by its type field whatever the session's FEC setting, as
    /// every kcptun receiver does.
    #[wasm_bindgen(unchecked_return_type = "Decoded")]
    pub fn decode(&self, datagram: &[u8]) -> JsValue {
        decoded(&inspect::inspect(&self.crypto, datagram))
    }

    /// Builds one datagram from fields; throws a `TypeError` on bad fields.
    #[wasm_bindgen(unchecked_return_type = "Uint8Array")]
    pub fn encode(
        &self,
        #[wasm_bindgen(unchecked_param_type = "EncodeFields")] fields: JsValue,
    ) -> Result<JsValue, JsValue> {
        let mut body = Vec::new();
        let segments = js::field(&fields, "segments").map(|v| Array::from(&v)).unwrap_or_default();
        for segment in segments.iter() {
            let (header, data) = segment_fields(&segment)?;
            inspect::push_segment(&mut body, &header, &data);
        }
        let framing = match js::field(&fields, "fec") {
            None => FecFraming::None,
            Some(fec) => {
                let seqid = js::number(&fec, "seqid", 0..=u64::from(u32::MAX))?.unwrap_or(0) as u32;
                match js::string(&fec, "type")?.as_deref() {
                    Some("data") | None => FecFraming::Data(seqid),
                    Some("parity") => {
                        body = js::bytes(&fields, "parity")?
                            .ok_or_else(|| js::bad_option("parity", "given for a parity shard"))?;
                        FecFraming::Parity(seqid)
                    }
                    Some(_) => return Err(js::bad_option("fec.type", "\"data\" or \"parity\"")),
                }
            }
        };
        let nonce = match js::bytes(&fields, "nonce")? {
            Some(nonce) => nonce,
            None => {
                let mut nonce = vec![0u8; self.crypto.nonce_len()];
                crate::random_fill(&mut nonce);
                nonce
            }
        };
        let wire = inspect::encode(&self.crypto, framing, &body, &nonce)
            .map_err(|e| JsValue::from(js_sys::TypeError::new(&e.to_string())))?;
        Ok(Uint8Array::from(&wire[..]).into())
    }
}

fn segment_fields(segment: &JsValue) -> Result<(Header, Vec<u8>), JsValue> {
    let u32_field = |key: &str| js::number(segment, key, 0..=u64::from(u32::MAX)).map(|n| n.unwrap_or(0) as u32);
    let cmd = match js::field(segment, "cmd") {
        Some(v) if v.as_string().is_some() => match v.as_string().as_deref() {
            Some("PUSH") => Command::Push as u8,
            Some("ACK") => Command::Ack as u8,
            Some("WASK") => Command::WindowAsk as u8,
            Some("WINS") => Command::WindowTell as u8,
            _ => return Err(js::bad_option("cmd", "PUSH, ACK, WASK, WINS or a byte")),
        },
        Some(_) => js::number(segment, "cmd", 0..=255)?.unwrap_or(0) as u8,
        None => return Err(js::bad_option("cmd", "given")),
    };
    let header = Header {
        conv: u32_field("conv")?,
        cmd,
        frg: js::number(segment, "frg", 0..=255)?.unwrap_or(0) as u8,
        wnd: js::number(segment, "wnd", 0..=65535)?.unwrap_or(0) as u16,
        ts: u32_field("ts")?,
        sn: u32_field("sn")?,
        una: u32_field("una")?,
        len: 0,
    };
    Ok((header, js::bytes(segment, "data")?.unwrap_or_default()))
}

fn command_name(cmd: u8) -> JsValue {
    match Command::from_wire(cmd) {
        Some(Command::Push) => "PUSH".into(),
        Some(Command::Ack) => "ACK".into(),
        Some(Command::WindowAsk) => "WASK".into(),
        Some(Command::WindowTell) => "WINS".into(),
        None => cmd.into(),
    }
}

fn frames(frames: &[SmuxFrame]) -> Array {
    frames
        .iter()
        .map(|f| {
            let cmd = match f.cmd {
                smux::CMD_SYN => "SYN",
                smux::CMD_FIN => "FIN",
                smux::CMD_PSH => "PSH",
                smux::CMD_NOP => "NOP",
                _ => "UPD",
            };
            Obj::new()
                .set("offset", f.offset as u32)
                .set("version", f.version)
                .set("cmd", cmd)
                .set("length", f.length)
                .set("sid", f.sid)
                .set("present", f.present as u32)
                .into::<JsValue>()
        })
        .collect()
}

fn chunks(chunks: &[SnappyChunk]) -> Array {
    chunks
        .iter()
        .map(|c| {
            let kind = match c.kind {
                snappy::CHUNK_COMPRESSED => "compressed",
                snappy::CHUNK_UNCOMPRESSED => "uncompressed",
                _ => "identifier",
            };
            Obj::new()
                .set("offset", c.offset as u32)
                .set("type", kind)
                .set("length", c.length as u32)
                .set("complete", c.complete)
                .set_opt("crcOk", c.crc_ok)
                .set("smux", frames(&c.frames))
                .into::<JsValue>()
        })
        .collect()
}

fn decoded(seen: &inspect::Inspection) -> JsValue {
    let report = Obj::new().set("length", seen.len as u32);
    let report = match seen.verdict {
        Verdict::Ok => report.set("verdict", "ok"),
        Verdict::Failed(e) => {
            let verdict = if e == OpenError::TooShort { "too-short" } else { "checksum" };
            return report.set("verdict", verdict).set("error", e.to_string()).set("segments", Array::new()).into();
        }
    };
    let mut report = report.bytes("nonce", &seen.nonce).set_opt("crc", seen.crc).set("runt", seen.runt);
    if let Some(f) = seen.fec {
        let kind = match f.kind {
            fec::TYPE_DATA => "data",
            fec::TYPE_PARITY => "parity",
            _ => "oob",
        };
        let header = Obj::new()
            .set("seqid", f.seqid)
            .set("type", kind)
            .set_opt("sizeField", f.size_field)
            .set("sizeMatches", f.size_matches)
            .set("payloadLength", f.payload_len as u32);
        report = report.set("fec", header.into::<JsValue>());
    }
    if !seen.kcp.is_empty() {
        report = report.bytes("kcp", &seen.kcp);
    }
    if !seen.parity.is_empty() {
        report = report.bytes("parity", &seen.parity);
    }
    let segments: Array = seen
        .segments
        .iter()
        .map(|s| {
            let h = &s.header;
            let segment = Obj::new()
                .set("offset", s.offset as u32)
                .set("conv", h.conv)
                .set("cmd", command_name(h.cmd))
                .set("frg", h.frg)
                .set("wnd", h.wnd)
                .set("ts", h.ts)
                .set("sn", h.sn)
                .set("una", h.una)
                .set("len", h.len)
                .bytes("data", &seen.kcp[s.data.clone()]);
            match &s.payload {
                Payload::Opaque => segment,
                Payload::Smux(f) => segment.set("smux", frames(f)),
                Payload::Snappy(c) => segment.set("snappy", chunks(c)),
            }
            .into::<JsValue>()
        })
        .collect();
    report.set("segments", segments).set_opt("segmentError", seen.segment_error.map(|e| e.to_string())).into()
}
