//! `aion-kanban`: the runtime kanban core over RabbitMQ.
//!
//! * `aion-kanban run --services FILE --device NAME --amqp URL` — the router (+ lifecycle,
//!   replicator, optional sweeper).
//! * `aion-kanban log` — query the replicator's record of routed kanbans.
//! * `aion-kanban sweep [--dry-run]` — one data-sweeper pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use aion_kanban::lifecycle::KubeLifecycle;
use aion_kanban::replicator::{self, Replicator};
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
    Run(RunArgs),
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
    /// Broker of another device, NAME=URL (repeatable); others use --remote-amqp-template.
    #[arg(long = "device-amqp", value_name = "NAME=URL")]
    device_amqp: Vec<String>,
    /// Broker URL of a device listed in services.yml `devices`; `{addr}` is its addr.
    #[arg(long, default_value = "amqp://guest:guest@{addr}:5672/%2f")]
    remote_amqp_template: String,
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
    outcome: Option<String>,
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
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
            Cmd::Run(a) => run(a).await,
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

/// The namespace of the microservice workloads: `--namespace`/`AION_NAMESPACE`, else `default`.
fn workload_namespace(namespace: Option<&str>) -> String {
    namespace
        .filter(|n| !n.trim().is_empty())
        .unwrap_or("default")
        .to_string()
}

/// What `run` resolved from flags, env and services.yml (`run --print-config`).
fn resolved_config(a: &RunArgs, services: &aion_model::ServicesFile) -> serde_json::Value {
    let device = a
        .device
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| services.device_name.clone());
    serde_json::json!({
        "services": a.services,
        "microservices": services.microservices.len(),
        "device": device,
        "amqp": aion_kanban::amqp::redact(&a.amqp),
        "device_amqp": a.device_amqp.iter().map(|s| aion_kanban::amqp::redact(s)).collect::<Vec<_>>(),
        "remote_amqp_template": aion_kanban::amqp::redact(&a.remote_amqp_template),
        "data_dir": a.data_dir,
        "db": if a.db == "none" { serde_json::Value::Null } else { a.db.clone().into() },
        "max_records": a.max_records,
        "kubeconfig": match a.kubeconfig.as_deref() {
            None => "default",
            Some(k) => k,
        },
        "namespace": workload_namespace(a.namespace.as_deref()),
        "records_queue": aion_kanban::topology::records_queue_name(a.namespace.as_deref()),
        "prefetch": a.prefetch,
        "sweeper_config": a.sweeper_config,
        "live": a.live,
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    // Fail early on a bad file; later reloads keep the last good configuration.
    let services = router::load_services(&a.services)?;
    if a.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&resolved_config(&a, &services))?
        );
        return Ok(());
    }
    let mut opts = RouterOptions::new(ServicesSource::File(a.services.clone()), a.amqp.clone());
    opts.device = a.device;
    opts.namespace = a.namespace.clone().filter(|n| !n.trim().is_empty());
    opts.device_amqp = a
        .device_amqp
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(n, u)| (n.to_string(), u.to_string()))
        })
        .collect::<Option<HashMap<_, _>>>()
        .context("--device-amqp takes NAME=URL")?;
    opts.remote_template = a.remote_amqp_template;
    opts.data_dir = a.data_dir.clone();
    opts.prefetch = a.prefetch;
    let mut writer = None;
    if a.db != "none" {
        let (rep, w) = Replicator::open(&PathBuf::from(&a.db), a.max_records)?;
        opts.replicator = Some(rep);
        writer = Some(w);
    }
    let mut kube_client = None;
    if a.kubeconfig.as_deref() != Some("none") {
        let client = match &a.kubeconfig {
            Some(k) if k == "in-cluster" => {
                let cfg = kube::Config::incluster()
                    .context("in-cluster Kubernetes config (AION_KUBECONFIG=in-cluster)")?;
                Some(kube::Client::try_from(cfg)?)
            }
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("kubeconfig {path}"))?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .with_context(|| format!("kubeconfig {path}"))?;
                Some(kube::Client::try_from(cfg)?)
            }
            None => match kube::Client::try_default().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("no Kubernetes client ({e}); on-demand start disabled");
                    None
                }
            },
        };
        kube_client = client.clone();
        opts.lifecycle = client.map(|c| {
            Arc::new(KubeLifecycle::new(
                c,
                workload_namespace(a.namespace.as_deref()),
            ))
        });
    }
    if let Some(addr) = a.live.as_deref().filter(|s| !s.trim().is_empty()) {
        let live = aion_kanban::live_serve::LiveOptions {
            services: ServicesSource::File(a.services.clone()),
            namespace: workload_namespace(a.namespace.as_deref()),
            device: opts.device.clone(),
            amqp_url: a.amqp.clone(),
            db: (a.db != "none").then(|| PathBuf::from(&a.db)),
            kube: kube_client,
            window_seconds: aion_kanban::live::WINDOW_SECONDS,
            trail_limit: 10,
        };
        aion_kanban::live_serve::spawn(addr, live).await?;
    }
    aion_kanban::config::notify_on_sighup(opts.reload.clone())
        .context("installing the SIGHUP handler")?;
    if let Some(cfg) = a.sweeper_config.clone() {
        let rules = sweeper::load(&cfg)?;
        let Some(schedule) = rules.schedule else {
            anyhow::bail!(
                "{}: sweepSettings is missing (needed to run the sweeper periodically)",
                cfg.display()
            );
        };
        let data = a.data_dir.clone();
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
    for (id, r) in rows {
        if a.json {
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
