//! What the placement counts, carried into the metric families; and which etcd request is
//! which operation.

use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{
    DeleteResponse, GetResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseKeepAliveStream,
    LeaseKeeper, LeaseRevokeResponse, PutResponse, TxnResponse, WatchStream,
};
use prometheus::IntCounter;

use super::{EtcdOperation, Fencing, Metrics, NodeState, OwnershipChange};
use crate::cluster::{self, ClusterCounters};

impl Metrics {
    /// Brings the node state and the placement's counters into the families; called on
    /// every scrape, so the placement keeps plain atomics and needs no metrics of its own.
    pub fn sync_placement(&self, state: cluster::NodeState, counters: &ClusterCounters) {
        self.set_node_state(match state {
            cluster::NodeState::Serving => NodeState::Serving,
            cluster::NodeState::Draining => NodeState::Draining,
            cluster::NodeState::Fenced => NodeState::Fenced,
        });
        let fencing = |kind: Fencing| self.fencing_counter(kind);
        let ownership = |reason: OwnershipChange| self.ownership_counter(reason);
        catch_up(&fencing(Fencing::StaleEpoch), &counters.stale_epoch);
        catch_up(&fencing(Fencing::FencedNode), &counters.fenced_joins);
        catch_up(
            &ownership(OwnershipChange::Acquired),
            &counters.rooms_acquired,
        );
        catch_up(&ownership(OwnershipChange::Lost), &counters.rooms_lost);
        catch_up(&self.keepalive_failures, &counters.keepalive_failures);
    }
}

/// Raises `counter` to the placement's count. Only this function adds to these series, so
/// the counter's value is the count it last saw.
fn catch_up(counter: &IntCounter, source: &AtomicU64) {
    let (now, seen) = (source.load(Ordering::Relaxed), counter.get());
    if now > seen {
        counter.inc_by(now - seen);
    }
}

/// The etcd operation a response type answers, so that a request helper generic over the
/// response can time every request under the right label.
pub trait EtcdRequest {
    const OPERATION: EtcdOperation;
}

macro_rules! etcd_request {
    ($($response:ty => $operation:ident,)+) => {
        $(impl EtcdRequest for $response {
            const OPERATION: EtcdOperation = EtcdOperation::$operation;
        })+
    };
}

etcd_request! {
    GetResponse => Get,
    PutResponse => Put,
    DeleteResponse => Delete,
    TxnResponse => Txn,
    LeaseGrantResponse => LeaseGrant,
    (LeaseKeeper, LeaseKeepAliveStream) => LeaseKeepalive,
    Option<LeaseKeepAliveResponse> => LeaseKeepalive,
    LeaseRevokeResponse => LeaseRevoke,
    WatchStream => Watch,
}
