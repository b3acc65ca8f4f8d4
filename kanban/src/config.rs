//! Where `services.yml` comes from and how a change is noticed: the router and the client
//! library's producer-side routing both reload it on SIGHUP and when the file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aion_model::ServicesFile;
use tokio::sync::Notify;

/// Where the configuration comes from.
#[derive(Clone)]
pub enum ServicesSource {
    /// Re-read on SIGHUP and when the file changes.
    File(PathBuf),
    /// A fixed value (tests, embedding).
    Value(Arc<ServicesFile>),
}

impl ServicesSource {
    /// The current configuration (reads the file for [`ServicesSource::File`]).
    pub fn load(&self) -> Result<Arc<ServicesFile>, ConfigError> {
        match self {
            ServicesSource::File(p) => load_services(p).map(Arc::new),
            ServicesSource::Value(v) => Ok(v.clone()),
        }
    }
}

/// Error loading the services file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
}

pub fn load_services(path: &Path) -> Result<ServicesFile, ConfigError> {
    let loaded = aion_model::services::load(path).map_err(|e| ConfigError::Load(e.to_string()))?;
    for d in &loaded.diagnostics {
        tracing::warn!("{d}");
    }
    Ok(loaded.value)
}

/// Notify `reload` whenever `path` changes (modification time or size), checked every `every`.
pub fn spawn_file_watch(
    path: PathBuf,
    every: Duration,
    reload: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last: Option<(Option<SystemTime>, u64)> = stamp(&path);
        loop {
            tokio::time::sleep(every).await;
            let now = stamp(&path);
            if now != last {
                last = now;
                tracing::info!("{} changed", path.display());
                reload.notify_one();
            }
        }
    })
}

/// Notify `reload` on every SIGHUP this process receives. The handler is installed before this
/// returns, so a SIGHUP sent afterwards never terminates the process.
pub fn notify_on_sighup(reload: Arc<Notify>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading services.yml");
            reload.notify_one();
        }
    }))
}
