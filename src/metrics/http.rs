//! The metrics listener: `GET /metrics` in the Prometheus text format, on an address of its
//! own so that it can stay on a private interface while signaling faces the clients.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};

use super::RoomRole;
use crate::participant::NodeContext;
use crate::room::messages::GetRegistryStats;

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `listen` and starts serving; returns the server with its bound address.
pub fn start(listen: SocketAddr, node: Arc<NodeContext>) -> std::io::Result<(Server, SocketAddr)> {
    let data = web::Data::from(node);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(metrics))
    })
    // A scrape every few seconds needs no more than one worker.
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(listen)?;
    let addr = server.addrs().first().copied().unwrap_or(listen);
    Ok((server.run(), addr))
}

async fn metrics(node: web::Data<NodeContext>) -> HttpResponse {
    // A room open here is owned by this node or is a shard of a room owned elsewhere.
    if let Ok(stats) = node.registry.send(GetRegistryStats).await {
        let owned = node.placement.owned_rooms().len().min(stats.rooms);
        node.metrics.set_rooms(RoomRole::Owner, owned);
        node.metrics.set_rooms(RoomRole::Shard, stats.rooms - owned);
    }
    let placement = &node.placement;
    node.metrics
        .sync_placement(placement.status().state, placement.counters());
    HttpResponse::Ok()
        .content_type(TEXT_FORMAT)
        .body(node.metrics.encode())
}
