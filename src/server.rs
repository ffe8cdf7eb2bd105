//! The HTTP edge: the signaling socket, health endpoints and the dev token endpoint.
//!
//! The socket at `/rtc` is upgraded only after the access token checks out, so a
//! refused client gets an HTTP 401 with a JSON reason instead of a socket that
//! closes without saying why.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::info;

use crate::auth::{self, AuthError, Grants, TokenRequest, Verifier};
use crate::cascade::link::{LinkEvent, Links};
use crate::cascade::Cascade;
use crate::cluster::{self, JoinHints, NodeLoad, Placement};
use crate::config::Config;
use crate::ids::RoomName;
use crate::load::procfs;
use crate::metrics::{self, JoinResult, Metrics};
use crate::participant::peer::PeerFactory;
use crate::participant::socket::{self, ReaderLimits};
use crate::participant::{NodeContext, Participant};
use crate::room::messages::{
    CascadeNotice, CloseAll, CutIdentity, GetRegistryStats, PlacementNotice,
};
use crate::room::registry::RoomRegistry;
use crate::signal::protocol::{LeaveReason, Limits};

/// State shared by every request handler.
pub struct AppState {
    pub config: Config,
    pub verifier: Verifier,
    pub node: Arc<NodeContext>,
    /// False while starting and once shutting down.
    pub ready: AtomicBool,
}

/// Frames above this many times the message limit end the socket instead of being refused.
const HARD_FRAME_FACTOR: usize = 16;

/// Runs the node until it is told to stop (SIGINT or SIGTERM).
///
/// On a signal the node drains: it marks itself draining, moves its rooms away
/// (in a cluster; a lone node tells everyone it is shutting down), waits for its
/// participants to go within the drain grace, revokes its lease and stops.
pub async fn run(config: Config) -> std::io::Result<()> {
    let metrics_listen = config.metrics.listen;
    let (server, addr, state) = start(config).await?;
    let (metrics_server, metrics_addr) = metrics::http::start(metrics_listen, state.node.clone())?;
    info!(addr = %metrics_addr, "metrics are served");
    let metrics_handle = metrics_server.handle();
    actix_web::rt::spawn(metrics_server);
    info!(%addr, node = %state.node.node_id, "relais is serving");
    let handle = server.handle();
    let shutdown_state = state.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        drain(&shutdown_state).await;
        handle.stop(true).await;
        metrics_handle.stop(true).await;
    });
    server.await
}

/// Moves or ends every meeting on this node, then leaves the cluster.
async fn drain(state: &AppState) {
    let node = &state.node;
    let clustered = !state.config.cluster.etcd_endpoints.is_empty();
    info!(clustered, "draining");
    node.placement.drain().await;
    let reason = if clustered {
        LeaveReason::Migrate
    } else {
        LeaveReason::ServerShutdown
    };
    let _ = node.registry.send(CloseAll { reason }).await;
    let deadline = tokio::time::Instant::now() + state.config.cluster.drain_grace;
    while tokio::time::Instant::now() < deadline {
        match node.registry.send(GetRegistryStats).await {
            Ok(stats) if stats.rooms > 0 => {}
            _ => break,
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    node.placement.leave().await;
    state.ready.store(false, Ordering::SeqCst);
    info!("drained; stopping");
}

/// How often a draining node checks whether its rooms are gone.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How often the node reports its load to the placement.
const LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(2);

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the node can only be killed; keep serving.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The address others reach a bound socket at: a wildcard bind is advertised at
/// `media.public_ip`, else on loopback.
fn reachable(config: &Config, bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        ip if ip.is_unspecified() => config
            .media
            .public_ip
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// The signaling URL other nodes send clients to.
fn advertise_url(config: &Config, addr: SocketAddr) -> String {
    if let Some(url) = &config.cluster.advertise_url {
        return url.trim_end_matches('/').to_owned();
    }
    format!("ws://{}", reachable(config, addr))
}

/// Binds and starts the server; returns it with its bound address.
pub async fn start(
    config: Config,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr, web::Data<AppState>)> {
    let listener = std::net::TcpListener::bind(config.http.listen)?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(&config.node.id, &config.node.region));
    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    let cascade = start_cascade(&config, link_tx, &metrics)?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let placement = cluster::start(
        &config,
        advertise_url(&config, addr),
        cascade.as_ref().map(|c| c.advertised),
        events_tx,
        metrics.clone(),
    )
    .await
    .map_err(std::io::Error::other)?;
    let registry =
        RoomRegistry::new(placement.clone(), cascade.clone(), config.room.clone()).start();
    let links = registry.clone();
    actix_web::rt::spawn(async move {
        while let Some(event) = link_rx.recv().await {
            links.do_send(match event {
                LinkEvent::Up { peer } => CascadeNotice::Up { peer },
                LinkEvent::Down { peer } => CascadeNotice::Down { peer },
                LinkEvent::Control { peer, message } => CascadeNotice::Control { peer, message },
            });
        }
    });
    let notices = registry.clone();
    actix_web::rt::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            notices.do_send(PlacementNotice { event });
        }
    });
    actix_web::rt::spawn(report_load(registry.clone(), placement.clone()));
    let limits = Limits {
        max_message_bytes: config.signaling.max_message_bytes,
        rate_per_sec: config.signaling.rate_per_sec,
        rate_burst: config.signaling.rate_burst,
    };
    let node = Arc::new(NodeContext {
        node_id: config.node.id.clone(),
        registry,
        placement,
        cascade,
        peers: PeerFactory::new(config.media.clone(), metrics.clone()),
        limits,
        metrics,
    });
    let state = web::Data::new(AppState {
        verifier: Verifier::new(&config.auth.keys),
        config: config.clone(),
        node,
        ready: AtomicBool::new(false),
    });

    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .route("/rtc", web::get().to(rtc))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/dev/token", web::get().to(dev_token))
            .route("/dev/disconnect", web::post().to(dev_disconnect))
            .configure(crate::admin::configure)
            .configure(crate::web::configure)
    })
    .shutdown_timeout(5)
    .disable_signals()
    .listen(listener)?;
    let server = server.run();
    state.ready.store(true, Ordering::SeqCst);
    Ok((server, addr, state))
}

/// Binds the cascade port when the node is part of a cluster.
fn start_cascade(
    config: &Config,
    events: mpsc::UnboundedSender<LinkEvent>,
    metrics: &Arc<Metrics>,
) -> std::io::Result<Option<Arc<Cascade>>> {
    let Some(secret) = config.cluster.cascade_secret.as_ref() else {
        return Ok(None);
    };
    if config.cluster.etcd_endpoints.is_empty() {
        return Ok(None);
    }
    let links = Links::start(
        config.node.id.clone(),
        &secret.0,
        config.cluster.cascade_listen,
        events,
        Some(metrics.clone()),
    )
    .map_err(std::io::Error::other)?;
    let bound = links.local_addr().unwrap_or(config.cluster.cascade_listen);
    let advertised = reachable(config, bound);
    info!(%advertised, "cascade port open");
    Ok(Some(Arc::new(Cascade::new(
        links,
        advertised,
        metrics.clone(),
    ))))
}

/// Tells the placement how busy this node is, every couple of seconds.
async fn report_load(registry: Addr<RoomRegistry>, placement: Arc<dyn Placement>) {
    let ticks = procfs::ticks_per_second();
    let pid = std::process::id();
    let mut last = procfs::sample(pid)
        .ok()
        .map(|s| (s, tokio::time::Instant::now()));
    loop {
        tokio::time::sleep(LOAD_REPORT_INTERVAL).await;
        let Ok(stats) = registry.send(GetRegistryStats).await else {
            return;
        };
        let now = tokio::time::Instant::now();
        let sample = procfs::sample(pid).ok();
        let cpu_ratio = match (last.take(), sample) {
            (Some((before, at)), Some(after)) => {
                let cpu = procfs::cpu_between(before, after, ticks);
                cpu.as_secs_f64() / now.duration_since(at).as_secs_f64().max(1e-3)
            }
            _ => 0.0,
        };
        last = sample.map(|s| (s, now));
        placement.report_load(NodeLoad {
            rooms: stats.rooms as u64,
            participants: stats.participants,
            tracks: stats.tracks,
            cpu_ratio,
        });
    }
}

#[derive(Deserialize)]
struct RtcQuery {
    room: Option<String>,
    access_token: Option<String>,
    /// The participant's region, when the token does not say.
    region: Option<String>,
    /// Set by clients that follow a `redirect`.
    #[serde(default)]
    redirected: Option<String>,
    /// The owner epoch a `redirect` carried.
    epoch: Option<i64>,
}

async fn rtc(
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<RtcQuery>,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let refused = |result| state.node.metrics.join(result);
    if !state.ready.load(Ordering::SeqCst) {
        refused(JoinResult::NotReady);
        return Ok(HttpResponse::ServiceUnavailable()
            .json(json!({"error": "not_ready", "message": "the node is not taking joins"})));
    }
    let token = query
        .access_token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&req));
    let room = match query.room.as_deref().map(RoomName::parse) {
        Some(Ok(room)) => room,
        Some(Err(e)) => {
            refused(JoinResult::BadRequest);
            return Ok(bad_request("bad_room_name", &e.to_string()));
        }
        None => {
            refused(JoinResult::BadRequest);
            let message = "the `room` query parameter is required";
            return Ok(bad_request("missing_room", message));
        }
    };
    let claims = match verify(&state, token.as_deref(), &room) {
        Ok(claims) => claims,
        Err(e) => {
            refused(JoinResult::Unauthorized);
            return Ok(unauthorized(&e));
        }
    };

    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let limits = state.node.limits.clone();
    let hard_cap = limits.max_message_bytes.saturating_mul(HARD_FRAME_FACTOR);
    let stream = stream
        .max_frame_size(hard_cap)
        .aggregate_continuations()
        .max_continuation_size(hard_cap);
    let outbox = socket::spawn_writer(session);
    let hints = JoinHints {
        region: claims.region.clone().or_else(|| query.region.clone()),
        redirected: matches!(query.redirected.as_deref(), Some("1" | "true")),
        epoch: query.epoch,
    };
    let participant =
        Participant::new(claims, room, hints, state.node.clone(), outbox.clone()).start();
    let reader_limits = ReaderLimits {
        max_message_bytes: limits.max_message_bytes,
        rate_per_sec: limits.rate_per_sec,
        rate_burst: limits.rate_burst,
    };
    socket::spawn_reader(stream, reader_limits, outbox, participant.recipient());
    Ok(response)
}

fn verify(
    state: &AppState,
    token: Option<&str>,
    room: &RoomName,
) -> Result<auth::Claims, AuthError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::MissingToken)?;
    state
        .verifier
        .verify(token, Some(room.as_str()), auth::now_unix())
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

fn unauthorized(e: &AuthError) -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({"error": e.code(), "message": e.to_string()}))
}

fn bad_request(code: &str, message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": code, "message": message}))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: serving, in touch with the cluster store, and the registry answers.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let status = state.node.placement.status();
    let stats = state.node.registry.send(GetRegistryStats).await.ok();
    let ready = state.ready.load(Ordering::SeqCst) && status.ready() && stats.is_some();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "node": state.node.node_id,
        "state": status.state.as_str(),
        "store_reachable": status.store_reachable,
        "rooms": stats.map(|s| s.rooms),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    name: Option<String>,
}

/// Hands out tokens for the local demo; exists only when `auth.dev_mode` is on.
async fn dev_token(query: web::Query<DevTokenQuery>, state: web::Data<AppState>) -> HttpResponse {
    if !state.config.auth.dev_mode {
        return HttpResponse::NotFound()
            .json(json!({"error": "not_found", "message": "dev mode is off"}));
    }
    if let Err(e) = RoomName::parse(&query.room) {
        return bad_request("bad_room_name", &e.to_string());
    }
    let Some((key, secret)) = state.config.auth.keys.iter().next() else {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"error": "no_api_key", "message": "no API key configured"}));
    };
    let request = TokenRequest {
        api_key: key.clone(),
        identity: query.identity.clone(),
        name: query.name.clone().unwrap_or_else(|| query.identity.clone()),
        room: query.room.clone(),
        grants: Grants {
            publish: true,
            subscribe: true,
            admin: false,
        },
        ttl: Duration::from_secs(6 * 3600),
    };
    match auth::mint(&request, secret, auth::now_unix()) {
        Ok(token) => HttpResponse::Ok().json(json!({"token": token})),
        Err(e) => HttpResponse::InternalServerError()
            .json(json!({"error": e.code(), "message": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct DevDisconnectQuery {
    room: String,
    identity: String,
}

/// Cuts an identity's sockets server-side, to rehearse reconnection; dev mode only.
async fn dev_disconnect(
    query: web::Query<DevDisconnectQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.config.auth.dev_mode {
        return HttpResponse::NotFound()
            .json(json!({"error": "not_found", "message": "dev mode is off"}));
    }
    let room = match RoomName::parse(&query.room) {
        Ok(room) => room,
        Err(e) => return bad_request("bad_room_name", &e.to_string()),
    };
    let cut = CutIdentity {
        room,
        identity: query.identity.clone(),
    };
    let count = state.node.registry.send(cut).await.unwrap_or(0);
    HttpResponse::Ok().json(json!({"disconnected": count}))
}
