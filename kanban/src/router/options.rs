//! The router's settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::lifecycle::KubeLifecycle;
use crate::replicator::Replicator;

pub use crate::config::ServicesSource;

pub struct RouterOptions {
    pub services: ServicesSource,
    /// This device's name; `None` → `deviceName` from services.yml.
    pub device: Option<String>,
    pub amqp_url: String,
    /// Kubernetes namespace this runtime serves (`AION_NAMESPACE`), `None` when not configured:
    /// scopes the records queue it consumes ([`topology::records_queue_name`]), so runtimes of
    /// several namespaces can share one broker (cluster mode).
    pub namespace: Option<String>,
    /// Broker URL per remote device name; others use `remote_template`.
    pub device_amqp: HashMap<String, String>,
    /// Template for a remote device's broker URL; `{addr}` is replaced by `devices.<name>.addr`.
    pub remote_template: String,
    /// The data directory (`$AION_HOME/Data`); relative `fileList` paths are resolved against
    /// its parent (`$AION_HOME`), received files are stored under `<data>/<service>_<n>/`.
    pub data_dir: PathBuf,
    pub prefetch: u16,
    pub replicator: Option<Replicator>,
    pub lifecycle: Option<Arc<KubeLifecycle>>,
    /// How often to check the services file for changes.
    pub watch_interval: Duration,
    /// How often to check instances (lifecycle only): `always` instances kept running, and any
    /// instance whose input queue holds kanbans but has no consumer started (the backstop for
    /// a client's record lost in a crash).
    pub check_interval: Duration,
    /// Triggered externally to reload (SIGHUP handler, tests).
    pub reload: Arc<Notify>,
}

impl RouterOptions {
    pub fn new(services: ServicesSource, amqp_url: impl Into<String>) -> Self {
        RouterOptions {
            services,
            device: None,
            amqp_url: amqp_url.into(),
            namespace: None,
            device_amqp: HashMap::new(),
            remote_template: "amqp://guest:guest@{addr}:5672/%2f".into(),
            data_dir: PathBuf::from("/var/lib/aion/Data"),
            prefetch: 64,
            replicator: None,
            lifecycle: None,
            watch_interval: Duration::from_secs(2),
            check_interval: Duration::from_secs(30),
            reload: Arc::new(Notify::new()),
        }
    }
}
