//! A [`Kcp`]'s round-trip estimate and congestion window growth, as kcp-go
//! computes them (docs/protocol.md §2.2).

use super::{Kcp, RTO_MAX};

impl Kcp {
    /// Takes one RTT sample (ms): kcp-go's integer estimator, then the RTO
    /// between the minimum and [`RTO_MAX`].
    pub(super) fn update_rtt(&mut self, rtt: i32) {
        if self.rx_srtt == 0 {
            self.rx_srtt = rtt;
            self.rx_rttvar = rtt >> 1;
        } else {
            let mut delta = rtt - self.rx_srtt;
            self.rx_srtt += delta >> 3;
            delta = delta.abs();
            if rtt < self.rx_srtt - self.rx_rttvar {
                self.rx_rttvar += (delta - self.rx_rttvar) >> 5;
            } else {
                self.rx_rttvar += (delta - self.rx_rttvar) >> 2;
            }
        }
        let var = (self.rx_rttvar << 2) as u32;
        let rto = (self.rx_srtt as u32).wrapping_add(self.cfg.interval.max(var));
        self.rx_rto = rto.clamp(self.rx_minrto, RTO_MAX);
    }

    /// After an ack that moved `una`: slow start below `ssthresh`, then about
    /// one segment per window; never beyond the peer's window.
    pub(super) fn grow_cwnd(&mut self) {
        let mss = self.mss as u32;
        if self.cwnd < self.ssthresh {
            self.cwnd += 1;
            self.incr += mss;
        } else {
            self.incr = self.incr.max(mss);
            self.incr += (mss * mss) / self.incr + mss / 16;
            if (self.cwnd + 1) * mss <= self.incr {
                self.cwnd = (self.incr + mss - 1) / mss.max(1);
            }
        }
        if self.cwnd > self.rmt_wnd {
            self.cwnd = self.rmt_wnd;
            self.incr = self.rmt_wnd * mss;
        }
    }
}
