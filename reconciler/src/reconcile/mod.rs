//! Plan and apply, as the `plan` and `apply` commands run them; the commands only turn flags
//! into [`Options`] and print.
//!
//! * [`load_and_render`]: the inventory and every host's `services.yml`, rendered to manifests
//!   (also for `render`, `diff` and `status`).
//! * [`prepare`]: load the inventory, render the roles, connect to every host; [`plan_both`]:
//!   the host plan and the cluster part, side by side; [`plan`]: both, for `plan`.
//! * [`apply`]: plan read-only, and when anything would change, the phases in order — lock,
//!   re-plan under the locks, hosts in phases, images, cluster plan, cluster apply, then wait
//!   when asked.
//!   It executes exactly the plan it shows (through the caller's [`ShowPlan`]); re-running
//!   resumes, since the facts show what is already done.
//!
//! Besides the shown plan, only diagnostics (warnings on stderr) and the progress of the run
//! are printed from here; the summary is the caller's.
//!
//! One submodule per part: `prepare` (load, render, connect, plan), `apply` (the phases),
//! `locks` (held while anything changes), `rollback`, `phase` (how a phase after the hosts
//! ended; leaf). This facade only re-exports.

mod apply;
mod locks;
mod phase;
mod prepare;
mod rollback;

pub use apply::{ApplyOptions, Outcome, ShowPlan, Shown, apply};
pub use phase::{PhaseError, PhaseResult, phase_json};
pub use prepare::{
    ClusterPart, Options, Prepared, close, load_and_render, load_inventory, nothing_to_do, plan,
    plan_both, plan_cluster, plan_hosts, prepare, state_dir, wanted_images,
};
pub use rollback::{ConfirmRollback, RollbackOptions, RollbackOutcome, rollback};
