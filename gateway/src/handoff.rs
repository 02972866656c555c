//! Address changes across a listener's tasks. Each UDP socket (one per core and
//! port) has a task of its own, and the kernel picks the socket by the peer's
//! address, so a player whose address changed may reach another task than the
//! one that owns its session. That task hands the datagram over, as it came; the
//! owner moves the session if the datagram carries the session's evidence, and
//! sends from its own socket of the same listener.

use std::net::SocketAddr;
use std::sync::Mutex;

use foldhash::HashMap;
use tokio::sync::mpsc;

/// A datagram handed to the task that owns its session.
pub struct Handed {
    /// Where it came from.
    pub from: SocketAddr,
    /// The datagram as it came (still sealed).
    pub datagram: Vec<u8>,
}

/// Datagrams waiting in a task's handoff queue at most; more are dropped (the
/// peer's KCP sends again).
const QUEUE: usize = 1024;

/// Who owns which conversation, and each task's handoff queue, in one listener.
#[derive(Default)]
pub struct Handoff {
    owners: Mutex<HashMap<u32, usize>>,
    queues: Mutex<HashMap<usize, mpsc::Sender<Handed>>>,
}

impl Handoff {
    /// Task `task` takes part: datagrams for its sessions come out of the receiver.
    pub fn join(&self, task: usize) -> mpsc::Receiver<Handed> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.queues.lock().expect("handoff lock").insert(task, tx);
        rx
    }

    /// Task `task` ends.
    pub fn leave(&self, task: usize) {
        self.queues.lock().expect("handoff lock").remove(&task);
        self.owners.lock().expect("handoff lock").retain(|_, t| *t != task);
    }

    /// Task `task` owns a session of conversation `conv` (the latest to say so,
    /// if two sessions share one).
    pub fn owns(&self, conv: u32, task: usize) {
        self.owners.lock().expect("handoff lock").insert(conv, task);
    }

    /// Task `task`'s session of conversation `conv` ended.
    pub fn released(&self, conv: u32, task: usize) {
        let mut owners = self.owners.lock().expect("handoff lock");
        if owners.get(&conv) == Some(&task) {
            owners.remove(&conv);
        }
    }

    /// The task, other than `me`, that owns conversation `conv`.
    pub fn owner(&self, conv: u32, me: usize) -> Option<usize> {
        self.owners.lock().expect("handoff lock").get(&conv).copied().filter(|&t| t != me)
    }

    /// Hands `datagram` from `from` to task `owner`; false if its queue is full
    /// or it ended.
    pub fn hand(&self, owner: usize, from: SocketAddr, datagram: &[u8]) -> bool {
        let queue = self.queues.lock().expect("handoff lock").get(&owner).cloned();
        queue.is_some_and(|q| q.try_send(Handed { from, datagram: datagram.to_vec() }).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_task_that_owns_its_conversation_and_no_other() {
        let handoff = Handoff::default();
        let (mut one, _two) = (handoff.join(1), handoff.join(2));
        handoff.owns(77, 1);
        assert_eq!(handoff.owner(77, 2), Some(1));
        assert_eq!(handoff.owner(77, 1), None, "not to itself");
        let from: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        assert!(handoff.hand(1, from, b"sealed"));
        let got = one.try_recv().expect("handed");
        assert_eq!((got.from, got.datagram.as_slice()), (from, b"sealed".as_slice()));
        handoff.released(77, 2);
        assert_eq!(handoff.owner(77, 2), Some(1), "only its owner releases it");
        handoff.leave(1);
        assert_eq!(handoff.owner(77, 2), None);
        assert!(!handoff.hand(1, from, b"late"), "an ended task takes nothing");
    }
}
