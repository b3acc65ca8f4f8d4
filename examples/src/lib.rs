//! Shared parts of the example microservices `sensor` → `processor` → `sink` (the binaries of
//! this crate), built on the `aion_kanban::client` library and configured the AION way, by the
//! environment every microservice pod gets from the reconciler (README, docs/cluster.md):
//!
//! * `SERVICE_NAME`, `MS_NUMBER` (instance, 1-based), `AION_HOME` (default `/var/lib/aion`; its
//!   `Data/` is the data directory shared with the runtime), `DEVICE_NAME` — [`ServiceEnv`];
//! * `RABBITMQ_URL`, `QUEUE_ORIGIN`, `QUEUE_TO`, `AION_SERVICES` (services.yml: producer-side
//!   routing), `AION_DEVICE`, `AION_NAMESPACE` — read by `aion_kanban::client::Client` for the
//!   services that receive, and by [`ProducerConfig`] for the producer-only `sensor` (which needs
//!   no `QUEUE_ORIGIN`);
//! * `RUST_LOG` for the log filter (default `info,lapin=warn`); logs go to stderr.
//!
//! What is here: the environment ([`ServiceEnv`], [`parse_var`]), a producer-only output
//! ([`Producer`]), SIGTERM/SIGINT handling ([`Shutdown`]), atomic file writes
//! ([`write_atomic`]), `fileList` paths ([`resolve_in_home`]), timestamps ([`rfc3339_ms`],
//! [`latency_ms`]), metadata accessors and the `main` of every service ([`run`]).

use std::fmt::Display;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aion_kanban::Kanban;
use aion_kanban::amqp::SharedConnection;
use aion_kanban::client::{ClientError, Sender};
use aion_kanban::config::{ServicesSource, notify_on_sighup, spawn_file_watch};
use aion_kanban::output::{Output, OutputError, OutputOptions};
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;

/// A variable of the environment that is missing or does not parse, named.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// A variable's value, `None` when unset or blank.
fn optional(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.trim().is_empty())
}

/// Variable `name` parsed as `T`, `default` when unset or blank.
///
/// # Errors
/// [`EnvError::Invalid`] naming the variable when it does not parse.
pub fn parse_var<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, EnvError>
where
    T::Err: Display,
{
    match optional(get, name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| EnvError::Invalid {
            name,
            value: v.clone(),
            reason: e.to_string(),
        }),
    }
}

/// What identifies a microservice instance in its pod: `SERVICE_NAME`, `MS_NUMBER`,
/// `AION_HOME`, `DEVICE_NAME` (the reconciler sets all four).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEnv {
    /// `SERVICE_NAME` (the microservice's name in services.yml); the binary's name when unset.
    pub service_name: String,
    /// `MS_NUMBER`, default 1.
    pub ms_number: i32,
    /// `AION_HOME`, default `/var/lib/aion`.
    pub aion_home: PathBuf,
    /// `DEVICE_NAME`, empty when unset.
    pub device_name: String,
}

impl ServiceEnv {
    /// Resolve from a lookup of environment variables (`get(name)` → value).
    ///
    /// # Errors
    /// `MS_NUMBER` that is not an integer ≥ 1.
    pub fn from_vars(
        get: &impl Fn(&str) -> Option<String>,
        default_name: &str,
    ) -> Result<ServiceEnv, EnvError> {
        let ms_number: i32 = parse_var(get, "MS_NUMBER", 1)?;
        if ms_number < 1 {
            return Err(EnvError::Invalid {
                name: "MS_NUMBER",
                value: ms_number.to_string(),
                reason: "instance numbers start at 1".into(),
            });
        }
        Ok(ServiceEnv {
            service_name: optional(get, "SERVICE_NAME").unwrap_or_else(|| default_name.into()),
            ms_number,
            aion_home: optional(get, "AION_HOME").map_or_else(
                || PathBuf::from("/var/lib/aion"),
                |h| PathBuf::from(h.trim()),
            ),
            device_name: optional(get, "DEVICE_NAME").unwrap_or_default(),
        })
    }

    /// The name objects and directories are named after: the last path segment of
    /// `SERVICE_NAME` without a tag (`Microservice::label_base` in aion-model).
    pub fn base(&self) -> &str {
        let last = self
            .service_name
            .rsplit('/')
            .next()
            .unwrap_or(&self.service_name);
        last.split(':').next().unwrap_or(last)
    }

    /// The instance's object name, `<base>-NNN` (its queues are `<base>-NNN.in/.out`).
    pub fn instance(&self) -> String {
        format!("{}-{:03}", self.base(), self.ms_number)
    }

    /// `$AION_HOME/Data`: the data directory, shared with the runtime (hostPath).
    pub fn data_root(&self) -> PathBuf {
        self.aion_home.join("Data")
    }

    /// `$AION_HOME/Data/<base>_<n>`: this instance's own directory, as upstream names it (the
    /// runtime stores files forwarded to this instance from other devices there too).
    pub fn data_dir(&self) -> PathBuf {
        self.data_root()
            .join(format!("{}_{}", self.base(), self.ms_number))
    }
}

/// What a producer-only service reads: `RABBITMQ_URL`, `QUEUE_TO` (required); `AION_SERVICES`,
/// `AION_DEVICE`, `AION_NAMESPACE` (optional, as for `aion_kanban::client::ClientConfig`).
/// Unlike `Client::from_env` it needs no `QUEUE_ORIGIN`: a producer consumes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    pub url: String,
    pub queue_to: String,
    pub services: Option<PathBuf>,
    pub device: Option<String>,
    pub namespace: Option<String>,
}

impl ProducerConfig {
    /// # Errors
    /// [`EnvError::Missing`] for a missing or blank `RABBITMQ_URL` / `QUEUE_TO`.
    pub fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Result<ProducerConfig, EnvError> {
        let required = |name: &'static str| optional(get, name).ok_or(EnvError::Missing(name));
        Ok(ProducerConfig {
            url: required("RABBITMQ_URL")?,
            queue_to: required("QUEUE_TO")?.trim().to_string(),
            services: optional(get, "AION_SERVICES").map(PathBuf::from),
            device: optional(get, "AION_DEVICE"),
            namespace: optional(get, "AION_NAMESPACE"),
        })
    }
}

/// The output of a service that only produces kanbans: producer-side routing by services.yml
/// (`aion_kanban::output::Output`, reloaded on SIGHUP and when the file changes, as
/// `Client` does) when `AION_SERVICES` is set, else confirmed sends to `QUEUE_TO` for the
/// runtime's router. One AMQP connection, opened at the first send.
pub struct Producer {
    out: Out,
    queue_to: String,
    watch: Vec<tokio::task::JoinHandle<()>>,
}

enum Out {
    Routed(Arc<Output>),
    ToQueue(Sender),
}

impl Drop for Producer {
    fn drop(&mut self) {
        for w in &self.watch {
            w.abort();
        }
    }
}

/// How long a service waits before exiting so that its output's last record batch (published
/// by a background task within 25 ms of a kanban's confirms; the runtime's replicator row and
/// on-demand start) leaves too. The client library has no flush.
pub const RECORD_GRACE: Duration = Duration::from_millis(300);

impl Producer {
    /// Start the output (within a Tokio runtime: the reload watch is a task).
    ///
    /// # Errors
    /// services.yml that does not load, or `QUEUE_TO` that is no instance's output queue in it
    /// (boxed: `OutputError` carries lapin's large error).
    pub fn start(cfg: ProducerConfig) -> Result<Producer, Box<OutputError>> {
        let conn = SharedConnection::new(&cfg.url, &format!("aion-examples {}", cfg.queue_to));
        let Some(path) = cfg.services else {
            return Ok(Producer {
                out: Out::ToQueue(Sender::on(conn)),
                queue_to: cfg.queue_to,
                watch: Vec::new(),
            });
        };
        let output = Arc::new(
            Output::on(
                conn,
                OutputOptions {
                    services: ServicesSource::File(path.clone()),
                    device: cfg.device,
                    queue_to: cfg.queue_to.clone(),
                    durable: true,
                },
                cfg.namespace.as_deref(),
            )
            .map_err(Box::new)?,
        );
        let reload = Arc::new(Notify::new());
        let mut watch = Vec::new();
        match notify_on_sighup(reload.clone()) {
            Ok(h) => watch.push(h),
            Err(e) => {
                tracing::warn!("no SIGHUP handler ({e}): services.yml reloads on change only")
            }
        }
        watch.push(spawn_file_watch(
            path,
            Duration::from_secs(2),
            reload.clone(),
        ));
        watch.push(output.reload_on(reload));
        Ok(Producer {
            out: Out::Routed(output),
            queue_to: cfg.queue_to,
            watch,
        })
    }

    /// Whether kanbans are routed producer-side (`AION_SERVICES` set).
    pub fn is_routed(&self) -> bool {
        matches!(self.out, Out::Routed(_))
    }

    /// Send `k` on; returns after the broker confirmed every hop.
    ///
    /// # Errors
    /// The broker unreachable or not confirming (nothing is known to have arrived).
    pub async fn send(&self, k: &Kanban) -> Result<(), ClientError> {
        match &self.out {
            Out::Routed(o) => Ok(o.send(k).await?),
            Out::ToQueue(s) => s.send(&self.queue_to, k).await,
        }
    }
}

/// SIGTERM (how Kubernetes stops a pod) and SIGINT, caught from [`Shutdown::install`] on: a
/// signal that arrives while the service is busy is kept until [`Shutdown::recv`].
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Install the handlers (within a Tokio runtime); do it first, before connecting.
    ///
    /// # Errors
    /// The handlers cannot be installed.
    pub fn install() -> std::io::Result<Shutdown> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal. Cancel-safe (for `tokio::select!`).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// The next message of `receiver`, or `None` once a signal arrived (logged as `stopping`) or
    /// the receiver was shut down: the loop of a service that consumes until it is stopped.
    pub async fn next_message(
        &mut self,
        receiver: &mut aion_kanban::client::Receiver,
    ) -> Option<aion_kanban::client::Message> {
        tokio::select! {
            biased;
            sig = self.recv() => {
                tracing::info!(signal = sig, "stopping");
                None
            }
            m = receiver.next() => m,
        }
    }
}

/// Write `data` to `path` atomically: a temporary file in the same directory, flushed to disk,
/// renamed over `path`, then the directory synced. A reader sees the old file or the whole new
/// one, never a part; a power cut leaves no half-written file.
///
/// # Errors
/// Any I/O error (the temporary file is removed).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: no file name", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(
            e.kind(),
            format!("writing {}: {e}", path.display()),
        ));
    }
    // The rename is durable once the directory is synced (best effort: not every filesystem
    // lets a directory be opened for that).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The file a `fileList` entry names, as the runtime reads it for cross-device forwarding
/// (`aion_kanban::router::read_files`): relative paths are relative to `$AION_HOME`, absolute
/// ones are taken as they are (the runtime rewrites forwarded files to absolute paths under its
/// data directory, mounted at the same path in every pod); symlinks are resolved and a file
/// outside `$AION_HOME` is refused.
///
/// # Errors
/// The file does not exist, or resolves outside `$AION_HOME` (a message naming the entry).
pub fn resolve_in_home(home: &Path, entry: &str) -> Result<PathBuf, String> {
    let home_c = home
        .canonicalize()
        .map_err(|e| format!("AION_HOME {}: {e}", home.display()))?;
    let path = if Path::new(entry).is_absolute() {
        PathBuf::from(entry)
    } else {
        home.join(entry)
    };
    let real = path
        .canonicalize()
        .map_err(|e| format!("fileList entry {entry}: {e}"))?;
    if !real.starts_with(&home_c) || !real.is_file() {
        return Err(format!(
            "fileList entry {entry} is not a file inside {}",
            home.display()
        ));
    }
    Ok(real)
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-05-01T12:00:00.123Z`.
pub fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds from RFC 3339 time `emitted_at` to `now` (negative when clocks of two devices
/// disagree), `None` when it does not parse.
pub fn latency_ms(emitted_at: &str, now: DateTime<Utc>) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(emitted_at).ok()?;
    let us = now
        .signed_duration_since(t.with_timezone(&Utc))
        .num_microseconds()?;
    Some(us as f64 / 1000.0)
}

/// `metadata.<key>` as an unsigned integer.
pub fn meta_u64(k: &Kanban, key: &str) -> Option<u64> {
    k.metadata.get(key)?.as_u64()
}

/// `metadata.<key>` as a number.
pub fn meta_f64(k: &Kanban, key: &str) -> Option<f64> {
    k.metadata.get(key)?.as_f64()
}

/// `metadata.<key>` as a string.
pub fn meta_str<'a>(k: &'a Kanban, key: &str) -> Option<&'a str> {
    k.metadata.get(key)?.as_str()
}

/// The `main` of every service: logs to stderr (filter `RUST_LOG`, default `info,lapin=warn`;
/// colour only on a terminal and without `NO_COLOR`), a single-threaded Tokio runtime (the
/// client's AMQP connection has an I/O thread of its own), `service` run to its end; an error
/// is logged and the exit code is 1.
pub fn run<F, Fut>(service: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(service()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An environment made of `pairs`, as the `from_vars` readers take it: settings from somewhere
/// else than the process environment (a test's, a supervisor's).
pub fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_env_as_the_reconciler_renders_it() {
        let e = ServiceEnv::from_vars(
            &vars(&[
                ("SERVICE_NAME", "sensor"),
                ("AION_HOME", "/var/lib/aion"),
                ("DEVICE_NAME", "jetson-1"),
                ("MS_NUMBER", "2"),
            ]),
            "x",
        )
        .unwrap();
        assert_eq!(e.instance(), "sensor-002");
        assert_eq!(e.data_dir(), Path::new("/var/lib/aion/Data/sensor_2"));
        assert_eq!(e.device_name, "jetson-1");
        // Defaults outside a pod; a registry path and tag in the name are not part of it.
        let e =
            ServiceEnv::from_vars(&vars(&[("SERVICE_NAME", "reg.io/team/sink:1.2")]), "x").unwrap();
        assert_eq!(e.base(), "sink");
        assert_eq!(e.instance(), "sink-001");
        assert_eq!(e.data_root(), Path::new("/var/lib/aion/Data"));
        let e = ServiceEnv::from_vars(&vars(&[("SERVICE_NAME", " ")]), "sensor").unwrap();
        assert_eq!(e.service_name, "sensor");
    }

    #[test]
    fn bad_variables_are_named() {
        let err = ServiceEnv::from_vars(&vars(&[("MS_NUMBER", "two")]), "x").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable MS_NUMBER=\"two\"")
        );
        let err = ServiceEnv::from_vars(&vars(&[("MS_NUMBER", "0")]), "x").unwrap_err();
        assert!(err.to_string().contains("start at 1"), "{err}");
        assert_eq!(parse_var(&vars(&[("N", " 7 ")]), "N", 1u64).unwrap(), 7);
        assert_eq!(parse_var(&vars(&[]), "N", 1u64).unwrap(), 1);
        assert!(parse_var(&vars(&[("N", "-1")]), "N", 1u64).is_err());
    }

    #[test]
    fn a_producer_needs_no_input_queue() {
        let c = ProducerConfig::from_vars(&vars(&[
            ("RABBITMQ_URL", "amqp://h"),
            ("QUEUE_TO", "sensor-001.out"),
            ("AION_SERVICES", "/var/lib/aion/config/services.yml"),
            ("AION_DEVICE", ""),
            ("AION_NAMESPACE", "edge"),
        ]))
        .unwrap();
        assert_eq!(c.queue_to, "sensor-001.out");
        assert_eq!(
            c.services.as_deref(),
            Some(Path::new("/var/lib/aion/config/services.yml"))
        );
        assert_eq!(c.device, None);
        assert_eq!(c.namespace.as_deref(), Some("edge"));
        let err = ProducerConfig::from_vars(&vars(&[("RABBITMQ_URL", "amqp://h")])).unwrap_err();
        assert_eq!(err.to_string(), "environment variable QUEUE_TO is not set");
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("1.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["1.json"]);
        // A directory that does not exist: an error naming the file, nothing left behind.
        let err = write_atomic(&d.path().join("no/x.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("no/x.json"), "{err}");
    }

    #[test]
    fn file_list_entries_resolve_inside_aion_home_only() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("Data/sensor_1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.csv"), "x").unwrap();
        let real = dir.canonicalize().unwrap().join("r.csv");
        assert_eq!(
            resolve_in_home(home.path(), "Data/sensor_1/r.csv").unwrap(),
            real
        );
        let abs = dir.join("r.csv").to_string_lossy().into_owned();
        assert_eq!(resolve_in_home(home.path(), &abs).unwrap(), real);
        assert!(resolve_in_home(home.path(), "/etc/hostname").is_err());
        assert!(resolve_in_home(home.path(), "Data/../../etc/hostname").is_err());
        assert!(
            resolve_in_home(home.path(), "Data/sensor_1").is_err(),
            "a directory"
        );
        assert!(resolve_in_home(home.path(), "Data/nope.csv").is_err());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("s"), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("s"), dir.join("link")).unwrap();
        assert!(resolve_in_home(home.path(), "Data/sensor_1/link").is_err());
    }

    #[test]
    fn timestamps_have_milliseconds_and_give_latencies() {
        let t = DateTime::parse_from_rfc3339("2026-05-01T12:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339_ms(t), "2026-05-01T12:00:00.123Z");
        let later = t + chrono::Duration::microseconds(2_500);
        assert_eq!(latency_ms(&rfc3339_ms(t), later), Some(2.956));
        assert_eq!(
            latency_ms("2026-05-01T14:00:00.123+02:00", later),
            Some(2.956)
        );
        assert_eq!(latency_ms("yesterday", later), None);
    }

    #[test]
    fn metadata_accessors() {
        let k =
            Kanban::decode(br#"{"metadata":{"seq":3,"reading":21.5,"emittedAt":"t","neg":-1}}"#)
                .unwrap();
        assert_eq!(meta_u64(&k, "seq"), Some(3));
        assert_eq!(meta_u64(&k, "neg"), None);
        assert_eq!(meta_f64(&k, "reading"), Some(21.5));
        assert_eq!(meta_f64(&k, "seq"), Some(3.0));
        assert_eq!(meta_str(&k, "emittedAt"), Some("t"));
        assert_eq!(meta_str(&k, "missing"), None);
    }
}
