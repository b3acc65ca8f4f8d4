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
    /// Broker URL per device of this installation (its virtual host on the shared broker).
    pub device_amqp: HashMap<String, String>,
    /// Devices of other installations: a directory with one credentials file per device (a URL
    /// with `{addr}`, issued by that installation), see [`super::remote`].
    pub remote_credentials: Option<PathBuf>,
    /// Devices of other installations that may send to this one (`--peers`). None: whichever
    /// peer user the broker lets in (its permissions are the only gate); Some: others are
    /// dead-lettered, also a peer removed from the inventory whose broker user still exists.
    pub peers: Option<Vec<String>>,
    /// Template for any other device's broker URL; `{addr}` is replaced by
    /// `devices.<name>.addr`. None: such a kanban is dead-lettered (no built-in `guest`).
    pub remote_template: Option<String>,
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
            remote_credentials: None,
            peers: None,
            remote_template: None,
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
