//! One flush of a [`Kcp`]: what it puts on the wire, in kcp-go's order
//! (docs/protocol.md §2.2), phase by phase.

use super::segment::{Command, Header, HEADER_LEN};
use super::{diff, Compat, Kcp, ASK_SEND, ASK_TELL, DEAD_LINK, FASTACK_DONE, PROBE_LIMIT, THRESH_MIN};
use crate::transmit::TransmitQueue;

/// What a flush may send.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FlushKind {
    /// Everything due: acks, probes, new and retransmitted segments.
    Full,
    /// Acks (and, in current kcp-go, the window slides), as after an input.
    AckOnly,
}

/// Segments retransmitted by one flush, by cause.
#[derive(Default)]
struct Resent {
    lost: u64,
    fast: u64,
    early: u64,
}

impl Kcp {
    /// Flushes what `kind` allows at `now`; returns the ms until a segment's
    /// retransmission is due (at most the interval).
    pub(super) fn flush_kind(&mut self, now: u32, kind: FlushKind) -> u32 {
        let mut out = Emitter::new(self.cfg.header_room, self.cfg.mtu);
        let mut tmpl = Header {
            conv: self.conv,
            cmd: Command::Ack as u8,
            frg: 0,
            wnd: self.wnd_unused(),
            ts: 0,
            sn: 0,
            una: self.rcv_nxt,
            len: 0,
        };
        let acked = !self.acklist.is_empty();
        self.emit_acks(&mut out, &mut tmpl);
        if kind == FlushKind::AckOnly && self.cfg.compat == Compat::KcpGo561 {
            out.finish(&mut self.transmits);
            return self.cfg.interval;
        }
        self.schedule_probe(now);
        self.emit_probes(&mut out, &mut tmpl);
        let (cwnd_eff, new_segs) = self.slide_window();
        if kind == FlushKind::AckOnly {
            out.finish(&mut self.transmits);
            return self.cfg.interval;
        }
        let sent_before = self.stats.out_segs;
        let (resent, next) = self.emit_segments(now, &mut out, &mut tmpl, new_segs);
        let silent = diff(now, self.last_input) >= self.rx_rto.max(2 * self.cfg.interval) as i32;
        if let Some((sn, ts)) = self.last_push.filter(|_| self.reack && !acked && silent) {
            if self.stats.out_segs > sent_before {
                (tmpl.cmd, tmpl.frg, tmpl.sn, tmpl.ts, tmpl.len) = (Command::Ack as u8, 0, sn, ts, 0);
                out.reserve(&mut self.transmits, HEADER_LEN);
                out.write(&mut self.transmits, &tmpl, &[]);
                self.stats.out_segs += 1;
            }
        }
        out.finish(&mut self.transmits);
        self.count_and_adjust_cwnd(&resent, cwnd_eff);
        next
    }

    /// Phase 1: acks. Those below `rcv_nxt` are implied by `una`; the last is kept
    /// so that at least one ack leaves.
    fn emit_acks(&mut self, out: &mut Emitter, tmpl: &mut Header) {
        let acks = self.acklist.len();
        for (i, &(sn, ts)) in self.acklist.iter().enumerate() {
            out.reserve(&mut self.transmits, HEADER_LEN);
            if diff(sn, self.rcv_nxt) >= 0 || i + 1 == acks {
                tmpl.sn = sn;
                tmpl.ts = ts;
                out.write(&mut self.transmits, tmpl, &[]);
                self.stats.out_segs += 1;
            }
        }
        self.acklist.clear();
    }

    /// Phase 2: while the peer's window is 0, when to ask it again (backing off).
    fn schedule_probe(&mut self, now: u32) {
        let probe_init = self.cfg.compat.probe_init();
        if self.rmt_wnd == 0 {
            if self.probe_wait == 0 {
                self.probe_wait = probe_init;
                self.ts_probe = now.wrapping_add(self.probe_wait);
            } else if diff(now, self.ts_probe) >= 0 {
                self.probe_wait = self.probe_wait.max(probe_init);
                self.probe_wait += self.probe_wait / 2;
                self.probe_wait = self.probe_wait.min(PROBE_LIMIT);
                self.ts_probe = now.wrapping_add(self.probe_wait);
                self.probe |= ASK_SEND;
            }
        } else {
            self.ts_probe = 0;
            self.probe_wait = 0;
        }
    }

    /// Phase 3: the window ask and tell that are due.
    fn emit_probes(&mut self, out: &mut Emitter, tmpl: &mut Header) {
        for (flag, cmd) in [(ASK_SEND, Command::WindowAsk), (ASK_TELL, Command::WindowTell)] {
            if self.probe & flag != 0 {
                tmpl.cmd = cmd as u8;
                out.reserve(&mut self.transmits, HEADER_LEN);
                out.write(&mut self.transmits, tmpl, &[]);
                self.stats.out_segs += 1;
            }
        }
        self.probe = 0;
    }

    /// Phase 4: queued segments enter the send window as far as it allows;
    /// returns the window and how many entered.
    fn slide_window(&mut self) -> (u32, u32) {
        let mut cwnd_eff = self.cfg.snd_wnd.min(self.rmt_wnd);
        if !self.cfg.no_cwnd {
            cwnd_eff = cwnd_eff.min(self.cwnd);
        }
        let mut new_segs = 0u32;
        while diff(self.snd_nxt, self.snd_una.wrapping_add(cwnd_eff)) < 0 {
            let Some(mut seg) = self.snd_queue.pop_front() else { break };
            seg.sn = self.snd_nxt;
            self.snd_nxt = self.snd_nxt.wrapping_add(1);
            self.snd_buf.push_back(seg);
            new_segs += 1;
        }
        (cwnd_eff, new_segs)
    }

    /// Phase 5: first transmissions, fast, early and timed-out retransmissions,
    /// within the pacing budget; returns them by cause and the ms until the next
    /// retransmission is due.
    fn emit_segments(&mut self, now: u32, out: &mut Emitter, tmpl: &mut Header, new_segs: u32) -> (Resent, u32) {
        let resent_at = if self.cfg.fast_resend > 0 { self.cfg.fast_resend } else { u32::MAX };
        let fastack_reset = match self.cfg.compat {
            Compat::Latest => FASTACK_DONE,
            Compat::KcpGo561 => 0,
        };
        let mut resent = Resent::default();
        let mut next = self.cfg.interval;
        let mut sent_any = false;
        tmpl.cmd = Command::Push as u8;
        for seg in self.snd_buf.iter_mut() {
            if seg.acked {
                continue;
            }
            let size = HEADER_LEN + seg.data.len();
            let maybe_due =
                seg.xmit == 0 || (seg.fastack > 0 && seg.fastack != FASTACK_DONE) || diff(now, seg.resendts) >= 0;
            if maybe_due && self.send_budget.is_some_and(|b| b < size) {
                // Out of budget: this and later segments wait with their state
                // untouched, for the next flush.
                break;
            }
            let mut send = false;
            if seg.xmit == 0 {
                send = true;
                seg.rto = self.rx_rto;
                seg.resendts = now.wrapping_add(seg.rto);
            } else if seg.fastack >= resent_at && seg.fastack != FASTACK_DONE {
                send = true;
                seg.fastack = fastack_reset;
                seg.rto = self.rx_rto;
                seg.resendts = now.wrapping_add(seg.rto);
                resent.fast += 1;
            } else if seg.fastack > 0 && seg.fastack != FASTACK_DONE && new_segs == 0 {
                send = true;
                seg.fastack = fastack_reset;
                seg.rto = self.rx_rto;
                seg.resendts = now.wrapping_add(seg.rto);
                resent.early += 1;
            } else if diff(now, seg.resendts) >= 0 {
                send = true;
                seg.rto = if self.cfg.nodelay {
                    seg.rto.wrapping_add(self.rx_rto / 2)
                } else {
                    seg.rto.wrapping_add(self.rx_rto)
                };
                seg.fastack = 0;
                seg.resendts = now.wrapping_add(seg.rto);
                resent.lost += 1;
            }
            if send {
                sent_any = true;
                if seg.xmit == 0 {
                    seg.first_ts = now;
                }
                seg.xmit += 1;
                seg.ts = now;
                tmpl.frg = seg.frg;
                tmpl.ts = now.wrapping_add(self.ts_base);
                tmpl.sn = seg.sn;
                tmpl.len = seg.data.len() as u32;
                out.reserve(&mut self.transmits, size);
                out.write(&mut self.transmits, tmpl, &seg.data);
                self.stats.out_segs += 1;
                if let Some(b) = &mut self.send_budget {
                    *b -= size;
                }
                if seg.xmit >= DEAD_LINK {
                    self.dead = true;
                }
            }
            let until = diff(seg.resendts, now);
            if until > 0 && (until as u32) < next {
                next = until as u32;
            }
        }
        if sent_any && self.recent_ts[self.recent_at] != now {
            self.recent_at = (self.recent_at + 1) % super::RECENT_TS;
            self.recent_ts[self.recent_at] = now;
        }
        (resent, next)
    }

    /// Phase 6: the retransmission counters, and the congestion window after a
    /// fast or early retransmission (halved) or a timeout (back to 1).
    fn count_and_adjust_cwnd(&mut self, resent: &Resent, cwnd_eff: u32) {
        let Resent { lost, fast, early } = *resent;
        self.stats.lost_segs += lost;
        self.stats.fast_retrans_segs += fast;
        self.stats.early_retrans_segs += early;
        self.stats.retrans_segs += lost + fast + early;
        if self.cfg.no_cwnd {
            return;
        }
        let mss = self.mss as u32;
        if fast + early > 0 {
            let inflight = self.snd_nxt.wrapping_sub(self.snd_una);
            let resent_at = if self.cfg.fast_resend > 0 { self.cfg.fast_resend } else { u32::MAX };
            self.ssthresh = (inflight / 2).max(THRESH_MIN);
            self.cwnd = self.ssthresh.wrapping_add(resent_at);
            self.incr = self.cwnd.wrapping_mul(mss);
        }
        if lost > 0 {
            self.ssthresh = (cwnd_eff / 2).max(THRESH_MIN);
            self.cwnd = 1;
            self.incr = mss;
        }
        if self.cwnd < 1 {
            self.cwnd = 1;
            self.incr = mss;
        }
    }
}

/// Packs segments into datagrams of at most `mtu` bytes in a [`TransmitQueue`],
/// leaving `room` in front of each for the lower layers' headers.
pub(super) struct Emitter {
    room: usize,
    mtu: usize,
    /// Bytes of KCP data in the datagram being built (the queue's last slot).
    fill: usize,
    open: bool,
}

impl Emitter {
    fn new(room: usize, mtu: usize) -> Emitter {
        Emitter { room, mtu, fill: 0, open: false }
    }

    /// Emits the current datagram first if `n` more bytes would overflow it.
    fn reserve(&mut self, queue: &mut TransmitQueue, n: usize) {
        if self.open && self.fill + n > self.mtu {
            self.close(queue);
        }
    }

    fn write(&mut self, queue: &mut TransmitQueue, header: &Header, payload: &[u8]) {
        if !self.open {
            queue.push_slot();
            self.open = true;
            self.fill = 0;
        }
        let i = queue.len() - 1;
        let at = self.room + self.fill;
        let slot = queue.slot_mut(i);
        header.encode(&mut slot[at..]);
        slot[at + HEADER_LEN..at + HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.fill += HEADER_LEN + payload.len();
    }

    fn close(&mut self, queue: &mut TransmitQueue) {
        let i = queue.len() - 1;
        queue.set_len(i, self.room + self.fill);
        self.open = false;
        self.fill = 0;
    }

    fn finish(mut self, queue: &mut TransmitQueue) {
        if self.open {
            self.close(queue);
        }
    }
}
