//! Socket options kcptun sets on its UDP sockets (docs/protocol.md §11).

mod support;

use std::io::IoSliceMut;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use kcpgate::runtime::tune_udp;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use support::{kcpgate, Procs};

#[tokio::test]
async fn conformance_54_dscp_sets_tos_and_traffic_class() {
    let v4 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(tune_udp(&v4, 1 << 20, 46).is_empty());
    assert_eq!(socket2::SockRef::from(&v4).tos_v4().unwrap(), 46 << 2, "IPv4: TOS = DSCP << 2");
    // The kernel caps SO_RCVBUF at net.core.rmem_max.
    let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0usize);
    assert!(socket2::SockRef::from(&v4).recv_buffer_size().unwrap() >= cap.min(1 << 20), "receive buffer grown");

    let v6 = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    assert!(tune_udp(&v6, 0, 46).is_empty());
    assert_eq!(socket2::SockRef::from(&v6).tclass_v6().unwrap(), 46, "IPv6: traffic class = DSCP");
}

/// Receives one datagram; returns it, its sender and the TOS / traffic class it
/// arrived with.
fn recv_with_tos(s: &UdpSocket) -> (Vec<u8>, std::net::SocketAddr, u8) {
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(i32);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
    let tos = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::Ipv4Tos(t) => Some(t),
            ControlMessageOwned::Ipv6TClass(t) => Some(t as u8),
            _ => None,
        })
        .expect("the TOS arrives with the datagram");
    let from = msg.address.unwrap();
    let from = match (from.as_sockaddr_in(), from.as_sockaddr_in6()) {
        (Some(v4), _) => std::net::SocketAddr::V4((*v4).into()),
        (_, Some(v6)) => std::net::SocketAddr::V6((*v6).into()),
        _ => unreachable!("an IP sender"),
    };
    let n = msg.bytes;
    (buf[..n].to_vec(), from, tos)
}

fn udp_reporting_tos(host: &str) -> UdpSocket {
    let s = UdpSocket::bind((host, 0)).unwrap();
    if host.contains(':') {
        setsockopt(&s, sockopt::Ipv6RecvTClass, &true).unwrap();
    } else {
        setsockopt(&s, sockopt::IpRecvTos, &true).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Both roles put `-dscp` on every datagram they send, IPv4 and IPv6: the client
/// (the first datagram of a session) and the server (its reply, through a relay
/// that notes the TOS). Batched sends must not override the socket's marking.
#[test]
fn dscp_marks_the_datagrams_on_the_wire() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = backend.local_addr().unwrap().port();
    for (host, bracketed, expected) in [("127.0.0.1", "127.0.0.1", 46u8 << 2), ("::1", "[::1]", 46)] {
        // The server, marked; the client, unmarked, reaches it through the relay.
        let server_port = UdpSocket::bind((host, 0)).unwrap().local_addr().unwrap().port();
        let relay = udp_reporting_tos(host);
        let relay_port = relay.local_addr().unwrap().port();
        let local = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let flags = "-key dscp -crypt aes -mode fast3";
        let _procs = Procs(vec![
            kcpgate(&format!("server -l {bracketed}:{server_port} -t 127.0.0.1:{target} {flags} -dscp 46")),
            kcpgate(&format!("client -l 127.0.0.1:{local} -r {bracketed}:{relay_port} {flags} -dscp 46")),
        ]);
        let _tcp = support::connect_when_listening(local);
        let (first, _, tos) = recv_with_tos(&relay);
        assert_eq!(tos, expected, "{host}: the client's datagram carries the DSCP");
        relay.send_to(&first, (host, server_port)).unwrap();
        // The client may send more before the server's answer arrives.
        let tos = loop {
            let (_, from, tos) = recv_with_tos(&relay);
            if from.port() == server_port {
                break tos;
            }
        };
        assert_eq!(tos, expected, "{host}: the server's datagram carries the DSCP");
    }
}

/// A server bound to every address answers each peer from the address it dialled,
/// not from whichever address routes back to it: a client that reached a second
/// address (127.0.0.2 here, a second public IP in life) would drop the answers.
#[test]
fn a_server_on_every_address_answers_from_the_address_each_client_dialled() {
    use std::io::{Read, Write};
    let backend = support::echo_backend();
    for (listen, dial) in [("0.0.0.0", "127.0.0.2"), ("[::]", "127.0.0.2"), ("[::]", "[::1]"), ("0.0.0.0", "127.0.0.1")]
    {
        let udp = support::free_udp_port(&listen.replace(['[', ']'], ""));
        let local = support::free_tcp_port();
        let flags = "-key multihomed -crypt aes -admin off";
        let _procs = Procs(vec![
            kcpgate(&format!("server -l {listen}:{udp} -t 127.0.0.1:{backend} {flags}")),
            kcpgate(&format!("client -l 127.0.0.1:{local} -r {dial}:{udp} {flags}")),
        ]);
        let mut c = support::connect_when_listening(local);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"which address answers?").unwrap();
        let mut got = [0u8; 22];
        let read = c.read_exact(&mut got);
        assert!(
            read.is_ok() && &got == b"which address answers?",
            "server on {listen}, client dialling {dial}: {read:?}"
        );
    }
}
