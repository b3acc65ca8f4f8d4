//! The live page's shell (`aion-kanban run --live ADDR`): gathers the inputs of
//! [`crate::live::build`] — workloads and pods from the Kubernetes API, input queue depths by
//! passive declare on the broker, new replicator records from SQLite (read incrementally by id)
//! — and serves, read-only over HTTP/1.1:
//!
//! * `GET /` — the page (inline CSS and JS, no external assets), polling the API every second;
//! * `GET /api/v1/status` — the document (`schemas/live-v1.schema.json`);
//! * `GET /api/v1/graph.svg` — the namespace's kanban graph as `aion-reconcile graph` draws it
//!   for one services.yml (its edges are `<g id="eN">`, as `edges[].id` names them).
//!
//! Any other method is answered 405, any other path 404. A document is built at most once per
//! [`MIN_REFRESH`] however many clients poll; nothing is gathered while nobody asks.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_model::ServicesFile;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use lapin::Connection;
use rusqlite::{Connection as Db, OpenFlags, params};
use tokio::sync::Mutex;

use crate::config::ServicesSource;
use crate::live::{self, EdgeSpec, Hop, InstanceSpec, PodObs, Tally, Workload};
use crate::topology;

/// The page (HTML, inline CSS and JS).
pub const PAGE: &str = include_str!("live_page.html");
/// A document younger than this is served again instead of gathering anew.
pub const MIN_REFRESH: Duration = Duration::from_millis(900);
/// The newest records whose kanban is read and kept (for trails): at most this many.
const TRAIL_RECORDS: usize = 300;
/// On the first read (or after the database was replaced) only this many of the newest records
/// are read: the window's, at up to ~1,600 kanbans/s.
const RECORDS_PER_FIRST_READ: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("live page: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("live page: --live {addr}: not an address (want IP:PORT)")]
    Addr { addr: String },
}

/// What the live page reads.
pub struct LiveOptions {
    pub services: ServicesSource,
    pub namespace: String,
    /// This device's name (`None`: services.yml's `deviceName`).
    pub device: Option<String>,
    pub amqp_url: String,
    /// The replicator's database (`None`: no records, no rates).
    pub db: Option<PathBuf>,
    pub kube: Option<kube::Client>,
    pub window_seconds: i64,
    pub trail_limit: usize,
}

/// Services file and what follows from it (reloaded when the source gives a new value).
struct Derived {
    services: Arc<ServicesFile>,
    instances: Vec<InstanceSpec>,
    edges: Vec<EdgeSpec>,
    svg: Arc<String>,
}

fn derive(services: Arc<ServicesFile>) -> Derived {
    let instances = services
        .microservices
        .iter()
        .flat_map(|ms| {
            (1..=ms.scale.max(1)).map(move |n| InstanceSpec {
                microservice: ms.name.clone(),
                number: n,
                name: ms.instance_name(n),
                queue: topology::input_queue(ms, n),
                always: ms.always,
                startup: ms.startup,
            })
        })
        .collect();
    let g = aion_reconcile::graph::from_services(&services);
    let svg = aion_reconcile::graph::svg::render(&g);
    let edges = edge_specs(&g, &services);
    Derived {
        services,
        instances,
        edges,
        svg: Arc::new(svg),
    }
}

/// The graph's edges and which records count for each.
pub fn edge_specs(g: &aion_reconcile::graph::Graph, services: &ServicesFile) -> Vec<EdgeSpec> {
    use aion_reconcile::graph::NodeKind;
    let name = |i: usize| match &g.nodes[i].kind {
        NodeKind::Service(s) => s.name.clone(),
        NodeKind::Remote { name } | NodeKind::Unresolved { name, .. } => name.clone(),
        NodeKind::Note(n) => n.clone(),
    };
    g.edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let to = &g.nodes[e.to];
            let (device, targets) = match &to.kind {
                NodeKind::Service(s) if !e.cross_device => {
                    let targets = services
                        .microservice(&s.name)
                        .map(|ms| {
                            (1..=ms.scale.max(1))
                                .map(|n| topology::input_queue(ms, n))
                                .collect()
                        })
                        .unwrap_or_default();
                    (None, targets)
                }
                NodeKind::Service(_) | NodeKind::Remote { .. } => {
                    let dev = g.devices[to.device].title.clone();
                    let t = format!("{dev}:{}#", name(e.to));
                    (Some(dev), vec![t])
                }
                _ => (None, Vec::new()),
            };
            EdgeSpec {
                id: format!("e{i}"),
                from: name(e.from),
                to: name(e.to),
                device,
                connection_key: e.key.clone(),
                targets,
            }
        })
        .collect()
}

/// State kept between refreshes.
struct Gatherer {
    opts: LiveOptions,
    derived: Option<Derived>,
    /// Highest record id read so far.
    cursor: i64,
    /// The records read so far, tallied (the records themselves are not kept).
    tally: Tally,
    /// The replicator's database, opened read-only once (reopened after an error).
    db: Option<Db>,
    amqp: Option<Connection>,
    cached: Option<(Instant, Arc<String>)>,
}

impl Gatherer {
    fn services(&mut self) -> Result<&Derived, String> {
        match self.opts.services.load() {
            Ok(s) => {
                if self.derived.as_ref().is_none_or(|d| *d.services != *s) {
                    self.derived = Some(derive(s));
                }
            }
            Err(e) if self.derived.is_none() => return Err(e.to_string()),
            Err(e) => tracing::warn!("live page: keeping the last services.yml: {e}"),
        }
        self.derived
            .as_ref()
            .ok_or_else(|| "no services.yml".into())
    }

    /// Tallies the records written since the last read. Only the newest [`TRAIL_RECORDS`]
    /// records' kanbans are read (for trails); the rest are counted from their small columns.
    fn read_records(&mut self, now_us: i64) -> Result<(), String> {
        let Some(path) = self.opts.db.clone() else {
            return Err("no replicator database (--db none)".into());
        };
        let fail = |e: rusqlite::Error| format!("{}: {e}", path.display());
        if self.db.is_none() {
            if !path.exists() {
                return Err(format!("{}: no records yet", path.display()));
            }
            let db = Db::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
            self.db = Some(db);
        }
        let Some(db) = self.db.as_ref() else {
            return Err("no replicator database".into());
        };
        let result = (|| {
            let newest: i64 = db
                .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM kanban")?
                .query_row([], |r| r.get(0))?;
            if newest < self.cursor {
                // A new database (the old one was removed): start again from its newest rows.
                self.cursor = 0;
            }
            let floor = self.cursor.max(newest - RECORDS_PER_FIRST_READ);
            let bodies_from = newest - TRAIL_RECORDS as i64;
            let mut st = db.prepare_cached(
                "SELECT id, at, source, connection_key, outcome, detail,
                        CASE WHEN id > ?2 THEN kanban END
                 FROM kanban WHERE id > ?1 AND id <= ?3 ORDER BY id",
            )?;
            let mut rows = st.query(params![floor, bodies_from, newest])?;
            while let Some(r) = rows.next()? {
                let get = |i| r.get::<_, String>(i).unwrap_or_default();
                let id: i64 = r.get(0).unwrap_or_default();
                self.cursor = self.cursor.max(id);
                let Some(at_us) = live::parse_at(&get(1)) else {
                    continue;
                };
                let metadata = r
                    .get_ref(6)
                    .ok()
                    .and_then(|v| v.as_str().ok())
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("metadata").and_then(|m| m.as_object().cloned()));
                // A row whose outcome this version does not know is skipped, not guessed.
                let Ok(outcome) = r.get::<_, crate::replicator::Outcome>(4) else {
                    continue;
                };
                let hop = Hop {
                    id,
                    at_us,
                    source: get(2),
                    connection_key: get(3),
                    outcome,
                    detail: get(5),
                    metadata,
                };
                self.tally.add(hop, now_us);
            }
            Ok::<_, rusqlite::Error>(())
        })();
        self.tally.expire(now_us);
        if let Err(e) = result {
            self.db = None;
            return Err(fail(e));
        }
        Ok(())
    }

    async fn queues(
        &mut self,
        instances: &[InstanceSpec],
    ) -> Result<HashMap<String, (u32, u32)>, String> {
        if self.amqp.as_ref().is_none_or(|c| !c.status().connected()) {
            self.amqp = None;
            let c = crate::amqp::connect(&self.opts.amqp_url, "aion-kanban live")
                .await
                .map_err(|e| e.to_string())?;
            self.amqp = Some(c);
        }
        let Some(conn) = self.amqp.as_ref() else {
            return Err("no broker connection".into());
        };
        let mut out = HashMap::new();
        let mut ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        let mut missing = Vec::new();
        for i in instances {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match ch
                .queue_declare(i.queue.as_str().into(), passive, Default::default())
                .await
            {
                Ok(q) => {
                    out.insert(i.queue.clone(), (q.message_count(), q.consumer_count()));
                }
                Err(_) => {
                    // A refused passive declare closes the channel.
                    missing.push(i.queue.clone());
                    ch = conn.create_channel().await.map_err(|e| e.to_string())?;
                }
            }
        }
        let _ = ch.close(200, "live page".into()).await;
        if missing.is_empty() {
            Ok(out)
        } else {
            tracing::debug!("live page: queues not declared yet: {missing:?}");
            Ok(out)
        }
    }

    async fn build(&mut self) -> Arc<String> {
        if let Some((t, doc)) = &self.cached
            && t.elapsed() < MIN_REFRESH
        {
            return doc.clone();
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut problems = BTreeMap::new();
        let (services, instances, edges) = match self.services() {
            Ok(d) => (d.services.clone(), d.instances.clone(), d.edges.clone()),
            Err(e) => {
                problems.insert("services".to_string(), e);
                (Arc::new(ServicesFile::default()), Vec::new(), Vec::new())
            }
        };
        self.tally.set_edges(&edges);
        if let Err(e) = self.read_records(now_us) {
            problems.insert("records".into(), e);
        }
        let queues = match self.queues(&instances).await {
            Ok(q) => q,
            Err(e) => {
                self.amqp = None;
                problems.insert("broker".into(), e);
                HashMap::new()
            }
        };
        let (workloads, pods) = match &self.opts.kube {
            None => {
                problems.insert("kubernetes".into(), "no Kubernetes client".into());
                (None, HashMap::new())
            }
            Some(c) => match kube_observe(c, &self.opts.namespace).await {
                Ok((w, p)) => (Some(w), p),
                Err(e) => {
                    problems.insert("kubernetes".into(), e);
                    (None, HashMap::new())
                }
            },
        };
        let device = self
            .opts
            .device
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| services.device_name.clone());
        let inputs = live::Inputs {
            namespace: self.opts.namespace.clone(),
            device,
            now_us,
            instances,
            workloads,
            pods,
            queues,
            trail_limit: self.opts.trail_limit,
            problems,
        };
        let doc = live::build(&inputs, &self.tally);
        let body = Arc::new(serde_json::to_string(&doc).unwrap_or_else(|e| {
            format!("{{\"version\":\"v1\",\"problems\":{{\"json\":\"{e}\"}}}}")
        }));
        self.cached = Some((Instant::now(), body.clone()));
        body
    }

    fn svg(&mut self) -> Option<Arc<String>> {
        self.services().ok().map(|d| d.svg.clone())
    }
}

/// Workloads and pods of the namespace, per instance name.
async fn kube_observe(
    client: &kube::Client,
    ns: &str,
) -> Result<(HashMap<String, Workload>, HashMap<String, Vec<PodObs>>), String> {
    let lp = ListParams::default();
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let (d, j, p) = tokio::join!(deployments.list(&lp), jobs.list(&lp), pods.list(&lp));
    let d = d.map_err(|e| format!("listing Deployments in {ns}: {e}"))?;
    let j = j.map_err(|e| format!("listing Jobs in {ns}: {e}"))?;
    let p = p.map_err(|e| format!("listing Pods in {ns}: {e}"))?;
    let mut w = HashMap::new();
    for d in d.items {
        let replicas = d.spec.replicas.unwrap_or(1);
        w.insert(
            d.metadata.name.unwrap_or_default(),
            Workload::Deployment { replicas },
        );
    }
    for j in j.items {
        let suspended = j.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        let cond = |t: &str| {
            j.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == t && c.status == "True"))
        };
        let finished = if let Some(c) = cond("Failed") {
            Some(Err(match (&c.reason, &c.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (Some(r), None) => r.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "failed".into(),
            }))
        } else if cond("Complete").is_some() || crate::lifecycle::job_finished(&j) {
            Some(Ok(()))
        } else {
            None
        };
        w.insert(
            j.metadata.name.clone().unwrap_or_default(),
            Workload::Job {
                suspended,
                finished,
            },
        );
    }
    let mut by_run: HashMap<String, Vec<PodObs>> = HashMap::new();
    for pod in p.items {
        let Some(run) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("run"))
            .cloned()
        else {
            continue;
        };
        by_run.entry(run).or_default().push(pod_obs(&pod));
    }
    Ok((w, by_run))
}

/// A pod reduced to [`PodObs`].
pub fn pod_obs(pod: &Pod) -> PodObs {
    let st = pod.status.clone().unwrap_or_default();
    let with_msg = |r: &str, m: Option<&String>| match m.filter(|m| !m.is_empty()) {
        Some(m) => format!("{r}: {m}"),
        None => r.to_string(),
    };
    let statuses = st.container_statuses.clone().unwrap_or_default();
    let container_reason = statuses.iter().find_map(|c| {
        let s = c.state.as_ref()?;
        if let Some(w) = &s.waiting {
            return w.reason.as_deref().map(|r| with_msg(r, w.message.as_ref()));
        }
        s.terminated.as_ref().filter(|t| t.exit_code != 0).map(|t| {
            format!(
                "{} (exit code {})",
                t.reason.as_deref().unwrap_or("Error"),
                t.exit_code
            )
        })
    });
    let unscheduled = st.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "PodScheduled" && c.status == "False").then(|| {
            with_msg(
                c.reason.as_deref().unwrap_or("Unschedulable"),
                c.message.as_ref(),
            )
        })
    });
    let pod_reason = st
        .reason
        .as_deref()
        .map(|r| with_msg(r, st.message.as_ref()));
    let last_termination = statuses.iter().find_map(|c| {
        let t = c.last_state.as_ref()?.terminated.as_ref()?;
        (t.exit_code != 0).then(|| {
            format!(
                "{} (exit code {}){}",
                t.reason.as_deref().unwrap_or("Error"),
                t.exit_code,
                t.finished_at
                    .as_ref()
                    .map(|f| format!(" at {}", f.0))
                    .unwrap_or_default()
            )
        })
    });
    PodObs {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: st.phase.clone().unwrap_or_else(|| "Unknown".into()),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        ready: st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        reason: container_reason.or(unscheduled).or(pod_reason),
        restarts: statuses.iter().map(|c| c.restart_count).sum(),
        last_termination,
    }
}

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

async fn handle(
    state: Arc<Mutex<Gatherer>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        let mut r = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "read-only: only GET\n",
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/api/v1/status" => {
            let body = state.lock().await.build().await;
            respond(StatusCode::OK, "application/json", body.as_bytes().to_vec())
        }
        "/api/v1/graph.svg" => match state.lock().await.svg() {
            Some(svg) => respond(StatusCode::OK, "image/svg+xml", svg.as_bytes().to_vec()),
            None => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "services.yml could not be read\n",
            ),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: /, /api/v1/status, /api/v1/graph.svg\n",
        ),
    })
}

/// Bind `addr` (fails at once when it cannot) and serve the page in the background.
pub async fn spawn(
    addr: &str,
    opts: LiveOptions,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), LiveError> {
    let sa: SocketAddr = addr.parse().map_err(|_| LiveError::Addr {
        addr: addr.to_string(),
    })?;
    let listener = tokio::net::TcpListener::bind(sa)
        .await
        .map_err(|source| LiveError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(sa);
    let tally = Tally::new(opts.window_seconds, TRAIL_RECORDS);
    let state = Arc::new(Mutex::new(Gatherer {
        opts,
        derived: None,
        cursor: 0,
        tally,
        db: None,
        amqp: None,
        cached: None,
    }));
    tracing::info!("live page on http://{bound}/ (API /api/v1/status)");
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("live page: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!("live page connection: {e}");
                }
            });
        }
    });
    Ok((bound, task))
}
