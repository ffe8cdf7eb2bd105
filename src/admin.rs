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

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
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
    cfg.route("/admin/nodes", web::get().to(list_nodes))
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

fn error(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": code, "message": message}))
}

fn placement_error(e: &PlacementError) -> HttpResponse {
    use actix_web::http::StatusCode;
    let status = match e {
        PlacementError::StaleEpoch { .. } => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.code(), &e.to_string())
}

/// Checks the bearer token: admin grant, and the room (or all rooms) it covers.
fn authorize(
    req: &HttpRequest,
    state: &AppState,
    room: Option<&str>,
) -> Result<Claims, HttpResponse> {
    use actix_web::http::StatusCode;
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
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string()))?;
    if !claims.grants.admin {
        return Err(error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the token lacks the admin grant",
        ));
    }
    let covers = claims.room == ALL_ROOMS || room.is_some_and(|r| r == claims.room);
    if !covers {
        return Err(error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the token does not administer this room",
        ));
    }
    Ok(claims)
}

fn parse_room(raw: &str) -> Result<RoomName, HttpResponse> {
    RoomName::parse(raw).map_err(|e| {
        error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "bad_room_name",
            &e.to_string(),
        )
    })
}

async fn list_nodes(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = authorize(&req, &state, None) {
        return refused;
    }
    match state.node.placement.nodes().await {
        Ok(nodes) => HttpResponse::Ok().json(json!({ "nodes": nodes })),
        Err(e) => placement_error(&e),
    }
}

async fn list_rooms(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = authorize(&req, &state, None) {
        return refused;
    }
    match state.node.placement.rooms().await {
        Ok(rooms) => HttpResponse::Ok().json(json!({ "rooms": rooms })),
        Err(e) => placement_error(&e),
    }
}

/// Where a request about one room is answered.
enum Target {
    /// The room is open here at this epoch.
    Local(actix::Addr<crate::room::room::Room>),
    /// Another node owns it.
    Remote(Owner),
}

async fn locate(
    state: &AppState,
    room: &RoomName,
    stamp: Option<Epoch>,
) -> Result<Target, HttpResponse> {
    use actix_web::http::StatusCode;
    let owner = state
        .node
        .placement
        .owner(room)
        .await
        .map_err(|e| placement_error(&e))?;
    let Some(owner) = owner else {
        return Err(error(StatusCode::NOT_FOUND, "unknown_room", "no such room"));
    };
    if owner.node != state.node.node_id {
        if stamp.is_some() {
            // A forwarded request must not be forwarded again.
            return Err(stale(state, stamp.unwrap_or_default(), owner.epoch));
        }
        return Ok(Target::Remote(owner));
    }
    if let Some(stamp) = stamp.filter(|s| *s != owner.epoch) {
        return Err(stale(state, stamp, owner.epoch));
    }
    let lookup = LookupRoom { name: room.clone() };
    match state.node.registry.send(lookup).await {
        Ok(Some(addr)) => Ok(Target::Local(addr)),
        _ => Err(error(StatusCode::NOT_FOUND, "unknown_room", "no such room")),
    }
}

fn stale(state: &AppState, got: Epoch, current: Epoch) -> HttpResponse {
    ClusterCounters::bump(&state.node.placement.counters().stale_epoch);
    placement_error(&PlacementError::StaleEpoch { got, current })
}

/// Sends the same request to the owner, stamped with its epoch.
async fn forward(req: &HttpRequest, owner: &Owner) -> HttpResponse {
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
    match http::request(req.method().as_str(), &url, authorization, FORWARD_TIMEOUT).await {
        Ok(response) => {
            let status = actix_web::http::StatusCode::from_u16(response.status)
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
            HttpResponse::build(status)
                .content_type("application/json")
                .body(response.body)
        }
        Err(e) => error(
            actix_web::http::StatusCode::BAD_GATEWAY,
            "owner_unreachable",
            &format!("the room's owner {} did not answer: {e}", owner.node),
        ),
    }
}

async fn show_room(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EpochQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(refused) = authorize(&req, &state, Some(&path)) {
        return refused;
    }
    let room = match parse_room(&path) {
        Ok(room) => room,
        Err(refused) => return refused,
    };
    match locate(&state, &room, query.epoch).await {
        Ok(Target::Local(addr)) => match addr.send(GetRoomDetail).await {
            Ok(detail) => {
                let tracks: Vec<_> = detail
                    .participants
                    .iter()
                    .flat_map(|p| p.tracks.iter().cloned())
                    .collect();
                HttpResponse::Ok().json(json!({
                    "room": detail.room,
                    "owner": state.node.node_id,
                    "epoch": detail.epoch,
                    "participants": detail.participants,
                    "tracks": tracks,
                    "nodes": [state.node.node_id],
                }))
            }
            Err(_) => error(
                actix_web::http::StatusCode::NOT_FOUND,
                "unknown_room",
                "the room closed",
            ),
        },
        Ok(Target::Remote(owner)) => forward(&req, &owner).await,
        Err(refused) => refused,
    }
}

async fn end_room(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EpochQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(refused) = authorize(&req, &state, Some(&path)) {
        return refused;
    }
    let room = match parse_room(&path) {
        Ok(room) => room,
        Err(refused) => return refused,
    };
    match locate(&state, &room, query.epoch).await {
        Ok(Target::Local(addr)) => {
            addr.do_send(CloseAll {
                reason: LeaveReason::RoomClosed,
            });
            HttpResponse::Ok().json(json!({"ended": room.as_str()}))
        }
        Ok(Target::Remote(owner)) => forward(&req, &owner).await,
        Err(refused) => refused,
    }
}

async fn remove_participant(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<EpochQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (raw_room, identity) = path.into_inner();
    if let Err(refused) = authorize(&req, &state, Some(&raw_room)) {
        return refused;
    }
    let room = match parse_room(&raw_room) {
        Ok(room) => room,
        Err(refused) => return refused,
    };
    match locate(&state, &room, query.epoch).await {
        Ok(Target::Local(addr)) => {
            let removed = addr
                .send(RemoveIdentity {
                    identity: identity.clone(),
                })
                .await
                .unwrap_or(0);
            if removed == 0 {
                return error(
                    actix_web::http::StatusCode::NOT_FOUND,
                    "unknown_participant",
                    "no participant with this identity in the room",
                );
            }
            HttpResponse::Ok().json(json!({"removed": removed}))
        }
        Ok(Target::Remote(owner)) => forward(&req, &owner).await,
        Err(refused) => refused,
    }
}
