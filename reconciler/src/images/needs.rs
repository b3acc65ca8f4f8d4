//! Which images each host's pods run, and where each is in the sources.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::Manifests;

use super::error::ImageError;
use super::platform::Platform;
use super::reference::normalize;
use super::sources::{Catalog, SourceImage};

/// host → the images its pods run (resolved in the sources); empty without `imageSources`.
pub type Wanted = BTreeMap<String, Vec<SourceImage>>;

/// One image a pod on a host runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    /// As written in the pod spec.
    pub reference: String,
    /// The object (`Deployment/ns/name`).
    pub object: String,
    pub container: String,
}

/// Every container and init container image of the pods the manifests put on each host:
/// host → needs, in object order.
pub fn needed(manifests: &Manifests) -> BTreeMap<String, Vec<Need>> {
    let mut out: BTreeMap<String, Vec<Need>> = BTreeMap::new();
    for o in manifests.objects() {
        let pod = match o.key.kind.as_str() {
            "Pod" => o.value.pointer("/spec"),
            "CronJob" => o.value.pointer("/spec/jobTemplate/spec/template/spec"),
            "Deployment" | "Job" | "DaemonSet" | "StatefulSet" | "ReplicaSet" => {
                o.value.pointer("/spec/template/spec")
            }
            _ => None,
        };
        let Some(pod) = pod else { continue };
        let host = pod
            .pointer("/nodeSelector/kubernetes.io~1hostname")
            .and_then(|v| v.as_str())
            .unwrap_or(&o.node)
            .to_string();
        for list in ["initContainers", "containers"] {
            for c in pod
                .get(list)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(image) = c.get("image").and_then(|v| v.as_str()) {
                    out.entry(host.clone()).or_default().push(Need {
                        reference: image.to_string(),
                        object: o.key.to_string(),
                        container: c
                            .get("name")
                            .and_then(|v| v.as_str())
                            .unwrap_or("?")
                            .to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Every host's node images ([`crate::kubeadm::node_images`]: the pod sandbox, kube-proxy,
/// CoreDNS, Flannel; on a master the control plane) ahead of what its pods run: a device
/// without a registry needs them before `kubeadm init`/`join` starts its kubelet.
pub fn with_node_images(
    inventory: &aion_model::Inventory,
    pods: BTreeMap<String, Vec<Need>>,
) -> BTreeMap<String, Vec<Need>> {
    let mut out = pods;
    for host in &inventory.hosts {
        let node = crate::kubeadm::node_images(host).into_iter().map(|i| Need {
            reference: i.reference,
            object: i.by.to_string(),
            container: i.name.to_string(),
        });
        let list = out.entry(host.name.clone()).or_default();
        let pods = std::mem::take(list);
        list.extend(node);
        list.extend(pods);
    }
    out
}

/// Each host's images from the catalog (each once, by normalised reference, in first-need
/// order); every image no source has is an error naming host, object and reference.
pub fn resolve(
    needs: &BTreeMap<String, Vec<Need>>,
    catalog: &Catalog,
) -> Result<BTreeMap<String, Vec<SourceImage>>, Vec<ImageError>> {
    let mut out: BTreeMap<String, Vec<SourceImage>> = BTreeMap::new();
    let mut errors = Vec::new();
    let sources = catalog
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for (host, list) in needs {
        let imgs = out.entry(host.clone()).or_default();
        let mut missing = BTreeSet::new();
        for n in list {
            match catalog.get(&n.reference) {
                Some(img) => {
                    let mut img = img.clone();
                    img.reference = normalize(&n.reference);
                    if !imgs.iter().any(|i| i.reference == img.reference) {
                        imgs.push(img);
                    }
                }
                None => {
                    if missing.insert(n.reference.clone()) {
                        errors.push(ImageError::Missing {
                            host: host.clone(),
                            object: n.object.clone(),
                            container: n.container.clone(),
                            reference: n.reference.clone(),
                            sources: sources.clone(),
                        });
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A host's images as its platform (`uname -m` in its facts) gets them: of a multi-platform
/// index the variant that suits it ([`SourceImage::for_platform`]). Every image that cannot run
/// there is named in the error, with the platforms the source has.
pub fn for_machine(images: &[SourceImage], machine: &str) -> Result<Vec<SourceImage>, String> {
    let platform = Platform::of_machine(machine);
    let mut out = Vec::with_capacity(images.len());
    let mut wrong = Vec::new();
    for img in images {
        let chosen = match &platform {
            Some(p) => img.for_platform(p),
            // A machine the table does not know: single-platform images go as they are (the
            // kubelet will say if they cannot run), an index cannot be chosen from.
            None if img.variants.is_empty() => Ok(img.clone()),
            None => Err(format!(
                "is a multi-platform index and the host's machine `{machine}` (uname -m) names no platform aion knows"
            )),
        };
        match chosen {
            Ok(i) => out.push(i),
            Err(e) => wrong.push(format!("image {} {e}", img.reference)),
        }
    }
    if wrong.is_empty() {
        Ok(out)
    } else {
        Err(wrong.join("; "))
    }
}

/// Normalised reference → manifest digest of every image in `wanted` (what a revision records).
pub fn digests(wanted: &Wanted) -> BTreeMap<String, String> {
    wanted
        .values()
        .flatten()
        .map(|i| (i.reference.clone(), i.digest.clone()))
        .collect()
}
