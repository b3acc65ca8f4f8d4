//! `aion-reconcile peer-url` and `aion-reconcile remote-credentials`: hand a device of another
//! installation its credentials for this one, and store the credentials another installation
//! issued to a device of this one (see [`crate::cluster::peers`]).
//!
//! ```sh
//! # on installation B (whose inventory lists `peers: [{device: line-a-cam}]`):
//! aion-reconcile peer-url -i b.yml line-a-cam > /dev/stdout   # amqp://peer.line-a-cam:…@{addr}:32094/…
//! # on installation A, the sending device's host `edge-1`, B's device `line-b-gw`:
//! … | aion-reconcile remote-credentials -i a.yml --host edge-1 line-b-gw
//! ```

use std::io::Read;
use std::path::PathBuf;

use crate::cluster::peers;
use crate::kubeclient;

#[derive(Debug, clap::Args)]
pub struct PeerUrlArgs {
    /// Inventory file (it lists the device under `peers`).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The host of this inventory the peer sends to (needed when it may reach several).
    #[arg(long)]
    pub to: Option<String>,
    /// The peer device (of the other installation).
    pub device: String,
}

#[derive(Debug, clap::Args)]
pub struct RemoteCredentialsArgs {
    /// Inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, else the inventory's `kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The host of this inventory whose device sends (its namespace's runtime reads the URL).
    #[arg(long)]
    pub host: String,
    /// The device of the other installation, as this host's services.yml `devices` names it.
    pub device: String,
}

/// Print the URL for the peer (it holds a password: stdout only, nothing written).
pub fn peer_url(args: &PeerUrlArgs) -> anyhow::Result<u8> {
    let inv = crate::reconcile::load_inventory(&args.inventory)?;
    let issue = peers::issue(&inv, &args.device, args.to.as_deref())?;
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    let url = rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        anyhow::Ok(peers::issued_url(&client, &issue).await?)
    })?;
    println!("{url}");
    eprintln!(
        "issued to device `{}` for host `{}` (virtual host `{}`, port {}): give it to that installation's operator for `aion-reconcile remote-credentials`",
        issue.device, issue.host, issue.vhost, issue.port
    );
    Ok(0)
}

/// Read the issued URL from stdin and store it for the host's runtime.
pub fn remote_credentials(args: &RemoteCredentialsArgs) -> anyhow::Result<u8> {
    let inv = crate::reconcile::load_inventory(&args.inventory)?;
    let host = inv
        .host(&args.host)
        .ok_or_else(|| peers::PeerError::UnknownHost(args.host.clone()))?;
    let namespace = host.vars.namespace.clone();
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("reading the URL from stdin: {e}"))?;
    let url = peers::check_issued_url(&text)?;
    let kubeconfig = kubeclient::resolve_kubeconfig(args.kubeconfig.as_deref(), &inv.kubeconfig);
    let rt = kubeclient::runtime()?;
    rt.block_on(async {
        let client = kubeclient::client_from(&kubeconfig).await?;
        anyhow::Ok(peers::store_remote(&client, &namespace, &args.device, &url).await?)
    })?;
    eprintln!(
        "stored for device `{}` in Secret {namespace}/{}: the runtime of host `{}` uses it at its next connection",
        args.device,
        crate::render::broker::REMOTES_SECRET,
        args.host
    );
    Ok(0)
}
