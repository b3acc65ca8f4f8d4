//! The imperative shell: gather facts on every host (one round trip each, in parallel up to a
//! cap), build the [`Plan`], and execute that same plan in phases — every host's runtime
//! ([`apply_runtime`]), the images ([`apply_images`]), then masters (the rest of their host
//! changes, then their cluster steps), then workers in parallel ([`apply`]). A failing or unreachable host stops only
//! itself; workers are skipped, with the reason, when no master converged.
//!
//! * [`gather`]: facts and the plan ([`plan_all`]);
//! * [`hosts`]: the host phases ([`apply_runtime`], [`apply`]) and each action;
//! * [`batch`]: several script steps in one round trip;
//! * [`images_phase`]: sending images, removing old ones;
//! * `outcome`: what the phases share (how a step and a host ended, the context).
//!
//! The cluster steps of a host plan go through [`crate::cluster::bootstrap`].

mod batch;
mod gather;
mod hosts;
mod images_phase;
mod outcome;

pub use gather::{GatherError, gather, local_facts, plan_all, route_images};
pub use hosts::{apply, apply_runtime, write_local_secret};
pub use images_phase::{apply_images, remove_old_images, send_images};
pub use outcome::{ApplyReport, Context, HostOutcome, StepFailure, TAIL_LINES};

#[cfg(test)]
mod tests;
