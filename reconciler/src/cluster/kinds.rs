//! The kinds aion-reconcile renders (and so may prune), and listing what an inventory owns.

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::error::ClusterError;
use crate::manifest::{LABEL_INVENTORY, LABEL_MANAGED_BY, MANAGED_BY, ObjectKey};

/// A kind we render, and therefore may prune.
#[derive(Debug, Clone, Copy)]
pub struct ManagedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// Every kind the templates produce, in apply order.
pub const MANAGED_KINDS: &[ManagedKind] = &[
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
    },
    ManagedKind {
        group: "node.k8s.io",
        version: "v1",
        kind: "RuntimeClass",
        plural: "runtimeclasses",
        namespaced: false,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
    },
    ManagedKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        namespaced: true,
    },
    ManagedKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
    },
    ManagedKind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
    },
    ManagedKind {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
];

pub(super) fn managed_kind(kind: &str) -> Option<&'static ManagedKind> {
    MANAGED_KINDS.iter().find(|k| k.kind == kind)
}

impl ManagedKind {
    fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
    pub(super) fn api(&self, client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = self.api_resource();
        match (self.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        }
    }
}

/// The label selector for everything this inventory owns.
pub fn ownership_selector(inventory: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INVENTORY}={inventory}")
}

/// List every object of this inventory in the cluster (ownership labels), by managed kind.
pub async fn list_owned(
    client: &kube::Client,
    inventory: &str,
) -> Result<Vec<(ObjectKey, Value)>, ClusterError> {
    let lp = ListParams::default().labels(&ownership_selector(inventory));
    let mut out = Vec::new();
    for mk in MANAGED_KINDS {
        let api = mk.api(client, None);
        let list = api.list(&lp).await.map_err(|e| ClusterError::Api {
            object: format!("list {} of inventory {inventory}", mk.plural),
            source: e,
        })?;
        for item in list.items {
            let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
            let api_version = if mk.group.is_empty() {
                mk.version.to_owned()
            } else {
                format!("{}/{}", mk.group, mk.version)
            };
            v["apiVersion"] = Value::String(api_version.clone());
            v["kind"] = Value::String(mk.kind.to_owned());
            out.push((
                ObjectKey {
                    api_version,
                    kind: mk.kind.to_owned(),
                    namespace: item.metadata.namespace.clone(),
                    name: item.metadata.name.clone().unwrap_or_default(),
                },
                v,
            ));
        }
    }
    Ok(out)
}

pub(super) fn identity(k: &ObjectKey) -> (String, Option<String>, String) {
    (k.kind.clone(), k.namespace.clone(), k.name.clone())
}
