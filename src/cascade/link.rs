//! Cascade links: one QUIC connection per pair of nodes, shared by all their rooms.
//!
//! QUIC gives, on one UDP port: TLS 1.3 encryption, unreliable datagrams for media
//! (a lost packet is not retransmitted behind the next one, as it would be on TCP),
//! and a reliable stream for control. Each node uses a fresh self-signed
//! certificate; authentication is by the cluster secret instead: each side sends an
//! HMAC of a value exported from *this* TLS session, so a stranger without the
//! secret gets nothing, and a relay in the middle (two TLS sessions) cannot pass
//! one side's proof to the other.
//!
//! When both nodes dial each other at once, the connection dialed by the node with
//! the smaller id is kept and the other is closed, on both sides alike.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use ring::hmac;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cascade::wire::{self, Control};
use crate::metrics::{self, Metrics};

/// How long a silent peer is given before its link counts as broken.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// How long the other side has to prove it holds the secret.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
const REDIAL_MIN: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(3);
/// Failed dials before a peer is given up (about a minute): a node that does not
/// come back is no longer dialed; a room that needs it asks again.
const MAX_DIALS: u32 = 25;
const ALPN: &[u8] = b"relais-cascade/1";
const EXPORT_LABEL: &[u8] = b"EXPORTER-relais-cascade";

/// Close codes sent to the peer.
const CLOSE_AUTH: u32 = 1;
const CLOSE_DUPLICATE: u32 = 2;
const CLOSE_PROTOCOL: u32 = 3;

/// What the links tell the cascade service.
#[derive(Debug)]
pub enum LinkEvent {
    Up { peer: String },
    Down { peer: String },
    Control { peer: String, message: Control },
}

/// Counters of one peer's link, kept across reconnections.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Node-wide link counters.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Connections refused because the peer could not prove the secret.
    pub auth_failures: AtomicU64,
    /// Datagrams that were not valid media for a known channel.
    pub garbage_datagrams: AtomicU64,
}

/// Where received media of one channel goes.
pub type MediaSink = mpsc::Sender<Bytes>;

struct Peer {
    connection: Connection,
    control: mpsc::UnboundedSender<Bytes>,
    /// The node that dialed this connection.
    dialer: String,
}

/// A connection to send a subscribed track's media on.
#[derive(Clone)]
pub struct MediaPath {
    connection: Connection,
    counters: Arc<PeerCounters>,
}

impl MediaPath {
    /// Sends one media datagram; false once the connection is gone.
    pub fn send(&self, datagram: Bytes) -> bool {
        let len = datagram.len() as u64;
        match self.connection.send_datagram(datagram) {
            Ok(()) => {
                self.counters.packets_sent.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
                true
            }
            Err(quinn::SendDatagramError::ConnectionLost(_)) => false,
            // Too large or unsupported: drop this one, keep the link.
            Err(_) => true,
        }
    }
}

pub struct Links {
    node_id: String,
    /// The node's metrics; absent for links made outside a node (tests).
    metrics: Option<Arc<Metrics>>,
    key: hmac::Key,
    endpoint: Endpoint,
    events: mpsc::UnboundedSender<LinkEvent>,
    pub counters: LinkCounters,
    /// Guarded state: held only for map updates, never across an await.
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    peers: HashMap<String, Peer>,
    peer_counters: HashMap<String, Arc<PeerCounters>>,
    /// Peers to keep a link to, with their address; redialed when the link drops.
    wanted: HashMap<String, SocketAddr>,
    dialing: HashSet<String>,
    /// Received media routes: (peer, channel) to the remote up-track.
    routes: HashMap<(String, u64), MediaSink>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cascade TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot bind the cascade port: {0}")]
    Bind(#[from] std::io::Error),
}

impl Links {
    /// Binds the cascade port and starts accepting links.
    pub fn start(
        node_id: String,
        secret: &str,
        bind: SocketAddr,
        events: mpsc::UnboundedSender<LinkEvent>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Links>, LinkError> {
        let (server, client) = tls_configs()?;
        let mut endpoint = Endpoint::server(server, bind)?;
        endpoint.set_default_client_config(client);
        let links = Arc::new(Links {
            node_id,
            metrics,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            endpoint,
            events,
            counters: LinkCounters::default(),
            state: Mutex::new(LinkState::default()),
        });
        tokio::spawn(links.clone().accept_loop());
        Ok(links)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Publishes how many links are up and how many wanted ones are down.
    fn count_links(&self, state: &LinkState) {
        if let Some(metrics) = &self.metrics {
            let up = state.peers.len();
            let down = state
                .wanted
                .keys()
                .filter(|p| !state.peers.contains_key(*p))
                .count();
            metrics.set_cascade_links(metrics::LinkState::Up, up);
            metrics.set_cascade_links(metrics::LinkState::Down, down);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        // Map updates only; a poisoned lock still holds consistent maps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a link to `peer` at `addr`, dialing now if there is none.
    pub fn want(self: &Arc<Self>, peer: &str, addr: SocketAddr) {
        if peer == self.node_id {
            return;
        }
        let dial = {
            let mut state = self.state();
            state.wanted.insert(peer.to_owned(), addr);
            !state.peers.contains_key(peer) && state.dialing.insert(peer.to_owned())
        };
        if dial {
            tokio::spawn(self.clone().dial_loop(peer.to_owned()));
        }
    }

    /// Stops keeping a link to `peer` (the link itself stays until it drops).
    pub fn unwant(&self, peer: &str) {
        self.state().wanted.remove(peer);
    }

    pub fn is_up(&self, peer: &str) -> bool {
        self.state().peers.contains_key(peer)
    }

    /// Sends a control message; false when there is no link to `peer` now (the
    /// `Up` event that follows a new link is the moment to resend state).
    pub fn send(&self, peer: &str, message: &Control) -> bool {
        let state = self.state();
        match state.peers.get(peer) {
            Some(p) => p.control.send(wire::encode_control(message)).is_ok(),
            None => false,
        }
    }

    /// The connection to send media to `peer` on, if the link is up.
    pub fn media_path(&self, peer: &str) -> Option<MediaPath> {
        let mut state = self.state();
        let connection = state.peers.get(peer)?.connection.clone();
        let counters = state
            .peer_counters
            .entry(peer.to_owned())
            .or_default()
            .clone();
        Some(MediaPath {
            connection,
            counters,
        })
    }

    /// Routes media that `peer` sends on `channel` to `sink`.
    pub fn route(&self, peer: &str, channel: u64, sink: MediaSink) {
        self.state().routes.insert((peer.to_owned(), channel), sink);
    }

    pub fn unroute(&self, peer: &str, channel: u64) {
        self.state().routes.remove(&(peer.to_owned(), channel));
    }

    /// Counters per peer, for the operations API and metrics.
    pub fn peer_counters(&self) -> Vec<(String, bool, Arc<PeerCounters>)> {
        let state = self.state();
        state
            .peer_counters
            .iter()
            .map(|(peer, c)| (peer.clone(), state.peers.contains_key(peer), c.clone()))
            .collect()
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let links = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        links.establish(connection, false).await;
                    }
                    Err(e) => debug!(error = %e, "cascade handshake failed"),
                }
            });
        }
    }

    async fn dial_loop(self: Arc<Self>, peer: String) {
        let mut pause = REDIAL_MIN;
        for attempt in 1.. {
            if attempt > MAX_DIALS {
                warn!(%peer, "cascade peer unreachable; giving up until it is needed again");
                self.state().wanted.remove(&peer);
                break;
            }
            let addr = self.state().wanted.get(&peer).copied();
            let Some(addr) = addr else { break };
            if self.state().peers.contains_key(&peer) {
                break;
            }
            match self.endpoint.connect(addr, "relais") {
                Ok(connecting) => match connecting.await {
                    Ok(connection) => {
                        if self.establish(connection, true).await {
                            break;
                        }
                    }
                    Err(e) => debug!(%peer, error = %e, "cascade dial failed"),
                },
                Err(e) => warn!(%peer, error = %e, "cannot dial cascade peer"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REDIAL_MAX);
        }
        self.state().dialing.remove(&peer);
    }

    fn proof(&self, connection: &Connection, dialer: bool, node: &str) -> Option<String> {
        let mut exported = [0u8; 32];
        connection
            .export_keying_material(&mut exported, EXPORT_LABEL, b"")
            .ok()?;
        let mut data = exported.to_vec();
        data.push(u8::from(dialer));
        data.extend_from_slice(node.as_bytes());
        Some(hex(hmac::sign(&self.key, &data).as_ref()))
    }

    /// Runs the hello exchange; on success registers the link and starts its
    /// tasks. Returns whether this connection became the peer's link.
    async fn establish(self: &Arc<Self>, connection: Connection, dialer: bool) -> bool {
        let streams = if dialer {
            connection.open_bi().await
        } else {
            tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi())
                .await
                .unwrap_or(Err(quinn::ConnectionError::TimedOut))
        };
        let Ok((mut send, mut recv)) = streams else {
            return false;
        };
        let Some(own_proof) = self.proof(&connection, dialer, &self.node_id) else {
            return false;
        };
        let hello = Control::Hello {
            node: self.node_id.clone(),
            proof: own_proof,
        };
        if send.write_all(&wire::encode_control(&hello)).await.is_err() {
            return false;
        }
        let answer = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut recv)).await;
        let peer = match answer {
            Ok(Ok(Control::Hello { node, proof }))
                if Some(&proof) == self.proof(&connection, !dialer, &node).as_ref()
                    && node != self.node_id =>
            {
                node
            }
            _ => {
                self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                warn!(remote = %connection.remote_address(), "cascade peer failed to authenticate");
                connection.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                return false;
            }
        };
        let dialed_by = if dialer {
            self.node_id.clone()
        } else {
            peer.clone()
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let replaced = {
            let mut state = self.state();
            if let Some(existing) = state.peers.get(&peer) {
                // Keep the connection dialed by the smaller node id.
                let preferred = self.node_id.clone().min(peer.clone());
                if existing.dialer == preferred || dialed_by != preferred {
                    drop(state);
                    connection.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate link");
                    return false;
                }
            }
            let seen_before = state.peer_counters.contains_key(&peer);
            state.peer_counters.entry(peer.clone()).or_default();
            if seen_before {
                if let Some(metrics) = &self.metrics {
                    metrics.cascade_reconnect();
                }
            }
            let replaced = state.peers.insert(
                peer.clone(),
                Peer {
                    connection: connection.clone(),
                    control: control_tx,
                    dialer: dialed_by,
                },
            );
            self.count_links(&state);
            replaced
        };
        if let Some(old) = replaced {
            old.connection
                .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate link");
        }
        info!(%peer, remote = %connection.remote_address(), "cascade link up");
        tokio::spawn(write_frames(send, control_rx));
        tokio::spawn(
            self.clone()
                .read_datagrams(peer.clone(), connection.clone()),
        );
        tokio::spawn(self.clone().read_control(peer.clone(), connection, recv));
        let _ = self.events.send(LinkEvent::Up { peer });
        true
    }

    async fn read_control(
        self: Arc<Self>,
        peer: String,
        connection: Connection,
        mut recv: RecvStream,
    ) {
        loop {
            match read_frame(&mut recv).await {
                Ok(message) => {
                    let _ = self.events.send(LinkEvent::Control {
                        peer: peer.clone(),
                        message,
                    });
                }
                Err(FrameError::Bad(e)) => {
                    warn!(%peer, error = %e, "cascade peer broke the protocol");
                    connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol error");
                    break;
                }
                Err(FrameError::Closed) => break,
            }
        }
        self.link_down(&peer, &connection);
    }

    async fn read_datagrams(self: Arc<Self>, peer: String, connection: Connection) {
        let counters = self
            .state()
            .peer_counters
            .entry(peer.clone())
            .or_default()
            .clone();
        let mut routes: HashMap<u64, MediaSink> = HashMap::new();
        while let Ok(datagram) = connection.read_datagram().await {
            let Ok((channel, rtp)) = wire::decode_media(&datagram) else {
                self.counters
                    .garbage_datagrams
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counters.packets_received.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_received
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
            // Channels are never reused on a node, so a route found once stays valid
            // until its up-track ends and closes the queue.
            let sink = match routes.get(&channel) {
                Some(sink) => Some(sink.clone()),
                None => {
                    let found = self.state().routes.get(&(peer.clone(), channel)).cloned();
                    if let Some(sink) = &found {
                        routes.insert(channel, sink.clone());
                    }
                    found
                }
            };
            let Some(sink) = sink else {
                self.counters
                    .garbage_datagrams
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // A full queue drops the packet, as a slow local subscriber would.
            if let Err(mpsc::error::TrySendError::Closed(_)) = sink.try_send(rtp) {
                routes.remove(&channel);
            }
        }
    }

    /// Forgets the link if `connection` is still the current one, and redials.
    fn link_down(self: &Arc<Self>, peer: &str, connection: &Connection) {
        let redial = {
            let mut state = self.state();
            let current = state
                .peers
                .get(peer)
                .is_some_and(|p| p.connection.stable_id() == connection.stable_id());
            if !current {
                return;
            }
            state.peers.remove(peer);
            state.routes.retain(|(p, _), _| p != peer);
            if let Some(c) = state.peer_counters.get(peer) {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.count_links(&state);
            state.wanted.contains_key(peer) && state.dialing.insert(peer.to_owned())
        };
        info!(%peer, "cascade link down");
        let _ = self.events.send(LinkEvent::Down {
            peer: peer.to_owned(),
        });
        if redial {
            tokio::spawn(self.clone().dial_loop(peer.to_owned()));
        }
    }
}

enum FrameError {
    Closed,
    Bad(wire::WireError),
}

async fn read_frame(recv: &mut RecvStream) -> Result<Control, FrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|_| FrameError::Closed)?;
    let len = wire::control_length(prefix).map_err(FrameError::Bad)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|_| FrameError::Closed)?;
    wire::decode_control(&body).map_err(FrameError::Bad)
}

async fn write_frames(mut send: SendStream, mut frames: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(frame) = frames.recv().await {
        if send.write_all(&frame).await.is_err() {
            break;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// TLS for both directions: a fresh self-signed certificate, and a client that
/// accepts any certificate because peers authenticate with the cluster secret.
fn tls_configs() -> Result<(quinn::ServerConfig, quinn::ClientConfig), LinkError> {
    let tls = |e: &dyn std::fmt::Display| LinkError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified =
        rcgen::generate_simple_self_signed(vec!["relais".to_owned()]).map_err(|e| tls(&e))?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SecretAuthenticated(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(Some(4 << 20));
    let transport = Arc::new(transport);
    let server_crypto = QuicServerConfig::try_from(server).map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(client).map_err(|e| tls(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

/// Accepts any server certificate, still checking the handshake signatures: the
/// peer is authenticated afterwards by its secret-keyed proof.
#[derive(Debug)]
struct SecretAuthenticated(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SecretAuthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
