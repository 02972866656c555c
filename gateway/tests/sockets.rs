//! Socket options kcptun sets on its UDP sockets (§4.5, §8.8).

use kcpgate::runtime::tune_udp;

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
