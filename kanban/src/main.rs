//! `aion-kanban`: the runtime kanban core over RabbitMQ.
//!
//! * `aion-kanban run --services FILE --device NAME --amqp URL` — the router (+ lifecycle,
//!   replicator, optional sweeper).
//! * `aion-kanban log` — query the replicator's record of routed kanbans.
//! * `aion-kanban sweep [--dry-run]` — one data-sweeper pass.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use aion_kanban::lifecycle::KubeLifecycle;
use aion_kanban::replicator::{self, Outcome, Replicator};
use aion_kanban::router::{self, RouterOptions, ServicesSource};
use aion_kanban::sweeper;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aion-kanban",
    version,
    about = "AION runtime kanban core over RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the router: declare queues, route kanbans, start services on demand, record kanbans.
    Run(Box<RunArgs>),
    /// Show recorded kanbans, newest first.
    Log(LogArgs),
    /// Run one data-sweeper pass.
    Sweep(SweepArgs),
}

#[derive(Args)]
struct RunArgs {
    /// services.yml (re-read on SIGHUP and when it changes).
    #[arg(long, env = "AION_SERVICES")]
    services: PathBuf,
    /// This device's name (default: `deviceName` in services.yml).
    #[arg(long, env = "AION_DEVICE")]
    device: Option<String>,
    /// This device's broker.
    #[arg(
        long,
        env = "AION_RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    /// Broker of another device of this installation, NAME=URL (repeatable).
    #[arg(long = "device-amqp", value_name = "NAME=URL")]
    device_amqp: Vec<String>,
    /// Devices of other installations: a directory with one file per device name holding the
    /// URL that installation issued for this device (`{addr}` = its services.yml `addr`).
    #[arg(long, env = "AION_REMOTE_CREDENTIALS", value_name = "DIR")]
    remote_credentials: Option<PathBuf>,
    /// Devices of other installations allowed to send to this one (comma-separated); unset:
    /// any the broker lets in. Others' kanbans are dead-lettered with the reason.
    #[arg(long, env = "AION_PEERS", value_name = "DEVICE,...")]
    peers: Option<String>,
    /// Broker URL of any other device listed in services.yml `devices`; `{addr}` is its addr.
    /// No default: without it (or credentials) such a kanban is dead-lettered saying why.
    #[arg(long)]
    remote_amqp_template: Option<String>,
    /// Data directory ($AION_HOME/Data): received files are stored here, fileList read from here.
    #[arg(long, env = "AION_DATA_DIR", default_value = "/var/lib/aion/Data")]
    data_dir: PathBuf,
    /// Unacked kanbans in flight per router.
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// The replicator's SQLite database; `none` to disable.
    #[arg(
        long,
        env = "AION_KANBAN_DB",
        default_value = "/var/lib/aion/kanban/kanban.db"
    )]
    db: String,
    /// Keep at most this many records.
    #[arg(long, default_value_t = 1_000_000)]
    max_records: u64,
    /// Kubeconfig for on-demand starts: a file, `in-cluster` (the pod's service account; an
    /// error when not in a pod), `none` to disable; unset: KUBECONFIG / ~/.kube/config /
    /// in-cluster, whichever works (warning and no on-demand start when none does).
    #[arg(long, env = "AION_KUBECONFIG")]
    kubeconfig: Option<String>,
    /// Namespace of the microservice workloads (default `default`). When set, the records
    /// queue is `aion-kanban.records.<namespace>` (the clients of that namespace get the same
    /// `AION_NAMESPACE`); unset, `aion-kanban.records`.
    #[arg(long, env = "AION_NAMESPACE")]
    namespace: Option<String>,
    /// Also run the data sweeper with this data-sweeper.yml (its sweepSettings schedule); the
    /// reconciler sets `AION_SWEEPER_CONFIG` when the inventory names one for the host.
    #[arg(long, env = "AION_SWEEPER_CONFIG")]
    sweeper_config: Option<PathBuf>,
    /// Serve the read-only live page of this namespace on IP:PORT (`/`, `/api/v1/status`,
    /// `/api/v1/graph.svg`); off when unset. The rendered Deployment binds it to the pod's IP.
    #[arg(long, env = "AION_LIVE_ADDR", value_name = "IP:PORT")]
    live: Option<String>,
    /// Print the resolved configuration (flags + env + services.yml) as JSON and exit without
    /// connecting to anything.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct LogArgs {
    #[arg(
        long,
        env = "AION_KANBAN_DB",
        default_value = "/var/lib/aion/kanban/kanban.db"
    )]
    db: PathBuf,
    /// Only kanbans from this microservice (`name` or `name#N`).
    #[arg(long)]
    source: Option<String>,
    #[arg(long)]
    connection_key: Option<String>,
    /// routed | terminate | no-route | dead-lettered | forwarded-in
    #[arg(long)]
    outcome: Option<Outcome>,
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: u32,
    /// `json`: one JSON object per line (as `aion-reconcile -o json`).
    #[arg(short = 'o', long, value_enum, default_value_t = LogFormat::Text)]
    output: LogFormat,
    /// The same as `-o json` (kept for scripts written before `-o`).
    #[arg(long, hide = true)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct SweepArgs {
    #[arg(long, default_value = "/var/lib/aion/config/data-sweeper.yml")]
    config: PathBuf,
    #[arg(long, env = "AION_DATA_DIR", default_value = "/var/lib/aion/Data")]
    data_dir: PathBuf,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aion-kanban: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(*a).await,
            Cmd::Log(a) => log(a),
            Cmd::Sweep(a) => sweep(a),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aion-kanban: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Where on-demand starts get their Kubernetes client (`--kubeconfig` / `AION_KUBECONFIG`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum KubeSource {
    /// Unset: KUBECONFIG / ~/.kube/config / in-cluster, whichever works (else a warning and no
    /// on-demand start).
    Discover,
    /// `in-cluster`: the pod's service account (an error outside a pod).
    InCluster,
    /// `none`: no on-demand start.
    Off,
    File(PathBuf),
}

/// `run`'s flags and environment, checked and typed before anything runs (special values such
/// as `none`, `in-cluster` and `NAME=URL` pairs become what they mean; a bad one is an error
/// naming the flag), as ripgrep turns its raw flags into a validated configuration.
#[derive(Debug)]
struct RunConfig {
    services: PathBuf,
    device: Option<String>,
    amqp: String,
    /// `--device-amqp NAME=URL`, in the order given.
    device_amqp: Vec<(String, String)>,
    remote_credentials: Option<PathBuf>,
    /// `--peers`, split; Some(empty): no peer may send.
    peers: Option<Vec<String>>,
    remote_amqp_template: Option<String>,
    data_dir: PathBuf,
    prefetch: u16,
    /// The replicator's database; None: `--db none`.
    db: Option<PathBuf>,
    max_records: u64,
    kubeconfig: KubeSource,
    /// Non-blank `--namespace`.
    namespace: Option<String>,
    sweeper_config: Option<PathBuf>,
    live: Option<std::net::SocketAddr>,
    print_config: bool,
}

impl RunConfig {
    fn from_args(a: RunArgs) -> anyhow::Result<RunConfig> {
        let is_amqp = |u: &str| u.starts_with("amqp://") || u.starts_with("amqps://");
        let device_amqp = a
            .device_amqp
            .iter()
            .map(|s| match s.split_once('=') {
                Some((n, u)) if !n.trim().is_empty() && is_amqp(u) => {
                    Ok((n.to_string(), u.to_string()))
                }
                _ => Err(anyhow::anyhow!(
                    "--device-amqp {:?}: expected NAME=URL with an amqp:// or amqps:// URL",
                    aion_kanban::amqp::redact(s)
                )),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if !is_amqp(&a.amqp) {
            anyhow::bail!(
                "--amqp / AION_RABBITMQ_URL {:?}: expected an amqp:// or amqps:// URL",
                aion_kanban::amqp::redact(&a.amqp)
            );
        }
        let remote_amqp_template = a.remote_amqp_template.filter(|t| !t.trim().is_empty());
        if let Some(t) = &remote_amqp_template
            && !t.contains("{addr}")
        {
            anyhow::bail!(
                "--remote-amqp-template {:?} has no {{addr}} (where a device's address goes)",
                aion_kanban::amqp::redact(t)
            );
        }
        let remote_credentials = a.remote_credentials.filter(|p| !p.as_os_str().is_empty());
        let live =
            match a.live.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(s.parse().map_err(|_| {
                    anyhow::anyhow!("--live / AION_LIVE_ADDR {s:?}: expected IP:PORT")
                })?),
            };
        let kubeconfig = match a.kubeconfig.as_deref() {
            None => KubeSource::Discover,
            Some("in-cluster") => KubeSource::InCluster,
            Some("none") => KubeSource::Off,
            Some(p) if p.trim().is_empty() => KubeSource::Discover,
            Some(p) => KubeSource::File(PathBuf::from(p)),
        };
        Ok(RunConfig {
            services: a.services,
            device: a.device.filter(|d| !d.is_empty()),
            amqp: a.amqp,
            device_amqp,
            remote_credentials,
            peers: a.peers.map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            remote_amqp_template,
            data_dir: a.data_dir,
            prefetch: a.prefetch,
            db: (a.db != "none").then(|| PathBuf::from(a.db)),
            max_records: a.max_records,
            kubeconfig,
            namespace: a.namespace.filter(|n| !n.trim().is_empty()),
            sweeper_config: a.sweeper_config,
            live,
            print_config: a.print_config,
        })
    }
}

/// The namespace of the microservice workloads: `--namespace`/`AION_NAMESPACE`, else `default`.
fn workload_namespace(namespace: Option<&str>) -> String {
    namespace
        .filter(|n| !n.trim().is_empty())
        .unwrap_or("default")
        .to_string()
}

/// What `run` resolved from flags, env and services.yml (`run --print-config`).
fn resolved_config(c: &RunConfig, services: &aion_model::ServicesFile) -> serde_json::Value {
    let redact = aion_kanban::amqp::redact;
    serde_json::json!({
        "services": c.services,
        "microservices": services.microservices.len(),
        "device": c.device.clone().unwrap_or_else(|| services.device_name.clone()),
        "amqp": redact(&c.amqp),
        "device_amqp": c.device_amqp.iter().map(|(n, u)| format!("{n}={}", redact(u))).collect::<Vec<_>>(),
        "remote_credentials": c.remote_credentials,
        "peers": c.peers,
        "remote_amqp_template": c.remote_amqp_template.as_deref().map(redact),
        "data_dir": c.data_dir,
        "db": c.db,
        "max_records": c.max_records,
        "kubeconfig": match &c.kubeconfig {
            KubeSource::Discover => "default".to_string(),
            KubeSource::InCluster => "in-cluster".to_string(),
            KubeSource::Off => "none".to_string(),
            KubeSource::File(p) => p.display().to_string(),
        },
        "namespace": workload_namespace(c.namespace.as_deref()),
        "records_queue": aion_kanban::topology::records_queue_name(c.namespace.as_deref()),
        "prefetch": c.prefetch,
        "sweeper_config": c.sweeper_config,
        "live": c.live.map(|a| a.to_string()),
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let c = RunConfig::from_args(a)?;
    // Fail early on a bad file; later reloads keep the last good configuration.
    let services = router::load_services(&c.services)?;
    if c.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&resolved_config(&c, &services))?
        );
        return Ok(());
    }
    let mut opts = RouterOptions::new(ServicesSource::File(c.services.clone()), c.amqp.clone());
    opts.device = c.device.clone();
    opts.namespace = c.namespace.clone();
    opts.device_amqp = c.device_amqp.iter().cloned().collect();
    opts.remote_credentials = c.remote_credentials.clone();
    opts.peers = c.peers.clone();
    opts.remote_template = c.remote_amqp_template.clone();
    opts.data_dir = c.data_dir.clone();
    opts.prefetch = c.prefetch;
    let mut writer = None;
    if let Some(db) = &c.db {
        let (rep, w) = Replicator::open(db, c.max_records)?;
        opts.replicator = Some(rep);
        writer = Some(w);
    }
    let client = match &c.kubeconfig {
        KubeSource::Off => None,
        KubeSource::InCluster => {
            let cfg = kube::Config::incluster()
                .context("in-cluster Kubernetes config (AION_KUBECONFIG=in-cluster)")?;
            Some(kube::Client::try_from(cfg)?)
        }
        KubeSource::File(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            Some(kube::Client::try_from(cfg)?)
        }
        KubeSource::Discover => match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("no Kubernetes client ({e}); on-demand start disabled");
                None
            }
        },
    };
    let kube_client = client.clone();
    opts.lifecycle = client.map(|k| {
        Arc::new(KubeLifecycle::new(
            k,
            workload_namespace(c.namespace.as_deref()),
        ))
    });
    if let Some(addr) = c.live {
        let live = aion_kanban::live_serve::LiveOptions {
            services: ServicesSource::File(c.services.clone()),
            namespace: workload_namespace(c.namespace.as_deref()),
            device: opts.device.clone(),
            amqp_url: c.amqp.clone(),
            db: c.db.clone(),
            kube: kube_client,
            window_seconds: aion_kanban::live::WINDOW_SECONDS,
            trail_limit: 10,
        };
        aion_kanban::live_serve::spawn(&addr.to_string(), live).await?;
    }
    aion_kanban::config::notify_on_sighup(opts.reload.clone())
        .context("installing the SIGHUP handler")?;
    if let Some(cfg) = c.sweeper_config.clone() {
        let rules = sweeper::load(&cfg)?;
        let Some(schedule) = rules.schedule else {
            anyhow::bail!(
                "{}: sweepSettings is missing (needed to run the sweeper periodically)",
                cfg.display()
            );
        };
        let data = c.data_dir.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(sweeper::next_delay(schedule, chrono::Local::now())).await;
                match sweeper::sweep(&data, &rules, std::time::SystemTime::now(), false) {
                    Ok(r) => tracing::info!(
                        "sweeper: deleted {}, kept {}, errors {}",
                        r.deleted.len(),
                        r.kept,
                        r.errors.len()
                    ),
                    Err(e) => tracing::error!("sweeper: {e}"),
                }
            }
        });
    }
    let shutdown = async {
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    };
    router::run(opts, shutdown).await?;
    if let Some(w) = writer {
        w.join();
    }
    Ok(())
}

fn log(a: LogArgs) -> anyhow::Result<()> {
    let q = replicator::Query {
        source: a.source,
        connection_key: a.connection_key,
        outcome: a.outcome,
        limit: a.limit,
    };
    let rows = replicator::query(&a.db, &q)?;
    let json = a.json || a.output == LogFormat::Json;
    for (id, r) in rows {
        if json {
            let mut v = serde_json::to_value(&r)?;
            v["id"] = id.into();
            println!("{v}");
        } else {
            println!(
                "{id:>8} {} {:<24} key={:<12} n={:<3} {:<14} {}",
                r.at, r.source, r.connection_key, r.process_number, r.outcome, r.detail
            );
        }
    }
    Ok(())
}

fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    let rules = sweeper::load(&a.config)?;
    let r = sweeper::sweep(&a.data_dir, &rules, std::time::SystemTime::now(), a.dry_run)?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for p in &r.deleted {
        println!("{verb} {}", p.display());
    }
    for e in &r.errors {
        eprintln!("aion-kanban sweep: {e}");
    }
    println!(
        "{verb} {} file(s), kept {}, {} error(s)",
        r.deleted.len(),
        r.kept,
        r.errors.len()
    );
    if r.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} error(s) while sweeping", r.errors.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> anyhow::Result<RunConfig> {
        let mut argv = vec![
            "aion-kanban",
            "run",
            "--services",
            "s.yml",
            "--amqp",
            "amqp://u:p@h/%2f",
        ];
        argv.extend_from_slice(args);
        let Cmd::Run(a) = Cli::try_parse_from(argv)?.cmd else {
            unreachable!("run")
        };
        RunConfig::from_args(*a)
    }

    #[test]
    fn special_values_become_what_they_mean() {
        let c = config(&[
            "--db",
            "none",
            "--kubeconfig",
            "in-cluster",
            "--namespace",
            " ",
            "--device-amqp",
            "cam=amqp://u:p@b/cam",
            "--device-amqp",
            "store=amqps://b/store",
            "--live",
            "0.0.0.0:8099",
        ])
        .unwrap();
        assert_eq!(c.db, None);
        assert_eq!(c.kubeconfig, KubeSource::InCluster);
        assert_eq!(c.namespace, None, "a blank namespace is none");
        assert_eq!(
            c.device_amqp,
            [
                ("cam".to_string(), "amqp://u:p@b/cam".to_string()),
                ("store".into(), "amqps://b/store".into())
            ]
        );
        assert_eq!(c.live, Some("0.0.0.0:8099".parse().unwrap()));
        let c = config(&["--kubeconfig", "/k/config", "--db", "/d.db"]).unwrap();
        assert_eq!(c.kubeconfig, KubeSource::File("/k/config".into()));
        assert_eq!(c.db, Some(PathBuf::from("/d.db")));
        let c = config(&["--kubeconfig", "none"]).unwrap();
        assert_eq!(c.kubeconfig, KubeSource::Off);
    }

    /// A bad value is an error naming its flag before anything runs; credentials are redacted.
    #[test]
    fn bad_values_name_their_flag() {
        let err = |args: &[&str]| format!("{:#}", config(args).unwrap_err());
        let e = err(&["--device-amqp", "amqp://u:secret@b/cam"]);
        assert!(e.contains("--device-amqp") && e.contains("NAME=URL"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = err(&["--device-amqp", "=amqp://b/x"]);
        assert!(e.contains("--device-amqp"), "{e}");
        let e = err(&["--live", "8099"]);
        assert!(e.contains("--live") && e.contains("IP:PORT"), "{e}");
        let e = err(&["--remote-amqp-template", "amqp://h/%2f"]);
        assert!(e.contains("{addr}"), "{e}");
        let e = err(&["--amqp", "http://h"]);
        assert!(e.contains("--amqp"), "{e}");
    }
}
