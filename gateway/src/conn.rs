//! A stream's local end: a TCP connection, or a unix-socket connection, as kcptun
//! takes either. An address with a `/` in it is a unix socket path (kcptun takes
//! anything that is not host:port as one; kcpgate asks for the `/`, so that a
//! host without a port is refused at startup instead of dialled as a file).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::{tcp, unix, TcpListener, TcpStream, UnixListener, UnixStream};

/// Whether `addr` names a unix socket rather than a host and port.
pub fn is_unix_path(addr: &str) -> bool {
    addr.contains('/')
}

/// One local connection.
#[derive(Debug)]
pub enum Conn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-socket connection.
    Unix(UnixStream),
}

/// The reading half of a [`Conn`].
#[derive(Debug)]
pub enum ConnRead {
    /// A TCP connection's read half.
    Tcp(tcp::OwnedReadHalf),
    /// A unix-socket connection's read half.
    Unix(unix::OwnedReadHalf),
}

/// The writing half of a [`Conn`].
#[derive(Debug)]
pub enum ConnWrite {
    /// A TCP connection's write half.
    Tcp(tcp::OwnedWriteHalf),
    /// A unix-socket connection's write half.
    Unix(unix::OwnedWriteHalf),
}

impl Conn {
    /// Dials `target`: host:port over TCP, or a unix socket path.
    pub async fn connect(target: &str) -> io::Result<Conn> {
        if is_unix_path(target) {
            UnixStream::connect(target).await.map(Conn::Unix)
        } else {
            TcpStream::connect(target).await.map(Conn::Tcp)
        }
    }

    /// The other end's address (TCP only: a unix peer has none worth showing).
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Conn::Tcp(s) => s.peer_addr().ok(),
            Conn::Unix(_) => None,
        }
    }

    /// The halves; a TCP connection sends small writes at once (no Nagle delay).
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Tcp(s) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (ConnRead::Tcp(r), ConnWrite::Tcp(w))
            }
            Conn::Unix(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Unix(r), ConnWrite::Unix(w))
            }
        }
    }
}

impl ConnRead {
    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ConnRead::Tcp(r) => r.readable().await,
            ConnRead::Unix(r) => r.readable().await,
        }
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ConnRead::Tcp(r) => r.try_read(buf),
            ConnRead::Unix(r) => r.try_read(buf),
        }
    }
}

impl AsyncWrite for ConnWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            ConnWrite::Unix(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            ConnWrite::Unix(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            ConnWrite::Unix(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A client's local listener.
#[derive(Debug)]
pub enum LocalListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// The socket file is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl LocalListener {
    /// Listens on a unix socket path. A file already there is an error: it may be
    /// another program's socket.
    pub fn bind_unix(path: &str) -> io::Result<LocalListener> {
        UnixListener::bind(path).map(|l| LocalListener::Unix(l, PathBuf::from(path))).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(e.kind(), format!("{path} exists; remove it if no program uses it"))
            } else {
                e
            }
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Conn> {
        match self {
            LocalListener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            LocalListener::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }

    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            LocalListener::Tcp(l) => l.local_addr().map_or_else(|e| e.to_string(), |a| format!("TCP {a}")),
            LocalListener::Unix(_, path) => format!("unix socket {}", path.display()),
        }
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        if let LocalListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
