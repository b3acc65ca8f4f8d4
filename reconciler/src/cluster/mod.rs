//! The cluster side: compare rendered manifests with the live cluster ([`plan`]), converge it
//! ([`apply_plan`]), wait for it ([`wait_ready`]), report ([`status`]) and tear down
//! ([`down`]). One submodule per concern: `kinds` (what we manage, what an inventory owns),
//! `plan`, `apply`, `wait`, `down`, `status`, `bootstrap` (the cluster steps of a host plan:
//! Flannel, taints, node readiness, over the same comparison, apply and polling), with `error` and `options` shared by them (the
//! submodules import each other and these leaves, never this facade); beside them the pure `normalize` (comparison,
//! readiness), `generated` (values the first apply makes up) and `history` (revisions).
//!
//! * Comparison is a **server-side dry-run apply** (field manager [`crate::manifest::FIELD_MANAGER`]) against the
//!   live object, both [normalised](normalize::normalize): no client-side defaulting noise, and an
//!   object whose dry-run equals the live one is left alone (its resourceVersion never moves).
//! * **Ownership**: every rendered object carries `app.kubernetes.io/managed-by=aion-reconcile`
//!   and `aion.latona.io/inventory=<inventory>`. Prune and `down` list only objects carrying both
//!   labels for *this* inventory, of the kinds we render ([`MANAGED_KINDS`]); nothing else is ever
//!   deleted.
//! * **Order**: namespaces, RBAC, config, workloads, services ([`crate::manifest::kind_rank`]);
//!   deletes in reverse. Within one rank, requests run with bounded concurrency.

mod apply;
pub mod bootstrap;
mod down;
mod error;
pub mod generated;
pub mod history;
mod kinds;
pub mod normalize;
mod options;
pub mod peers;
mod plan;
mod status;
mod wait;

pub use apply::{ExecuteReport, apply_objects, apply_plan};
pub use down::down;
pub use error::ClusterError;
pub use kinds::{MANAGED_KINDS, ManagedKind, list_owned, ownership_selector};
pub use normalize::Readiness;
pub use options::{ClusterApplyOptions, DEFAULT_CONCURRENCY, Event, ProgressFn};
pub use plan::{ClusterPlan, ObjectAction, ObjectChange, ObjectCounts, plan, plan_with};
pub use status::{PodPlacement, StatusRow, status};
pub use wait::{wait_pruned, wait_ready};
