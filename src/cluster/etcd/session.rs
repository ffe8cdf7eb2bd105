//! The session: the lease, the membership record, keep-alives and the fencing
//! deadline they move, and reclaiming rooms after a lost lease.

use super::*;

impl EtcdPlacement {
    pub(super) async fn run_session(self: Arc<Self>) {
        let mut clock = LeaseClock::new(self.ttl);
        let mut quiet = false;
        while !self.leaving.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let mut client = self.client.clone();
            let ttl = self.ttl.as_secs() as i64;
            let lease = match self.call(client.lease_grant(ttl, None)).await {
                Ok(granted) => granted.id(),
                Err(e) => {
                    // One warning per outage; the retries in between stay quiet.
                    if !quiet {
                        warn!(error = %e, "cannot obtain a cluster lease; retrying");
                        quiet = true;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            quiet = false;
            clock.granted(sent);
            self.shared().lease = Some(lease);
            match self.register(lease).await {
                Ok(()) => {
                    // Rooms owned elsewhere by now must be given up before the
                    // gate opens, or this node would act on them for a moment.
                    self.reclaim_rooms(lease).await;
                    self.gate.open_until(clock.deadline());
                    info!(lease, "registered in the cluster");
                }
                Err(e) => warn!(error = %e, "cannot register in the cluster; retrying"),
            }
            self.keep_alive(lease, &mut clock).await;
            self.shared().registered = false;
        }
    }

    /// Writes the membership record on `lease`.
    pub(super) async fn register(&self, lease: i64) -> Result<(), PlacementError> {
        // Written only while the node holds its lease, so never "fenced".
        let mut node = self.shared().node.clone();
        if self.draining.load(Ordering::SeqCst) {
            node.state = NodeState::Draining;
        }
        let key = self.keys.node(&node.id);
        let options = PutOptions::new().with_lease(lease);
        let mut client = self.client.clone();
        self.call(client.put(key, encode(&node), Some(options)))
            .await?;
        self.shared().registered = true;
        Ok(())
    }

    /// Sends keep-alives on `lease` until it is lost or the node leaves.
    pub(super) async fn keep_alive(&self, lease: i64, clock: &mut LeaseClock) {
        let mut stream = None;
        let mut fenced_logged = false;
        loop {
            tokio::time::sleep(clock.keepalive_interval()).await;
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            if stream.is_none() {
                let mut client = self.client.clone();
                stream = self.call(client.lease_keep_alive(lease)).await.ok();
            }
            let sent = Instant::now();
            let answer = match stream.as_mut() {
                Some((keeper, responses)) => {
                    let exchange = async {
                        keeper.keep_alive().await?;
                        responses.message().await
                    };
                    self.call(exchange).await
                }
                None => Err(PlacementError::Unavailable("no keep-alive stream".into())),
            };
            match answer {
                Ok(Some(response)) => {
                    if !clock.acknowledged(sent, response.ttl()) {
                        warn!(lease, "the cluster lease expired; registering again");
                        self.gate.open_until(None);
                        return;
                    }
                    self.gate.open_until(clock.deadline());
                    if fenced_logged {
                        info!(
                            lease,
                            "the cluster lease was renewed in time; no longer fenced"
                        );
                        fenced_logged = false;
                        let _ = self.register(lease).await;
                    }
                }
                Ok(None) | Err(_) => {
                    ClusterCounters::bump(&self.counters.keepalive_failures);
                    self.set_reachable(false);
                    stream = None;
                }
            }
            let now = Instant::now();
            if !clock.is_valid(now) && !fenced_logged {
                warn!(lease, "cannot renew the cluster lease in time: fenced");
                fenced_logged = true;
            }
            // Past the TTL itself the lease is surely gone: start over.
            if clock.deadline().is_none_or(|d| now > d + self.ttl) {
                self.gate.open_until(None);
                return;
            }
        }
    }

    /// After a new lease, takes back the rooms still open here, or gives them up
    /// to whoever owns them now.
    pub(super) async fn reclaim_rooms(&self, lease: i64) {
        let shards: Vec<RoomName> = self.shared().shards.iter().cloned().collect();
        for room in &shards {
            if let Err(e) = self.register_shard(room, lease).await {
                warn!(%room, error = %e, "cannot register shard again");
            }
        }
        let rooms: Vec<(RoomName, Epoch)> = self
            .shared()
            .owned
            .iter()
            .map(|(r, e)| (r.clone(), *e))
            .collect();
        for (room, old) in rooms {
            match self.claim(&room, lease).await {
                Ok(Claim::Won(epoch)) if epoch == old => {}
                Ok(Claim::Won(epoch)) => {
                    info!(%room, old, epoch, "room reclaimed under a new epoch");
                    self.shared().owned.insert(room.clone(), epoch);
                    let _ = self.events.send(PlacementEvent::RoomEpoch { room, epoch });
                }
                Ok(Claim::Lost(owner)) => {
                    warn!(%room, owner = %owner.node, epoch = owner.epoch,
                        "room is owned elsewhere now; closing it here");
                    self.lose(&room);
                }
                Err(e) => warn!(%room, error = %e, "cannot reclaim room; will retry"),
            }
        }
    }
}
