//! Plain KCP for games that want messages rather than streams: no snappy, no
//! smux, KCP in message mode, so each message arrives whole or not at all.
//!
//! The session shows the application one stream, [`STREAM_ID`], carrying each
//! message as a 4-byte big-endian length and the message: the framing a game
//! backend reads from its TCP connection, so a gateway bridges it like any
//! stream. Written bytes are cut into messages at their length fields; received
//! messages are read back with the same framing. Plain KCP has no way to say a
//! stream ended: ending the stream ends the session.
//!
//! The client opens the stream; the server sees it opened by the first message.
//! A length above [`MAX_MESSAGE`], from either side, ends the session.

use std::collections::VecDeque;

use crate::pipeline::Connection;
use crate::smux::{MuxEvent, Read, Role, SmuxError, StreamError};
use crate::stack::StackError;

/// The id of the one stream.
pub const STREAM_ID: u32 = 1;
/// Bytes in front of each message: its length, big-endian.
pub const LENGTH_BYTES: usize = 4;
/// The longest message (KCP sends it in at most 255 fragments at any MTU a
/// browser allows, within the default windows).
pub const MAX_MESSAGE: usize = 65_536;
/// Received bytes held for the application before KCP is left to hold the rest
/// (its receive window then pushes back on the peer).
const READ_BUDGET: usize = 256 * 1024;
/// Written bytes held until KCP takes them: two whole messages.
const WRITE_BUDGET: usize = 2 * (LENGTH_BYTES + MAX_MESSAGE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageState {
    Unopened,
    Open,
    Gone,
}

/// The message layer of one session. See the module docs.
#[derive(Debug)]
pub struct MessageLink {
    role: Role,
    stream: MessageState,
    to_accept: bool,
    events: VecDeque<MuxEvent>,
    /// Received messages, framed, not yet read.
    inbox: Vec<u8>,
    inbox_at: usize,
    /// Framed bytes written, not yet sent as messages.
    outbox: Vec<u8>,
    /// A write took less than offered: say when there is room.
    write_refused: bool,
    error: Option<StackError>,
}

impl MessageLink {
    /// The message layer of a session in `role`.
    pub fn new(role: Role) -> MessageLink {
        MessageLink {
            role,
            stream: MessageState::Unopened,
            to_accept: false,
            events: VecDeque::new(),
            inbox: Vec::new(),
            inbox_at: 0,
            outbox: Vec::new(),
            write_refused: false,
            error: None,
        }
    }

    /// Moves messages between `conn` and the stream, both ways, as far as each
    /// side takes them.
    pub fn pump(&mut self, now: u32, conn: &mut Connection) -> Result<(), StackError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let result = self.pump_in(conn).and_then(|()| self.pump_out(now, conn));
        if let Err(e) = result {
            self.error = Some(e);
        }
        result
    }

    fn pump_in(&mut self, conn: &mut Connection) -> Result<(), StackError> {
        if self.inbox_at == self.inbox.len() {
            self.inbox.clear();
            self.inbox_at = 0;
        }
        let mut arrived = false;
        while self.inbox.len() - self.inbox_at < READ_BUDGET {
            let Some(size) = conn.peek_message() else { break };
            if size > MAX_MESSAGE {
                return Err(StackError::MessageTooLarge { len: size, max: MAX_MESSAGE });
            }
            if self.role == Role::Server && self.stream == MessageState::Unopened {
                self.stream = MessageState::Open;
                self.to_accept = true;
            }
            let at = self.inbox.len();
            self.inbox.extend_from_slice(&(size as u32).to_be_bytes());
            conn.recv_message(&mut self.inbox);
            if self.stream != MessageState::Open {
                self.inbox.truncate(at); // nobody reads it any more
            } else {
                arrived = true;
            }
        }
        if arrived {
            self.events.push_back(MuxEvent::Readable(STREAM_ID));
        }
        Ok(())
    }

    fn pump_out(&mut self, now: u32, conn: &mut Connection) -> Result<(), StackError> {
        let mut at = 0;
        while let Some(length) = self.outbox.get(at..at + LENGTH_BYTES) {
            let len = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
            if len > MAX_MESSAGE {
                return Err(StackError::MessageTooLarge { len, max: MAX_MESSAGE });
            }
            let Some(message) = self.outbox.get(at + LENGTH_BYTES..at + LENGTH_BYTES + len) else { break };
            // KCP cannot carry an empty message; there is nothing to deliver anyway.
            if !message.is_empty() && !conn.send_message(now, message) {
                break; // KCP's window is full
            }
            at += LENGTH_BYTES + len;
        }
        self.outbox.drain(..at);
        if self.write_refused && self.outbox.len() < WRITE_BUDGET {
            self.write_refused = false;
            self.events.push_back(MuxEvent::Writable(STREAM_ID));
        }
        Ok(())
    }

    /// Opens the stream (client side, once).
    pub fn open_stream(&mut self) -> Result<u32, SmuxError> {
        if self.role == Role::Client && self.stream == MessageState::Unopened {
            self.stream = MessageState::Open;
            Ok(STREAM_ID)
        } else {
            Err(SmuxError::GoAway)
        }
    }

    /// The stream, once the peer's first message opened it (server side).
    pub fn accept(&mut self) -> Option<u32> {
        std::mem::take(&mut self.to_accept).then_some(STREAM_ID)
    }

    /// The next stream event.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    fn check(&self, sid: u32) -> Result<(), StreamError> {
        if sid != STREAM_ID || self.stream != MessageState::Open {
            return Err(StreamError::NoSuchStream);
        }
        Ok(())
    }

    /// Bytes a read would return now.
    pub fn readable_bytes(&self, sid: u32) -> usize {
        if self.check(sid).is_ok() {
            self.inbox.len() - self.inbox_at
        } else {
            0
        }
    }

    /// Writes framed messages; returns the bytes taken.
    pub fn stream_write(&mut self, sid: u32, data: &[u8]) -> Result<usize, StreamError> {
        self.check(sid)?;
        let take = data.len().min(WRITE_BUDGET.saturating_sub(self.outbox.len()));
        self.write_refused |= take < data.len();
        self.outbox.extend_from_slice(&data[..take]);
        Ok(take)
    }

    /// Reads received messages, framed. The stream has no end of its own.
    pub fn stream_read(&mut self, sid: u32, buf: &mut [u8]) -> Result<Read, StreamError> {
        self.check(sid)?;
        let held = &self.inbox[self.inbox_at..];
        if held.is_empty() {
            return Ok(Read::WouldBlock);
        }
        let n = held.len().min(buf.len());
        buf[..n].copy_from_slice(&held[..n]);
        self.inbox_at += n;
        Ok(Read::Data(n))
    }

    /// Ends the stream (the session ends with it).
    pub fn stream_close(&mut self, sid: u32) -> Result<(), StreamError> {
        self.check(sid)?;
        self.stream = MessageState::Gone;
        Ok(())
    }
}

/// Cuts the framed byte stream of [`STREAM_ID`] back into messages, for an
/// application that reads it (the browser client).
#[derive(Debug, Default)]
pub struct Deframer {
    held: Vec<u8>,
    at: usize,
}

impl Deframer {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at == self.held.len() {
            self.held.clear();
            self.at = 0;
        }
        self.held.extend_from_slice(bytes);
    }

    /// The next whole message, if it has arrived; an error for a length over
    /// [`MAX_MESSAGE`] (the stream is unusable after it).
    pub fn next_message(&mut self) -> Option<Result<&[u8], StackError>> {
        let held = &self.held[self.at..];
        let length = held.get(..LENGTH_BYTES)?;
        let len = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
        if len > MAX_MESSAGE {
            return Some(Err(StackError::MessageTooLarge { len, max: MAX_MESSAGE }));
        }
        held.get(LENGTH_BYTES..LENGTH_BYTES + len)?;
        let start = self.at + LENGTH_BYTES;
        self.at = start + len;
        Some(Ok(&self.held[start..start + len]))
    }
}

/// `message` with its length in front, as [`STREAM_ID`] carries it.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LENGTH_BYTES + message.len());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deframer_takes_bytes_in_any_pieces() {
        let messages: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; i * 37]).collect();
        let stream: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
        for piece in [1, 3, 4, 5, 64, 1000] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                d.push(chunk);
                while let Some(m) = d.next_message() {
                    got.push(m.expect("within the limit").to_vec());
                }
            }
            assert_eq!(got, messages, "pieces of {piece}");
        }
        let mut d = Deframer::default();
        d.push(&((MAX_MESSAGE + 1) as u32).to_be_bytes());
        assert_eq!(d.next_message(), Some(Err(StackError::MessageTooLarge { len: MAX_MESSAGE + 1, max: MAX_MESSAGE })));
    }
}
