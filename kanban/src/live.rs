//! The live page's model (pure): what `GET /api/v1/status` returns for one namespace, built from
//! plain inputs — the instances services.yml implies, what the Kubernetes API says about their
//! workloads and pods, the input queues' depths, the replicator's records of the last minute —
//! and a time. No I/O here: [`crate::live_serve`] gathers the inputs and serves the result.
//!
//! * Instance state (`idle` / `starting` / `running` / `failed` / `unknown`) from the workload
//!   and its pods ([`instance_state`]).
//! * Rates: records in the window `[now - window, now]`, divided by the window's length: `in`
//!   counts the records that put a kanban into the instance's input queue, `out` the records
//!   whose source is the instance ([`build`]).
//! * Trails: a record follows another when its source is the instance the other delivered to,
//!   it happened at or after it, and its kanban's `metadata` keeps every key and value of the
//!   other's (clients pass metadata on and add to it) ([`trails`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The API's version (`/api/v1/...`, `"version"` in the document).
pub const API_VERSION: &str = "v1";
/// The default window of the rates, in seconds.
pub const WINDOW_SECONDS: i64 = 60;

/// One instance as services.yml implies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The microservice's name in services.yml.
    pub microservice: String,
    pub number: i32,
    /// Object name `<base>-NNN`.
    pub name: String,
    /// Its input queue (`<name>.in`).
    pub queue: String,
    /// `always: yes`: a Deployment; otherwise a Job.
    pub always: bool,
    pub startup: bool,
}

impl InstanceSpec {
    /// How records name it as a source: `microservice#number`.
    pub fn tag(&self) -> String {
        format!("{}#{}", self.microservice, self.number)
    }
}

/// The instance's workload as the Kubernetes API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// No such object (not rendered, or deleted).
    Missing,
    Deployment {
        replicas: i32,
    },
    Job {
        suspended: bool,
        /// `Some(Ok)` completed, `Some(Err(reason))` failed, `None` not finished.
        finished: Option<Result<(), String>>,
    },
}

/// One pod of an instance, reduced to what the state needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodObs {
    pub name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// Node it runs on (empty: not scheduled).
    pub node: String,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// A container's waiting or failed-termination reason with its message, or the pod's
    /// `PodScheduled=False` reason (`Unschedulable: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub restarts: i32,
    /// The last time a container ended with an error (reason, exit code), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_termination: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not running and not asked to (idle until a kanban arrives, or a finished Job run).
    Idle,
    /// Asked to run, no ready pod yet.
    Starting,
    Running,
    /// A pod cannot run (image, crash loop, unschedulable, failed) or the Job failed.
    Failed,
    /// The Kubernetes API was not asked or did not answer.
    Unknown,
}

/// Waiting reasons that mean the container will not start by itself.
const FAILING_REASONS: [&str; 8] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Whether a pod reason (`Reason: message` or `Reason`) is one that does not heal by waiting.
fn failing(reason: &str) -> bool {
    let head = reason.split(':').next().unwrap_or(reason).trim();
    FAILING_REASONS.contains(&head) || head == "Unschedulable" || head == "Error"
}

/// The state of an instance and why (the pod's reason), from its workload and pods.
/// `None` workload: the Kubernetes API was not available.
pub fn instance_state(workload: Option<&Workload>, pods: &[PodObs]) -> (State, Option<String>) {
    let Some(w) = workload else {
        return (State::Unknown, None);
    };
    if let Some(p) = pods.iter().find(|p| p.phase == "Failed") {
        let why = p.reason.clone().unwrap_or_else(|| "pod failed".into());
        // A failed pod of a Job that was asked again is history; the Job's state decides.
        if !matches!(w, Workload::Job { .. }) {
            return (State::Failed, Some(format!("{}: {why}", p.name)));
        }
    }
    if let Some((p, r)) = pods
        .iter()
        .filter(|p| p.phase != "Succeeded" && p.phase != "Failed")
        .find_map(|p| p.reason.as_deref().filter(|r| failing(r)).map(|r| (p, r)))
    {
        return (State::Failed, Some(format!("{}: {r}", p.name)));
    }
    let active: Vec<&PodObs> = pods
        .iter()
        .filter(|p| p.phase == "Pending" || p.phase == "Running")
        .collect();
    if active.iter().any(|p| p.phase == "Running" && p.ready) {
        return (State::Running, None);
    }
    let wanted = match w {
        Workload::Missing => return (State::Unknown, Some("workload not found".into())),
        Workload::Deployment { replicas } => *replicas > 0,
        Workload::Job {
            finished: Some(Err(why)),
            ..
        } => return (State::Failed, Some(format!("Job failed: {why}"))),
        Workload::Job {
            suspended,
            finished,
        } => !suspended && finished.is_none(),
    };
    if wanted {
        let why = active
            .iter()
            .find_map(|p| p.reason.clone())
            .or_else(|| active.first().map(|p| format!("pod {}", p.phase)))
            .unwrap_or_else(|| "no pod yet".into());
        return (State::Starting, Some(why));
    }
    match w {
        Workload::Job {
            finished: Some(Ok(())),
            ..
        } => (State::Idle, Some("last run completed".into())),
        _ => (State::Idle, None),
    }
}

/// One replicator record, as the live page needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub id: i64,
    /// Microseconds since the Unix epoch.
    pub at_us: i64,
    pub source: String,
    pub connection_key: String,
    pub outcome: String,
    pub detail: String,
    /// The kanban's `metadata` (trails only; `None` when not read or not a kanban).
    pub metadata: Option<Map<String, Value>>,
}

impl Hop {
    /// Where it went: the detail's comma-separated queue names / `device:service#n` (empty for
    /// dead-lettered and no-route records).
    pub fn destinations(&self) -> Vec<&str> {
        if self.outcome == "dead-lettered" || self.outcome == "no-route" {
            return Vec::new();
        }
        self.detail
            .split(", ")
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.starts_with("dead-lettered"))
            .collect()
    }
}

/// A `nextService` edge of the drawn graph: which records count for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSpec {
    /// The `<g id>` of the edge in the graph's SVG (`e0`, `e1`, ...).
    pub id: String,
    /// Source microservice (records' sources `from#n`).
    pub from: String,
    /// Target as drawn (microservice name; the device is in `device`).
    pub to: String,
    /// The target's device when it is another device.
    pub device: Option<String>,
    pub connection_key: String,
    /// Detail entries that mean "went along this edge": input queue names, or
    /// `device:service#` prefixes for other devices.
    pub targets: Vec<String>,
}

impl EdgeSpec {
    fn matches(&self, hop: &Hop) -> bool {
        hop.source
            .rsplit_once('#')
            .is_some_and(|(ms, _)| ms == self.from)
            && (hop.connection_key == self.connection_key
                || self.connection_key == "default" && hop.connection_key.is_empty())
            && hop.destinations().iter().any(|d| {
                self.targets.iter().any(|t| {
                    if t.ends_with('#') {
                        d.starts_with(t.as_str())
                    } else {
                        d == t
                    }
                })
            })
    }
}

/// What the shell observed, for [`build`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub namespace: String,
    pub device: String,
    /// Now, microseconds since the Unix epoch.
    pub now_us: i64,
    pub window_seconds: i64,
    pub instances: Vec<InstanceSpec>,
    /// Per instance name; `None` when the Kubernetes API was not available.
    pub workloads: Option<HashMap<String, Workload>>,
    /// Pods per instance name (label `run`).
    pub pods: HashMap<String, Vec<PodObs>>,
    /// Input queue name → (messages ready, consumers); missing: not known.
    pub queues: HashMap<String, (u32, u32)>,
    /// Records, any order; those outside the window only count for `lastError` and trails.
    pub hops: Vec<Hop>,
    /// Last error per source tag seen earlier (the shell keeps them across refreshes).
    pub last_errors: HashMap<String, LastError>,
    pub edges: Vec<EdgeSpec>,
    /// How many trails to show.
    pub trail_limit: usize,
    /// Why a source of inputs is missing (`kubernetes`, `broker`, `records` → message).
    pub problems: BTreeMap<String, String>,
}

/// The document of `GET /api/v1/status` (schemas/live-v1.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub namespace: String,
    pub device: String,
    /// RFC 3339 UTC.
    pub generated_at: String,
    pub window_seconds: i64,
    pub instances: Vec<Instance>,
    pub edges: Vec<EdgeRate>,
    pub trails: Vec<Trail>,
    /// Inputs that could not be read this time (`kubernetes`, `broker`, `records`).
    pub problems: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    pub microservice: String,
    pub number: i32,
    /// `Deployment` or `Job`.
    pub kind: String,
    pub startup: bool,
    pub state: State,
    pub reason: Option<String>,
    pub pods: Vec<PodObs>,
    pub queue: String,
    /// Kanbans waiting in the input queue (`null`: the broker was not reachable).
    pub queue_depth: Option<u32>,
    pub consumers: Option<u32>,
    /// Kanbans per second into the input queue, over the window.
    pub in_per_second: f64,
    /// Kanbans per second sent by the instance, over the window.
    pub out_per_second: f64,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub at: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeRate {
    pub id: String,
    pub from: String,
    pub to: String,
    pub device: Option<String>,
    pub connection_key: String,
    /// Records along the edge in the window.
    pub count: u64,
    pub per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trail {
    pub hops: Vec<TrailHop>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrailHop {
    pub id: i64,
    pub at: String,
    pub source: String,
    pub connection_key: String,
    pub outcome: String,
    pub detail: String,
}

/// RFC 3339 (microseconds, UTC) of a time in microseconds.
pub fn rfc3339(us: i64) -> String {
    crate::replicator::timestamp_of_micros(us)
}

/// Microseconds since the epoch of a record's `at` (RFC 3339); `None` when it does not parse.
pub fn parse_at(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The newest error record (dead-lettered, no-route) per source among `hops`.
pub fn last_errors(hops: &[Hop]) -> HashMap<String, LastError> {
    let mut out: HashMap<String, (i64, LastError)> = HashMap::new();
    for h in hops {
        if h.outcome != "dead-lettered" && h.outcome != "no-route" {
            continue;
        }
        let e = LastError {
            at: rfc3339(h.at_us),
            message: format!("{}: {}", h.outcome, h.detail),
        };
        match out.get(&h.source) {
            Some((t, _)) if *t > h.at_us => {}
            _ => {
                out.insert(h.source.clone(), (h.at_us, e));
            }
        }
    }
    out.into_iter().map(|(k, (_, e))| (k, e)).collect()
}

/// The document for `inputs`.
pub fn build(inputs: &Inputs) -> Status {
    let window = inputs.window_seconds.max(1);
    let from = inputs.now_us - window * 1_000_000;
    let in_window: Vec<&Hop> = inputs
        .hops
        .iter()
        .filter(|h| h.at_us > from && h.at_us <= inputs.now_us)
        .collect();
    let mut into: HashMap<&str, u64> = HashMap::new();
    let mut out_of: HashMap<&str, u64> = HashMap::new();
    for h in &in_window {
        *out_of.entry(h.source.as_str()).or_default() += 1;
        for d in h.destinations() {
            *into.entry(d).or_default() += 1;
        }
    }
    let mut errors = inputs.last_errors.clone();
    for (k, e) in last_errors(&inputs.hops) {
        match errors.get(&k) {
            Some(old) if old.at > e.at => {}
            _ => {
                errors.insert(k, e);
            }
        }
    }
    let rate = |n: u64| n as f64 / window as f64;
    let no_pods = Vec::new();
    let instances = inputs
        .instances
        .iter()
        .map(|i| {
            let pods = inputs.pods.get(&i.name).unwrap_or(&no_pods);
            let workload = inputs
                .workloads
                .as_ref()
                .map(|w| w.get(&i.name).unwrap_or(&Workload::Missing));
            let (state, reason) = instance_state(workload, pods);
            let q = inputs.queues.get(&i.queue);
            let tag = i.tag();
            let last_error = match (state, &reason) {
                (State::Failed, Some(r)) => Some(LastError {
                    at: rfc3339(inputs.now_us),
                    message: r.clone(),
                }),
                _ => errors.get(&tag).cloned().or_else(|| {
                    pods.iter().find_map(|p| {
                        p.last_termination.clone().map(|m| LastError {
                            at: rfc3339(inputs.now_us),
                            message: format!("{}: {m}", p.name),
                        })
                    })
                }),
            };
            Instance {
                name: i.name.clone(),
                microservice: i.microservice.clone(),
                number: i.number,
                kind: if i.always { "Deployment" } else { "Job" }.into(),
                startup: i.startup,
                state,
                reason,
                pods: pods.clone(),
                queue: i.queue.clone(),
                queue_depth: q.map(|q| q.0),
                consumers: q.map(|q| q.1),
                in_per_second: rate(into.get(i.queue.as_str()).copied().unwrap_or(0)),
                out_per_second: rate(out_of.get(tag.as_str()).copied().unwrap_or(0)),
                last_error,
            }
        })
        .collect();
    let edges = inputs
        .edges
        .iter()
        .map(|e| {
            let count = in_window.iter().filter(|h| e.matches(h)).count() as u64;
            EdgeRate {
                id: e.id.clone(),
                from: e.from.clone(),
                to: e.to.clone(),
                device: e.device.clone(),
                connection_key: e.connection_key.clone(),
                count,
                per_second: rate(count),
            }
        })
        .collect();
    Status {
        version: API_VERSION.into(),
        namespace: inputs.namespace.clone(),
        device: inputs.device.clone(),
        generated_at: rfc3339(inputs.now_us),
        window_seconds: window,
        instances,
        edges,
        trails: trails(&inputs.hops, &inputs.instances, inputs.trail_limit),
        problems: inputs.problems.clone(),
    }
}

/// Whether `later` keeps every key and value of `earlier` (both present).
fn carries(earlier: &Option<Map<String, Value>>, later: &Option<Map<String, Value>>) -> bool {
    match (earlier, later) {
        (Some(a), Some(b)) => a.iter().all(|(k, v)| b.get(k) == Some(v)),
        _ => false,
    }
}

/// The newest `limit` trails among `hops`, newest first; each trail's hops in time order.
pub fn trails(hops: &[Hop], instances: &[InstanceSpec], limit: usize) -> Vec<Trail> {
    // Only records whose kanban was read can be followed (the shell reads the newest few).
    let mut sorted: Vec<&Hop> = hops.iter().filter(|h| h.metadata.is_some()).collect();
    sorted.sort_by_key(|h| (h.at_us, h.id));
    let tag_of_queue: HashMap<&str, String> = instances
        .iter()
        .map(|i| (i.queue.as_str(), i.tag()))
        .collect();
    let mut claimed = vec![false; sorted.len()];
    let mut next: Vec<Option<usize>> = vec![None; sorted.len()];
    for i in 0..sorted.len() {
        let h = sorted[i];
        if h.metadata.is_none() {
            continue;
        }
        let targets: Vec<&String> = h
            .destinations()
            .into_iter()
            .filter_map(|d| tag_of_queue.get(d))
            .collect();
        if targets.is_empty() {
            continue;
        }
        if let Some(j) = (i + 1..sorted.len()).find(|&j| {
            !claimed[j]
                && targets.iter().any(|t| **t == sorted[j].source)
                && carries(&h.metadata, &sorted[j].metadata)
        }) {
            claimed[j] = true;
            next[i] = Some(j);
        }
    }
    let mut out: Vec<Trail> = Vec::new();
    for start in (0..sorted.len()).rev() {
        if out.len() >= limit {
            break;
        }
        if claimed[start] {
            continue;
        }
        let mut t = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            let h = sorted[i];
            t.push(TrailHop {
                id: h.id,
                at: rfc3339(h.at_us),
                source: h.source.clone(),
                connection_key: h.connection_key.clone(),
                outcome: h.outcome.clone(),
                detail: h.detail.clone(),
            });
            at = next[i];
        }
        out.push(Trail { hops: t });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: i64 = 1_000_000;
    const NOW: i64 = 1_800_000_000 * S;

    fn spec(ms: &str, n: i32, always: bool) -> InstanceSpec {
        let name = format!("{ms}-{n:03}");
        InstanceSpec {
            microservice: ms.into(),
            number: n,
            queue: format!("{name}.in"),
            name,
            always,
            startup: false,
        }
    }

    fn hop(id: i64, at_us: i64, source: &str, detail: &str, meta: Value) -> Hop {
        Hop {
            id,
            at_us,
            source: source.into(),
            connection_key: "default".into(),
            outcome: "routed".into(),
            detail: detail.into(),
            metadata: meta.as_object().cloned(),
        }
    }

    fn pod(phase: &str, ready: bool, reason: Option<&str>) -> PodObs {
        PodObs {
            name: "p".into(),
            phase: phase.into(),
            node: "n1".into(),
            ready,
            reason: reason.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn states_from_workloads_and_pods() {
        let dep = |r| Workload::Deployment { replicas: r };
        assert_eq!(instance_state(None, &[]).0, State::Unknown);
        assert_eq!(
            instance_state(Some(&Workload::Missing), &[]).0,
            State::Unknown
        );
        assert_eq!(instance_state(Some(&dep(0)), &[]), (State::Idle, None));
        assert_eq!(
            instance_state(Some(&dep(1)), &[]),
            (State::Starting, Some("no pod yet".into()))
        );
        assert_eq!(
            instance_state(
                Some(&dep(1)),
                &[pod("Pending", false, Some("ContainerCreating"))]
            ),
            (State::Starting, Some("ContainerCreating".into()))
        );
        assert_eq!(
            instance_state(Some(&dep(1)), &[pod("Running", false, None)]),
            (State::Starting, Some("pod Running".into()))
        );
        assert_eq!(
            instance_state(Some(&dep(1)), &[pod("Running", true, None)]),
            (State::Running, None)
        );
        let (s, why) = instance_state(
            Some(&dep(1)),
            &[pod(
                "Running",
                false,
                Some("CrashLoopBackOff: back-off 40s restarting failed container"),
            )],
        );
        assert_eq!(s, State::Failed);
        assert_eq!(
            why.as_deref(),
            Some("p: CrashLoopBackOff: back-off 40s restarting failed container")
        );
        let (s, why) = instance_state(
            Some(&dep(1)),
            &[pod(
                "Pending",
                false,
                Some("Unschedulable: 0/3 nodes are available"),
            )],
        );
        assert_eq!(
            (s, why.unwrap().contains("Unschedulable")),
            (State::Failed, true)
        );
        assert_eq!(
            instance_state(
                Some(&dep(1)),
                &[pod("Pending", false, Some("ImagePullBackOff"))]
            )
            .0,
            State::Failed
        );
        // Jobs: suspended = idle; running; completed = idle; failed with the Job's reason.
        let job = |suspended, finished| Workload::Job {
            suspended,
            finished,
        };
        assert_eq!(instance_state(Some(&job(true, None)), &[]).0, State::Idle);
        assert_eq!(
            instance_state(Some(&job(false, None)), &[]).0,
            State::Starting
        );
        assert_eq!(
            instance_state(
                Some(&job(false, Some(Ok(())))),
                &[pod("Succeeded", false, None)]
            ),
            (State::Idle, Some("last run completed".into()))
        );
        assert_eq!(
            instance_state(
                Some(&job(false, Some(Err("BackoffLimitExceeded".into())))),
                &[pod("Failed", false, Some("Error: exit code 1"))]
            ),
            (
                State::Failed,
                Some("Job failed: BackoffLimitExceeded".into())
            )
        );
        // A failed pod of a Deployment is a failure even with a ready sibling pending.
        assert_eq!(
            instance_state(Some(&dep(1)), &[pod("Failed", false, Some("Evicted"))]).0,
            State::Failed
        );
    }

    #[test]
    fn rates_count_the_window_only() {
        let instances = vec![spec("sensor", 1, true), spec("processor", 1, true)];
        let mut hops = Vec::new();
        // 120 records one every 0.5 s over the last minute; 30 older ones (outside the window).
        for i in 0..120 {
            hops.push(hop(
                i,
                NOW - i * S / 2,
                "sensor#1",
                "processor-001.in",
                json!({}),
            ));
        }
        for i in 0..30 {
            hops.push(hop(
                1000 + i,
                NOW - 61 * S - i * S,
                "sensor#1",
                "processor-001.in",
                json!({}),
            ));
        }
        // One in the future (clock skew of a client): not counted.
        hops.push(hop(
            5000,
            NOW + S,
            "processor#1",
            "aion-master:sink#1",
            json!({}),
        ));
        // 30 records from the processor to another device, 6 of them on another key.
        for i in 0..30 {
            let mut h = hop(
                2000 + i,
                NOW - i * S,
                "processor#1",
                "aion-master:sink#1",
                json!({}),
            );
            if i < 6 {
                h.connection_key = "other".into();
            }
            hops.push(h);
        }
        let edges = vec![
            EdgeSpec {
                id: "e0".into(),
                from: "sensor".into(),
                to: "processor".into(),
                device: None,
                connection_key: "default".into(),
                targets: vec!["processor-001.in".into()],
            },
            EdgeSpec {
                id: "e1".into(),
                from: "processor".into(),
                to: "sink".into(),
                device: Some("aion-master".into()),
                connection_key: "default".into(),
                targets: vec!["aion-master:sink#".into()],
            },
        ];
        let st = build(&Inputs {
            namespace: "w1".into(),
            device: "aion-worker-1".into(),
            now_us: NOW,
            window_seconds: 60,
            instances,
            hops,
            edges,
            trail_limit: 5,
            ..Default::default()
        });
        assert_eq!(st.version, "v1");
        assert_eq!(st.instances[0].out_per_second, 2.0);
        assert_eq!(st.instances[0].in_per_second, 0.0);
        assert_eq!(st.instances[1].in_per_second, 2.0);
        assert_eq!(st.instances[1].out_per_second, 0.5);
        assert_eq!((st.edges[0].count, st.edges[0].per_second), (120, 2.0));
        assert_eq!((st.edges[1].count, st.edges[1].per_second), (24, 0.4));
        // No Kubernetes API: unknown; no broker: no depth.
        assert_eq!(st.instances[0].state, State::Unknown);
        assert_eq!(st.instances[0].queue_depth, None);
    }

    #[test]
    fn queue_depths_states_and_last_errors_per_instance() {
        let mut workloads = HashMap::new();
        workloads.insert("a-001".to_string(), Workload::Deployment { replicas: 1 });
        let mut pods = HashMap::new();
        pods.insert("a-001".to_string(), vec![pod("Running", true, None)]);
        let mut queues = HashMap::new();
        queues.insert("a-001.in".to_string(), (7, 1));
        let mut dl = hop(1, NOW - 100 * S, "a#1", "no route for key x", json!({}));
        dl.outcome = "no-route".into();
        let st = build(&Inputs {
            now_us: NOW,
            window_seconds: 60,
            instances: vec![spec("a", 1, true), spec("b", 1, false)],
            workloads: Some(workloads),
            pods,
            queues,
            hops: vec![dl],
            ..Default::default()
        });
        let a = &st.instances[0];
        assert_eq!(
            (a.state, a.queue_depth, a.consumers),
            (State::Running, Some(7), Some(1))
        );
        assert_eq!(
            a.last_error.as_ref().map(|e| e.message.as_str()),
            Some("no-route: no route for key x")
        );
        assert_eq!(a.in_per_second, 0.0, "an error record outside the window");
        let b = &st.instances[1];
        assert_eq!((b.kind.as_str(), b.state), ("Job", State::Unknown));
        assert_eq!(b.reason.as_deref(), Some("workload not found"));
    }

    #[test]
    fn trails_follow_the_kanban_in_time_order() {
        let instances = vec![
            spec("sensor", 1, true),
            spec("processor", 1, true),
            spec("sink", 1, true),
        ];
        // Two kanbans (seq 1, 2) interleaved; the processor adds a key; the sink forwards
        // to another device. Records arrive out of order (ids are not time order).
        let hops = vec![
            hop(
                5,
                NOW - 5 * S,
                "processor#1",
                "sink-001.in",
                json!({"seq": 2, "p": "x"}),
            ),
            hop(
                1,
                NOW - 10 * S,
                "sensor#1",
                "processor-001.in",
                json!({"seq": 1}),
            ),
            hop(
                2,
                NOW - 9 * S,
                "sensor#1",
                "processor-001.in",
                json!({"seq": 2}),
            ),
            hop(
                3,
                NOW - 8 * S,
                "processor#1",
                "sink-001.in",
                json!({"seq": 1, "p": "x"}),
            ),
            hop(
                4,
                NOW - 7 * S,
                "sink#1",
                "dev:store#1",
                json!({"seq": 1, "p": "x"}),
            ),
            // Same source, but the metadata lost seq: not this kanban's next hop.
            hop(6, NOW - 6 * S, "sink#1", "dev:store#1", json!({"other": 1})),
        ];
        let t = trails(&hops, &instances, 10);
        let ids: Vec<Vec<i64>> = t
            .iter()
            .map(|t| t.hops.iter().map(|h| h.id).collect())
            .collect();
        // Newest first by the trail's first hop.
        assert_eq!(ids, vec![vec![6], vec![2, 5], vec![1, 3, 4]]);
        assert!(
            t[2].hops.windows(2).all(|w| w[0].at <= w[1].at),
            "hops in time order"
        );
        assert_eq!(trails(&hops, &instances, 1).len(), 1);
        // A record that went to another device ends the trail there.
        assert_eq!(t[2].hops[2].detail, "dev:store#1");
    }

    #[test]
    fn document_round_trips_as_json() {
        let st = build(&Inputs {
            namespace: "default".into(),
            device: "m".into(),
            now_us: NOW,
            window_seconds: 60,
            instances: vec![spec("a", 1, true)],
            ..Default::default()
        });
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["instances"][0]["inPerSecond"], json!(0.0));
        assert_eq!(v["generatedAt"], json!("2027-01-15T08:00:00.000000Z"));
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
    }
}
