//! What the phases share: how a step and a host ended, the report, the context.

use crate::cluster::bootstrap::ClusterOps;
use crate::host::{Connections, Host};
use crate::images;
use crate::progress::{Log, Progress};

/// Lines of a failing step's output shown on the terminal.
pub const TAIL_LINES: usize = 15;

/// Why a step failed: a short error for the summary, and the step's full output for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub error: String,
    pub output: String,
}

impl StepFailure {
    /// A failure with nothing to log beyond its error (the transport broke, a local write).
    pub fn bare(error: impl std::fmt::Display) -> StepFailure {
        StepFailure {
            error: error.to_string(),
            output: String::new(),
        }
    }
    pub fn with_output(error: String, output: String) -> StepFailure {
        StepFailure { error, output }
    }
}

/// A step's text for the log, or why it failed.
pub(super) type StepResult = Result<String, StepFailure>;

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HostOutcome {
    Converged { changed: usize },
    Failed { step: String, error: String },
    Unreachable { error: String },
    Skipped { reason: String },
}

impl HostOutcome {
    pub fn ok(&self) -> bool {
        matches!(self, HostOutcome::Converged { .. })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub hosts: Vec<(String, HostOutcome)>,
    pub changed: usize,
    /// What each host received in the images phase.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub images: Vec<(String, images::Received)>,
    /// Old image versions each host removed after the new pods were ready.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub image_removals: Vec<(String, Vec<String>)>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.hosts.iter().all(|(_, o)| o.ok())
    }
    pub fn outcome(&self, host: &str) -> Option<&HostOutcome> {
        self.hosts.iter().find(|(h, _)| h == host).map(|(_, o)| o)
    }
    /// A host that had converged failed at a later `step` (images, old images): it is `Failed`
    /// with `error`. A host that had already failed keeps its first failure.
    pub fn fail(&mut self, host: &str, step: &str, error: String) {
        if let Some((_, o)) = self.hosts.iter_mut().find(|(h, _)| h == host)
            && o.ok()
        {
            *o = HostOutcome::Failed {
                step: step.into(),
                error,
            };
        }
    }
    pub fn summary(&self) -> String {
        let count = |f: fn(&HostOutcome) -> bool| self.hosts.iter().filter(|(_, o)| f(o)).count();
        format!(
            "Apply: {} change(s) made; {} host(s) converged, {} failed, {} unreachable, {} skipped",
            self.changed,
            count(|o| matches!(o, HostOutcome::Converged { .. })),
            count(|o| matches!(o, HostOutcome::Failed { .. })),
            count(|o| matches!(o, HostOutcome::Unreachable { .. })),
            count(|o| matches!(o, HostOutcome::Skipped { .. })),
        )
    }
}

/// Everything `apply` needs besides the plan.
pub struct Context<'a, H: Host, C: ClusterOps> {
    pub hosts: &'a Connections<H>,
    pub cluster: &'a C,
    pub progress: &'a Progress,
    pub log: &'a Log,
    pub parallel: usize,
}
