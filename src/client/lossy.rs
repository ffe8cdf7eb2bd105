//! A fault hook in the client's own socket layer: drops some inbound RTP.
//!
//! Loopback never loses packets and the kernel here has no `netem`, so recovery
//! paths (NACK and retransmission) are exercised by a runtime that wraps the
//! `webrtc` crate's tokio runtime and discards every n-th incoming media packet.
//! Only single RTP datagrams are dropped: STUN, DTLS and RTCP pass, so the
//! connection comes up as usual and only media is lossy.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// A tokio runtime whose UDP sockets drop every `every`-th inbound RTP packet.
#[derive(Debug)]
pub struct LossyRuntime {
    inner: TokioRuntime,
    every: u64,
    /// Packets dropped so far, for the test to check that loss really happened.
    pub dropped: Arc<AtomicU64>,
}

impl LossyRuntime {
    pub fn new(every: u64) -> Self {
        Self {
            inner: TokioRuntime,
            every: every.max(2),
            dropped: Arc::default(),
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Runtime for LossyRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = self.inner.wrap_udp_socket(socket)?;
        let seen = AtomicU64::new(0);
        let (every, dropped) = (self.every, self.dropped.clone());
        Ok(Arc::new(LossySocket {
            inner,
            every,
            seen,
            dropped,
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> BoxFuture<'a, io::Result<Arc<dyn AsyncTcpStream>>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.inner.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }
}

struct LossySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    every: u64,
    seen: AtomicU64,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for LossySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossySocket")
            .field("every", &self.every)
            .finish()
    }
}

/// RTP, not RTCP: version 2 and a payload type outside RTCP's 64..=95 range.
fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [first, second, ..] => first >> 6 == 2 && !(64..=95).contains(&(second & 0x7f)),
        _ => false,
    }
}

impl AsyncUdpSocket for LossySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = self.inner.poll_recv(cx, bufs, meta);
            let Poll::Ready(Ok(1)) = received else {
                return received;
            };
            // Only a lone, uncoalesced RTP datagram is a candidate for loss.
            let single = meta[0].stride == meta[0].len;
            if !(single && is_rtp(&bufs[0][..meta[0].len])) {
                return received;
            }
            if self.seen.fetch_add(1, Ordering::Relaxed) % self.every != self.every - 1 {
                return received;
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
