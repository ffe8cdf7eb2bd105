//! The operations API: nodes, rooms and participants, for operators.
//!
//! Every request needs `Authorization: Bearer <token>` with the `admin` grant. A
//! token for room `*` administers the whole cluster; a token for one room may
//! only look at and act on that room.
//!
//! Listings come from the placement (etcd in a cluster), so any node answers
//! them. Requests about one room are answered by the room's owner: another node
//! forwards them there, stamped with the epoch it saw, and the owner refuses a
//! stamp that does not match its own epoch (`409 stale_epoch`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Claims};
use crate::cluster::{http, ClusterCounters, Epoch, Owner, PlacementError};
use crate::ids::RoomName;
use crate::room::messages::{CloseAll, GetRoomDetail, LookupRoom, RemoveIdentity};
use crate::server::AppState;
use crate::signal::protocol::LeaveReason;

/// The room claim of a token that administers every room.
pub const ALL_ROOMS: &str = "*";

/// How long a forwarded request may take on the owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/node", web::get().to(this_node))
        .route("/admin/nodes", web::get().to(list_nodes))
        .route("/admin/rooms", web::get().to(list_rooms))
        .route("/admin/rooms/{room}", web::get().to(show_room))
        .route("/admin/rooms/{room}", web::delete().to(end_room))
        .route(
            "/admin/rooms/{room}/participants/{identity}",
            web::delete().to(remove_participant),
        );
}

#[derive(Deserialize)]
struct EpochQuery {
    /// Set by a node that forwards the request to the owner.
    epoch: Option<Epoch>,
}

/// A refusal: status, machine-readable code and a message for people.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unknown_room() -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_room", "no such room")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": self.code, "message": self.message}))
    }
}

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        let status = match e {
            PlacementError::StaleEpoch { .. } => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

type ApiResult = Result<HttpResponse, ApiError>;

/// Checks the bearer token: admin grant, and the room (or all rooms) it covers.
fn authorize(req: &HttpRequest, state: &AppState, room: Option<&str>) -> Result<Claims, ApiError> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let claims = state
        .verifier
        .verify(token, None, auth::now_unix())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
    if !claims.grants.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the token lacks the admin grant",
        ));
    }
    let covers = claims.room == ALL_ROOMS || room.is_some_and(|r| r == claims.room);
    if !covers {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the token does not administer this room",
        ));
    }
    Ok(claims)
}

fn parse_room(raw: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_room_name", e.to_string()))
}

/// This node's own view: its state, and the rooms it acts as owner of now.
async fn this_node(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    authorize(&req, &state, None)?;
    let placement = &state.node.placement;
    // A fenced node owns nothing it may act on, whatever its map still holds.
    let acting = placement.gate().is_open_now();
    let rooms: Vec<_> = placement
        .owned_rooms()
        .into_iter()
        .map(|(room, epoch)| json!({"room": room, "epoch": epoch, "acting": acting}))
        .collect();
    let counters = placement.counters();
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let cascade = state.node.cascade.as_ref().map(|cascade| {
        let links = &cascade.links;
        let peers: Vec<_> = links
            .peer_counters()
            .into_iter()
            .map(|(peer, up, c)| {
                json!({
                    "peer": peer,
                    "up": up,
                    "packets_sent": count(&c.packets_sent),
                    "bytes_sent": count(&c.bytes_sent),
                    "packets_received": count(&c.packets_received),
                    "bytes_received": count(&c.bytes_received),
                    "reconnects": count(&c.reconnects),
                })
            })
            .collect();
        json!({
            "address": cascade.advertised.to_string(),
            "links": peers,
            "auth_failures": count(&links.counters.auth_failures),
            "garbage_datagrams": count(&links.counters.garbage_datagrams),
        })
    });
    Ok(HttpResponse::Ok().json(json!({
        "node": placement.node(),
        "status": placement.status(),
        "owned": rooms,
        "cascade": cascade,
        "counters": {
            "stale_epoch": count(&counters.stale_epoch),
            "fenced_joins": count(&counters.fenced_joins),
            "rooms_acquired": count(&counters.rooms_acquired),
            "rooms_lost": count(&counters.rooms_lost),
            "keepalive_failures": count(&counters.keepalive_failures),
        },
    })))
}

async fn list_nodes(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    authorize(&req, &state, None)?;
    let nodes = state.node.placement.nodes().await?;
    Ok(HttpResponse::Ok().json(json!({ "nodes": nodes })))
}

async fn list_rooms(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    authorize(&req, &state, None)?;
    let rooms = state.node.placement.rooms().await?;
    Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
}

/// Where a request about one room is answered.
enum Target {
    /// The room is open here.
    Local(actix::Addr<crate::room::room::Room>),
    /// Another node owns it.
    Remote(Owner),
}

async fn locate(
    state: &AppState,
    room: &RoomName,
    stamp: Option<Epoch>,
) -> Result<Target, ApiError> {
    let owner = state
        .node
        .placement
        .owner(room)
        .await?
        .ok_or_else(ApiError::unknown_room)?;
    if owner.node != state.node.node_id {
        if let Some(stamp) = stamp {
            // A forwarded request must not be forwarded again.
            return Err(stale(state, stamp, owner.epoch));
        }
        return Ok(Target::Remote(owner));
    }
    if let Some(stamp) = stamp.filter(|s| *s != owner.epoch) {
        return Err(stale(state, stamp, owner.epoch));
    }
    let lookup = LookupRoom { name: room.clone() };
    match state.node.registry.send(lookup).await {
        Ok(Some(addr)) => Ok(Target::Local(addr)),
        _ => Err(ApiError::unknown_room()),
    }
}

fn stale(state: &AppState, got: Epoch, current: Epoch) -> ApiError {
    ClusterCounters::bump(&state.node.placement.counters().stale_epoch);
    PlacementError::StaleEpoch { got, current }.into()
}

/// Authorizes a request about one room and finds where it is answered: the room
/// actor here (`Ok`), or the owner's answer to the forwarded request (`Err`).
async fn room_here(
    req: &HttpRequest,
    state: &AppState,
    raw_room: &str,
    stamp: Option<Epoch>,
) -> Result<Result<actix::Addr<crate::room::room::Room>, HttpResponse>, ApiError> {
    authorize(req, state, Some(raw_room))?;
    let room = parse_room(raw_room)?;
    match locate(state, &room, stamp).await? {
        Target::Local(addr) => Ok(Ok(addr)),
        Target::Remote(owner) => forward(req, &owner).await.map(Err),
    }
}

/// Sends the same request to the owner, stamped with its epoch.
async fn forward(req: &HttpRequest, owner: &Owner) -> ApiResult {
    let url = format!(
        "{}{}?epoch={}",
        crate::cluster::http_url_of(&owner.url),
        req.path(),
        owner.epoch
    );
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let response = http::request(req.method().as_str(), &url, authorization, FORWARD_TIMEOUT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "owner_unreachable",
                format!("the room's owner {} did not answer: {e}", owner.node),
            )
        })?;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(response.body))
}

async fn show_room(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EpochQuery>,
    state: web::Data<AppState>,
) -> ApiResult {
    let addr = match room_here(&req, &state, &path, query.epoch).await? {
        Ok(addr) => addr,
        Err(forwarded) => return Ok(forwarded),
    };
    let detail = addr
        .send(GetRoomDetail)
        .await
        .map_err(|_| ApiError::unknown_room())?;
    let tracks: Vec<_> = detail
        .participants
        .iter()
        .flat_map(|p| p.tracks.iter().cloned())
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "room": detail.room,
        "owner": state.node.node_id,
        "epoch": detail.epoch,
        "participants": detail.participants,
        "tracks": tracks,
        "nodes": detail.nodes,
    })))
}

async fn end_room(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EpochQuery>,
    state: web::Data<AppState>,
) -> ApiResult {
    let addr = match room_here(&req, &state, &path, query.epoch).await? {
        Ok(addr) => addr,
        Err(forwarded) => return Ok(forwarded),
    };
    addr.do_send(CloseAll {
        reason: LeaveReason::RoomClosed,
    });
    Ok(HttpResponse::Ok().json(json!({"ended": path.as_str()})))
}

async fn remove_participant(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<EpochQuery>,
    state: web::Data<AppState>,
) -> ApiResult {
    let (raw_room, identity) = path.into_inner();
    let addr = match room_here(&req, &state, &raw_room, query.epoch).await? {
        Ok(addr) => addr,
        Err(forwarded) => return Ok(forwarded),
    };
    let removed = addr.send(RemoveIdentity { identity }).await.unwrap_or(0);
    if removed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_participant",
            "no participant with this identity in the room",
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"removed": removed})))
}
