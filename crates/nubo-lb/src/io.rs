//! The proxy's I/O behind two small traits: a byte stream it can split in two and ask whether a
//! kept-alive connection is still open ([`Stream`]), and a way to reach a member ([`Connect`]).
//! TCP in production ([`Tcp`]); in-memory pipes in the proxy's tests, which then need no socket
//! and run on a paused clock.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection the proxy reads and writes.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half of [`Stream::split`].
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing half of [`Stream::split`].
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Both halves, to read and write at once (a body streaming while the answer is read).
    fn split(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
    /// Whether a kept-alive connection is still open: `false` once the peer closed it.
    fn still_open(&self) -> bool;
}

/// A way to reach a member.
pub trait Connect: Clone + Send + Sync + 'static {
    /// Its connections.
    type Stream: Stream;
    /// A connection to `addr`.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Members over TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Connect for Tcp {
    type Stream = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Stream for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn split(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        TcpStream::split(self)
    }

    /// Readiness comes from the last epoll report, so an idle connection the member closed
    /// reads as ready (no system call unless it does).
    fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// In-memory pipes: an HTTP/2 request on its way to the HTTP/1 proxy ([`crate::h2`]), and the
/// proxy's tests.
impl Stream for tokio::io::DuplexStream {
    type Read<'a> = tokio::io::ReadHalf<&'a mut tokio::io::DuplexStream>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut tokio::io::DuplexStream>;

    fn split(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }

    /// A pipe cannot tell without reading: a write to a closed one fails, and the proxy
    /// then tries a fresh connection.
    fn still_open(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory network for the proxy's tests: members listen on made-up addresses, and
    //! connections are `tokio::io::duplex` pipes.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    use super::*;

    /// Pipe buffer size (large enough that a 1 MiB answer streams through in a few rounds).
    const PIPE: usize = 64 * 1024;

    /// The network: who listens where.
    #[derive(Clone, Default)]
    pub(crate) struct Net {
        listeners: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<DuplexStream>>>>,
        next: Arc<std::sync::atomic::AtomicU16>,
    }

    impl Net {
        /// A new address nobody listens on yet.
        pub(crate) fn address(&self) -> SocketAddr {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 8080))
        }

        /// Listens on a new address: the connections made to it.
        pub(crate) fn listen(&self) -> (SocketAddr, mpsc::UnboundedReceiver<DuplexStream>) {
            let addr = self.address();
            let (tx, rx) = mpsc::unbounded_channel();
            self.listeners.lock().expect("net").insert(addr, tx);
            (addr, rx)
        }

        /// A client connection to a proxy port: the client's end and the proxy's.
        pub(crate) fn pipe() -> (DuplexStream, DuplexStream) {
            tokio::io::duplex(PIPE)
        }
    }

    impl Connect for Net {
        type Stream = DuplexStream;

        async fn connect(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
            let tx = self.listeners.lock().expect("net").get(&addr).cloned();
            let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
            let tx = tx.ok_or_else(refused)?;
            let (ours, theirs) = tokio::io::duplex(PIPE);
            tx.send(theirs).map_err(|_| refused())?;
            Ok(ours)
        }
    }
}
