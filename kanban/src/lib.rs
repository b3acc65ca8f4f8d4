//! `aion-kanban`: the runtime kanban core over RabbitMQ.
//!
//! * [`message`]: the kanban (upstream's fields, JSON).
//! * [`topology`]: queue names and the queues a `services.yml` implies (pure).
//! * [`routing`]: where a kanban goes (pure; upstream's broker rules).
//! * [`router`]: the router process (consume, route, publish with confirms, ack, reconnect).
//! * [`lifecycle`]: on-demand start of microservice instances through the Kubernetes API.
//! * [`replicator`]: the SQLite record of every routed kanban (`aion-kanban log`).
//! * [`client`]: the library microservices use (receive, send, success/fail/requeue).
//! * [`output`]: producer-side routing in the client library (publish straight to the next
//!   input queues, a record copy for the runtime).
//! * [`config`]: `services.yml` source, reload on SIGHUP and file change.
//! * [`sweeper`]: the data sweeper (`data-sweeper.yml`).
//! * [`transfer`]: files of forwarded kanbans as verified chunks (wire format, staging).
//! * [`live`]: the live page's model (pure: instance states, rates, trails); [`live_serve`]: its
//!   HTTP shell (`run --live ADDR`).

// lapin::Error is large; our errors carry it on the cold (failure) path only.
#![allow(clippy::result_large_err)]

// The client library: all a microservice compiles with `default-features = false`.
pub mod amqp;
pub mod client;
pub mod config;
pub mod message;
pub mod output;
pub mod routing;
pub mod topology;

// The runtime (feature `runtime`, on by default): the `aion-kanban` binary's parts.
#[cfg(feature = "runtime")]
pub mod lifecycle;
#[cfg(feature = "runtime")]
pub mod live;
#[cfg(feature = "runtime")]
pub mod live_serve;
#[cfg(feature = "runtime")]
pub mod replicator;
#[cfg(feature = "runtime")]
pub mod router;
#[cfg(feature = "runtime")]
pub mod sweeper;
#[cfg(feature = "runtime")]
pub mod transfer;

pub use message::Kanban;
