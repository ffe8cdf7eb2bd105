//! The media plane: forwarding published tracks to their subscribers.
//!
//! The forwarding core is I/O-free: plain structs fed with packets and instants through
//! `handle_*` methods and drained through `poll_*` methods, never reading a clock or a socket.
//!
//! - [`codec`]: media kinds, video codecs and keyframe detection in RTP payloads.
//! - [`rewrite`]: per-subscriber RTP header rewriting into one continuous stream.
//! - [`keyframe`]: throttling of keyframe requests towards a publisher.
//! - [`forwarder`]: one per published track, fanning its packets out to its down-tracks.
//! - [`rates`]: what each layer of a published track costs, as measured.
//! - [`downlink`]: what a subscriber's estimates of its downlink are worth as a ceiling.
//! - [`allocator`]: fitting a subscriber's tracks and layers into its estimated downlink.
//! - [`layers`]: choosing one simulcast layer of a video track for one subscriber.
//! - [`speaker`]: audio levels (RFC 6464) and the dominant and current speakers.
//! - [`last_n`]: in a large room, whose video is forwarded: the most recent speakers.
//!
//! Around that core sit thin shells that own tasks and sockets:
//!
//! - [`uptrack`]: the task that reads a published track and drives its forwarder.
//! - [`downtrack`]: the tasks that deliver one track to one subscriber.
//! - [`feedback`]: the interceptor that surfaces subscribers' keyframe requests and
//!   estimates.
//! - [`layer_acks`]: the interceptor that keeps simulcast publishers naming their layers.

pub mod allocator;
pub mod codec;
pub mod downlink;
pub mod fanout;
pub mod forwarder;
pub mod keyframe;
pub mod last_n;
pub mod layers;
pub mod rates;
pub mod rewrite;
pub mod simulcast;
pub mod speaker;
pub mod voices;

pub mod downtrack;
pub mod feedback;
pub mod layer_acks;
pub mod uptrack;

/// Sleeps until `deadline`, or forever without one: the timer arm of the shells'
/// `select!` loops, whose I/O-free cores say when they next want the time.
pub(crate) async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
