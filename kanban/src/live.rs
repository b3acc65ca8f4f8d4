//! The live page's model (pure): what `GET /api/v1/status` returns for one namespace, built from
//! plain inputs — the instances services.yml implies, what the Kubernetes API says about their
//! workloads and pods, the input queues' depths, the replicator's records of the last minute —
//! and a time. No I/O here: [`crate::live_serve`] gathers the inputs and serves the result.
//!
//! * Instance state (`idle` / `starting` / `running` / `failed` / `unknown`) from the workload
//!   and its pods ([`instance_state`]).
//! * Rates: records in the window (the last `window` seconds), divided by the window's length:
//!   `in` counts the records that put a kanban into the instance's input queue, `out` the records
//!   whose source is the instance. The records are tallied per second as they arrive
//!   ([`Tally`]); a refresh sums the window's seconds ([`build`]).
//! * Trails: a record follows another when its source is the instance the other delivered to,
//!   it happened at or after it, and its kanban's `metadata` keeps every key and value of the
//!   other's (clients pass metadata on and add to it) ([`trails`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::replicator::Outcome;

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
    pub outcome: Outcome,
    pub detail: String,
    /// The kanban's `metadata` (trails only; `None` when not read or not a kanban).
    pub metadata: Option<Map<String, Value>>,
}

impl Hop {
    /// Where it went: the detail's comma-separated queue names / `device:service#n` (empty for
    /// dead-lettered and no-route records).
    pub fn destinations(&self) -> Vec<&str> {
        if self.outcome.dead() {
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

/// What the shell observed at one refresh, for [`build`] (the records are in the [`Tally`]).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub namespace: String,
    pub device: String,
    /// Now, microseconds since the Unix epoch.
    pub now_us: i64,
    pub instances: Vec<InstanceSpec>,
    /// Per instance name; `None` when the Kubernetes API was not available.
    pub workloads: Option<HashMap<String, Workload>>,
    /// Pods per instance name (label `run`).
    pub pods: HashMap<String, Vec<PodObs>>,
    /// Input queue name → (messages ready, consumers); missing: not known.
    pub queues: HashMap<String, (u32, u32)>,
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
    pub outcome: Outcome,
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

/// Kanbans counted in one second of record time.
#[derive(Debug, Clone, Default)]
struct Counts {
    /// Records per source tag (`microservice#number`).
    out_of: HashMap<String, u64>,
    /// Records per destination (input queue name or `device:service#n`).
    into: HashMap<String, u64>,
    /// Records per edge, in the order of [`Tally::edges`].
    edges: Vec<u64>,
}

/// The window's counts, summed over its seconds ([`Tally::rates`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub out_of: HashMap<String, u64>,
    pub into: HashMap<String, u64>,
    /// Per edge, in the order of [`Tally::edges`].
    pub edges: Vec<u64>,
}

/// The replicator's records, tallied as they arrive: per second of record time, how many left
/// each source, reached each destination and went along each edge; the newest error per source;
/// the newest records whose kanban was read (for trails). A refresh then sums the window's
/// seconds ([`Tally::rates`]) instead of recounting every record of the window, so its cost does
/// not grow with the load (60,000 records in a minute at 1,000 kanbans/s).
///
/// A record counts in second `s` when its time is in `(s - 1, s]` (seconds since the epoch); the
/// window at `now` is the seconds `(ceil(now) - window, ceil(now)]`, which equals the records in
/// `(now - window, now]` when `now` is a whole second and differs from it by less than a second's
/// records otherwise.
#[derive(Debug, Clone)]
pub struct Tally {
    window_seconds: i64,
    trail_records: usize,
    /// Oldest first, one per second that had records.
    seconds: VecDeque<(i64, Counts)>,
    edges: Vec<EdgeSpec>,
    last_errors: HashMap<String, (i64, LastError)>,
    /// Newest records with their kanban's metadata, oldest first, at most `trail_records`.
    recent: VecDeque<Hop>,
}

/// The second a time (microseconds) counts in: the smallest whole second not before it.
fn second_of(at_us: i64) -> i64 {
    at_us.div_euclid(1_000_000) + i64::from(at_us.rem_euclid(1_000_000) != 0)
}

impl Tally {
    pub fn new(window_seconds: i64, trail_records: usize) -> Self {
        Self {
            window_seconds: window_seconds.max(1),
            trail_records,
            seconds: VecDeque::new(),
            edges: Vec::new(),
            last_errors: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    pub fn window_seconds(&self) -> i64 {
        self.window_seconds
    }

    pub fn edges(&self) -> &[EdgeSpec] {
        &self.edges
    }

    /// The edges to count (from the drawn graph). When they change (services.yml changed), the
    /// edge counts start again from zero: the records are not kept to recount them.
    pub fn set_edges(&mut self, edges: &[EdgeSpec]) {
        if self.edges == edges {
            return;
        }
        self.edges = edges.to_vec();
        for (_, c) in &mut self.seconds {
            c.edges = vec![0; edges.len()];
        }
    }

    /// Count one record (any order of arrival). Records older than the window at `now_us`
    /// count for the last error and trails only.
    pub fn add(&mut self, hop: Hop, now_us: i64) {
        if hop.outcome.dead() {
            let newer = self
                .last_errors
                .get(&hop.source)
                .is_none_or(|(t, _)| *t <= hop.at_us);
            if newer {
                let e = LastError {
                    at: rfc3339(hop.at_us),
                    message: format!("{}: {}", hop.outcome, hop.detail),
                };
                self.last_errors.insert(hop.source.clone(), (hop.at_us, e));
            }
        }
        let s = second_of(hop.at_us);
        if s > second_of(now_us) - self.window_seconds {
            let i = match self.seconds.binary_search_by_key(&s, |(k, _)| *k) {
                Ok(i) => i,
                Err(i) => {
                    let counts = Counts {
                        edges: vec![0; self.edges.len()],
                        ..Counts::default()
                    };
                    self.seconds.insert(i, (s, counts));
                    i
                }
            };
            let c = &mut self.seconds[i].1;
            *c.out_of.entry(hop.source.clone()).or_default() += 1;
            for d in hop.destinations() {
                *c.into.entry(d.to_owned()).or_default() += 1;
            }
            for (n, e) in self.edges.iter().enumerate() {
                if e.matches(&hop) {
                    c.edges[n] += 1;
                }
            }
        }
        if hop.metadata.is_some() && self.trail_records > 0 {
            self.recent.push_back(hop);
            while self.recent.len() > self.trail_records {
                self.recent.pop_front();
            }
        }
    }

    /// Forget the seconds that left the window at `now_us`.
    pub fn expire(&mut self, now_us: i64) {
        let oldest = second_of(now_us) - self.window_seconds;
        while self.seconds.front().is_some_and(|(s, _)| *s <= oldest) {
            self.seconds.pop_front();
        }
    }

    /// The window's counts at `now_us` (seconds after `now_us` are not counted: clock skew).
    pub fn rates(&self, now_us: i64) -> Rates {
        let last = second_of(now_us);
        let first = last - self.window_seconds;
        let mut r = Rates {
            edges: vec![0; self.edges.len()],
            ..Rates::default()
        };
        for (_, c) in self
            .seconds
            .iter()
            .filter(|(s, _)| *s > first && *s <= last)
        {
            for (k, n) in &c.out_of {
                *r.out_of.entry(k.clone()).or_default() += n;
            }
            for (k, n) in &c.into {
                *r.into.entry(k.clone()).or_default() += n;
            }
            for (total, n) in r.edges.iter_mut().zip(&c.edges) {
                *total += n;
            }
        }
        r
    }

    /// The newest error record (dead-lettered, no-route) per source seen so far.
    pub fn last_error(&self, source: &str) -> Option<&LastError> {
        self.last_errors.get(source).map(|(_, e)| e)
    }

    /// The newest records whose kanban was read, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Hop> {
        self.recent.iter()
    }
}

/// The document for `inputs`, with the rates, last errors and trails of `tally`.
pub fn build(inputs: &Inputs, tally: &Tally) -> Status {
    let window = tally.window_seconds();
    let counts = tally.rates(inputs.now_us);
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
                _ => tally.last_error(&tag).cloned().or_else(|| {
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
                in_per_second: rate(counts.into.get(&i.queue).copied().unwrap_or(0)),
                out_per_second: rate(counts.out_of.get(&tag).copied().unwrap_or(0)),
                last_error,
            }
        })
        .collect();
    let edges = tally
        .edges()
        .iter()
        .zip(&counts.edges)
        .map(|(e, &count)| EdgeRate {
            id: e.id.clone(),
            from: e.from.clone(),
            to: e.to.clone(),
            device: e.device.clone(),
            connection_key: e.connection_key.clone(),
            count,
            per_second: rate(count),
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
        trails: trails(tally.recent(), &inputs.instances, inputs.trail_limit),
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
pub fn trails<'a>(
    hops: impl IntoIterator<Item = &'a Hop>,
    instances: &[InstanceSpec],
    limit: usize,
) -> Vec<Trail> {
    // Only records whose kanban was read can be followed (the shell reads the newest few).
    let mut sorted: Vec<&Hop> = hops.into_iter().filter(|h| h.metadata.is_some()).collect();
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
                outcome: h.outcome,
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
            outcome: Outcome::Routed,
            detail: detail.into(),
            metadata: meta.as_object().cloned(),
        }
    }

    /// A 60-second tally of `hops`, all arrived by [`NOW`].
    fn tally_of(edges: &[EdgeSpec], hops: Vec<Hop>) -> Tally {
        let mut t = Tally::new(60, 300);
        t.set_edges(edges);
        for h in hops {
            t.add(h, NOW);
        }
        t
    }

    fn edge(id: &str, from: &str, to: &str, key: &str) -> EdgeSpec {
        EdgeSpec {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            device: None,
            connection_key: key.into(),
            targets: vec![format!("{to}-001.in")],
        }
    }

    /// Records arrive a second at a time, some late and out of order, a few far too late; at
    /// every whole second the tally's counts equal a recount of every record so far whose time
    /// is in `(now - window, now]` — what the page showed before the tally.
    #[test]
    fn the_tally_counts_what_a_recount_of_the_window_counts() {
        const W: i64 = 10;
        let edges = vec![edge("e0", "a", "b", "default"), edge("e1", "b", "c", "k")];
        let mut tally = Tally::new(W, 5);
        tally.set_edges(&edges);
        let mut seen: Vec<Hop> = Vec::new();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let start = NOW - 100 * S;
        let mut id = 0;
        for step in 1..=60 {
            let now = start + step * S;
            for _ in 0..next(40) {
                id += 1;
                // Mostly this second, some up to 3 s late, one in 20 from long ago.
                let late = match next(20) {
                    0 => 30 * S + next(S as u64) as i64,
                    1..=4 => next(3 * S as u64) as i64,
                    _ => next(S as u64) as i64,
                };
                let (source, dest, key) = match next(4) {
                    0 => ("a#1", "b-001.in", "default"),
                    1 => ("b#1", "c-001.in", "k"),
                    2 => ("b#1", "c-001.in, d-001.in", "default"),
                    _ => ("c#1", "", "default"),
                };
                let mut h = hop(id, now - late, source, dest, json!({}));
                h.connection_key = key.into();
                if dest.is_empty() {
                    h.outcome = Outcome::NoRoute;
                }
                seen.push(h.clone());
                tally.add(h, now);
            }
            tally.expire(now);
            let inside: Vec<&Hop> = seen
                .iter()
                .filter(|h| h.at_us > now - W * S && h.at_us <= now)
                .collect();
            let count = |f: &dyn Fn(&Hop) -> bool| inside.iter().filter(|h| f(h)).count() as u64;
            let r = tally.rates(now);
            for src in ["a#1", "b#1", "c#1"] {
                let want = count(&|h| h.source == src);
                assert_eq!(
                    r.out_of.get(src).copied().unwrap_or(0),
                    want,
                    "{step} {src}"
                );
            }
            for q in ["b-001.in", "c-001.in", "d-001.in"] {
                let want = count(&|h| h.destinations().contains(&q));
                assert_eq!(r.into.get(q).copied().unwrap_or(0), want, "{step} {q}");
            }
            for (n, e) in edges.iter().enumerate() {
                assert_eq!(r.edges[n], count(&|h| e.matches(h)), "{step} {}", e.id);
            }
            assert!(tally.seconds.len() <= W as usize, "expired seconds kept");
        }
        assert!(id > 500, "the test made too few records: {id}");
        // The newest error per source is kept whatever the window.
        let newest = seen
            .iter()
            .filter(|h| h.outcome == Outcome::NoRoute)
            .max_by_key(|h| h.at_us)
            .unwrap();
        assert_eq!(
            tally.last_error("c#1").map(|e| e.at.clone()),
            Some(rfc3339(newest.at_us))
        );
        // Trails keep only the newest records with metadata.
        assert_eq!(tally.recent().count(), 5);
    }

    #[test]
    fn new_edges_are_counted_from_zero() {
        let e0 = edge("e0", "a", "b", "default");
        let e1 = edge("e1", "a", "b", "k");
        let mut t = Tally::new(60, 0);
        t.set_edges(std::slice::from_ref(&e0));
        t.add(hop(1, NOW - S, "a#1", "b-001.in", json!({})), NOW);
        assert_eq!(t.rates(NOW).edges, vec![1]);
        t.set_edges(std::slice::from_ref(&e0));
        assert_eq!(t.rates(NOW).edges, vec![1], "same edges: kept");
        t.set_edges(&[e0.clone(), e1]);
        assert_eq!(t.rates(NOW).edges, vec![0, 0]);
        t.add(hop(2, NOW, "a#1", "b-001.in", json!({})), NOW);
        assert_eq!(t.rates(NOW).edges, vec![1, 0]);
        // The instance counts do not depend on the edges.
        assert_eq!(t.rates(NOW).out_of.get("a#1"), Some(&2));
        assert_eq!(t.recent().count(), 0, "no trails asked for");
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
        let st = build(
            &Inputs {
                namespace: "w1".into(),
                device: "aion-worker-1".into(),
                now_us: NOW,
                instances,
                trail_limit: 5,
                ..Default::default()
            },
            &tally_of(&edges, hops),
        );
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
        dl.outcome = Outcome::NoRoute;
        let st = build(
            &Inputs {
                now_us: NOW,
                instances: vec![spec("a", 1, true), spec("b", 1, false)],
                workloads: Some(workloads),
                pods,
                queues,
                ..Default::default()
            },
            &tally_of(&[], vec![dl]),
        );
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
        let st = build(
            &Inputs {
                namespace: "default".into(),
                device: "m".into(),
                now_us: NOW,
                instances: vec![spec("a", 1, true)],
                ..Default::default()
            },
            &Tally::new(60, 300),
        );
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["instances"][0]["inPerSecond"], json!(0.0));
        assert_eq!(v["generatedAt"], json!("2027-01-15T08:00:00.000000Z"));
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
    }
}
