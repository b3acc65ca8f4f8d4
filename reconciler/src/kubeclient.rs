//! The Kubernetes client: from the inventory's kubeconfig (`inventory.kubeconfig`, fetched from the
//! master by `apply`), overridable with `--kubeconfig` or `KUBECONFIG`.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: cannot build a client: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// Which kubeconfig to use: the `--kubeconfig` flag, else the first entry of `KUBECONFIG`, else
/// the inventory's.
pub fn resolve_kubeconfig(flag: Option<&Path>, inventory_kubeconfig: &Path) -> PathBuf {
    if let Some(p) = flag {
        return p.to_owned();
    }
    if let Some(v) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    inventory_kubeconfig.to_owned()
}

/// Select rustls' ring backend for the process unless one is installed already. Needed when a
/// build enables both ring (kube) and aws-lc-rs (lapin): rustls then refuses to guess.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the current context of `kubeconfig`. Needs a tokio runtime.
pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client, KubeClientError> {
    install_crypto_provider();
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|source| KubeClientError::Kubeconfig {
        path: kubeconfig.to_owned(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| KubeClientError::Kubeconfig {
            path: kubeconfig.to_owned(),
            source,
        })?;
    kube::Client::try_from(config).map_err(|source| KubeClientError::Client {
        path: kubeconfig.to_owned(),
        source,
    })
}

/// The runtime the cluster commands run on (the CLI is synchronous at its edge).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
