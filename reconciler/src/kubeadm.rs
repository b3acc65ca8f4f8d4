//! The images kubeadm and the pod network run on a node, so that a device without a registry
//! gets them through the image path before `kubeadm init`/`join` needs them (issue #15).
//!
//! kubeadm pins these per release; the values are kubeadm 1.37's (`cmd/kubeadm/app/constants`
//! of `k8s.io/kubernetes` v1.37.2: `PauseVersion`, `CoreDNSVersion`, `SupportedEtcdVersion`),
//! the release the `kubernetes` role installs by default. containerd's sandbox image (role
//! `containerd`) is [`pause_image`], so kubeadm's preflight and the kubelet agree on it.

use aion_model::inventory::{Host, Role};

pub const PAUSE_VERSION: &str = "3.10.2";
pub const COREDNS_VERSION: &str = "v1.14.6";
pub const ETCD_VERSION: &str = "3.7.0-0";

/// The pod sandbox image (`pause`) of an image repository.
pub fn pause_image(repository: &str) -> String {
    format!("{repository}/pause:{PAUSE_VERSION}")
}

/// CoreDNS as kubeadm names it: under `coredns/` in the default repository only
/// (`GetDNSImage`).
pub fn coredns_image(repository: &str) -> String {
    if repository == aion_model::inventory::DEFAULT_IMAGE_REPOSITORY {
        format!("{repository}/coredns/coredns:{COREDNS_VERSION}")
    } else {
        format!("{repository}/coredns:{COREDNS_VERSION}")
    }
}

/// One image a node runs for Kubernetes itself: what runs it and the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImage {
    /// `kubeadm init`, `kubeadm addon`, `Flannel` …: what starts it (for error messages).
    pub by: &'static str,
    /// The container or component name.
    pub name: &'static str,
    pub reference: String,
}

/// Every image `host` needs before it joins the cluster: on every node the pod sandbox,
/// kube-proxy and Flannel's two (DaemonSets), and CoreDNS (a Deployment the scheduler may put
/// on any node); on a master also the control plane kubeadm runs as static pods (what
/// `kubeadm config images list` names).
pub fn node_images(host: &Host) -> Vec<NodeImage> {
    let v = &host.vars;
    let repo = v.image_repository.as_str();
    let version = format!("v{}", v.kubernetes_version.trim_start_matches('v'));
    let image = |by, name, reference| NodeImage {
        by,
        name,
        reference,
    };
    let mut out = Vec::new();
    if host.role == Role::Master {
        for name in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            out.push(image(
                "kubeadm init",
                name,
                format!("{repo}/{name}:{version}"),
            ));
        }
        out.push(image(
            "kubeadm init",
            "etcd",
            format!("{repo}/etcd:{ETCD_VERSION}"),
        ));
    }
    out.push(image("containerd", "pause", pause_image(repo)));
    out.push(image(
        "kubeadm addon",
        "kube-proxy",
        format!("{repo}/kube-proxy:{version}"),
    ));
    out.push(image("kubeadm addon", "coredns", coredns_image(repo)));
    out.push(image(
        "Flannel",
        "install-cni-plugin",
        v.images.flannel_cni_plugin.clone(),
    ));
    out.push(image("Flannel", "kube-flannel", v.images.flannel.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aion_model::inventory::{Host, HostVars, SshSettings};

    fn host(role: Role, repository: &str) -> Host {
        Host {
            name: "h".into(),
            address: "10.0.0.1".into(),
            role,
            ssh: SshSettings {
                user: "root".into(),
                port: 22,
                key: None,
            },
            vars: HostVars {
                kubernetes_version: "1.37.2".into(),
                image_repository: repository.into(),
                ..Default::default()
            },
            services: None,
            data_sweeper: None,
            images_from: None,
            span: Default::default(),
        }
    }

    /// What `kubeadm config images list` names for a master, and a worker's share of it, with
    /// CoreDNS under `coredns/` in the default repository only.
    #[test]
    fn a_master_needs_the_control_plane_a_worker_the_node_images() {
        let refs =
            |h: &Host| -> Vec<String> { node_images(h).into_iter().map(|i| i.reference).collect() };
        let master = refs(&host(Role::Master, "aion.local/k8s"));
        for r in [
            "aion.local/k8s/kube-apiserver:v1.37.2",
            "aion.local/k8s/kube-controller-manager:v1.37.2",
            "aion.local/k8s/kube-scheduler:v1.37.2",
            "aion.local/k8s/etcd:3.7.0-0",
            "aion.local/k8s/pause:3.10.2",
            "aion.local/k8s/kube-proxy:v1.37.2",
            "aion.local/k8s/coredns:v1.14.6",
        ] {
            assert!(master.contains(&r.to_string()), "{r} in {master:?}");
        }
        let worker = refs(&host(Role::Worker, "registry.k8s.io"));
        assert!(
            !worker
                .iter()
                .any(|r| r.contains("kube-apiserver") || r.contains("etcd"))
        );
        assert!(worker.contains(&"registry.k8s.io/coredns/coredns:v1.14.6".to_string()));
        assert!(worker.contains(&"registry.k8s.io/pause:3.10.2".to_string()));
        let d = aion_model::inventory::CoreImages::default();
        assert!(worker.contains(&d.flannel) && worker.contains(&d.flannel_cni_plugin));
    }
}
