//! The native inventory format (`schemas/inventory.schema.json`).

use std::path::Path;

use crate::diag::{Diagnostic, Loaded};
use crate::read::Reader;
use crate::yaml::Node;

use super::fields::*;
use super::*;

pub(super) fn from_native(root: &Node, file: &Path, dir: &Path) -> (Loaded<Inventory>, Located) {
    let mut r = Reader::new(std::sync::Arc::new(file.to_path_buf()));
    let mut name = None;
    let mut mode = None;
    let mut known_hosts = None;
    let mut kubeconfig = None;
    let mut revision_history = None;
    let mut previous_images = None;
    let mut image_sources = Vec::new();
    let mut peers = Vec::new();
    let mut entry_port = None;
    let mut entry_tls = None;
    let mut global_at = Origins::default();
    let mut base = Partial::default();
    let mut drafts = Vec::new();
    if let Some(f) = r.fields(root, "", "the inventory", TOP_KEYS) {
        if let Some((n, p)) = f.get("name") {
            name = r.string(n, &p, "name");
        }
        if let Some((n, p)) = f.get("mode") {
            let v = read_mode(&mut r, n, &p, "mode");
            mode = noted(&r, &mut global_at, "mode", n, &p, v);
        }
        if let Some((n, p)) = f.get("knownHosts") {
            let v = r.string(n, &p, "knownHosts");
            known_hosts = noted(&r, &mut global_at, "knownHosts", n, &p, v);
        }
        if let Some((n, p)) = f.get("kubeconfig") {
            kubeconfig = r.string(n, &p, "kubeconfig");
        }
        if let Some((n, p)) = f.get("revisionHistory") {
            revision_history = read_revision_history(&mut r, n, &p, "revisionHistory");
        }
        if let Some((n, p)) = f.get("previousImages") {
            previous_images = read_previous_images(&mut r, n, &p, "previousImages");
        }
        if let Some((n, p)) = f.get("imageSources") {
            image_sources = read_image_sources(&mut r, n, &p, "imageSources");
        }
        if let Some((n, p)) = f.get("peers") {
            peers = read_peers(&mut r, n, &p, "peers");
        }
        if let Some((n, p)) = f.get("entryTls") {
            entry_tls = read_entry_tls(&mut r, n, &p, "entryTls");
        }
        if let Some((n, p)) = f.get("entryPort") {
            let v = read_entry_port(&mut r, n, &p, "entryPort");
            entry_port = noted(&r, &mut global_at, "entryPort", n, &p, v);
        }
        if let Some((n, p)) = f.get("services") {
            let v = r.string(n, &p, "services");
            base.services = noted(&r, &mut base.at, "services", n, &p, v);
        }
        if let Some((n, p)) = f.get("dataSweeper") {
            let v = r.string(n, &p, "dataSweeper");
            base.data_sweeper = noted(&r, &mut base.at, "dataSweeper", n, &p, v);
        }
        if let Some((n, p)) = f.get("imagesFrom") {
            let v = r.string(n, &p, "imagesFrom");
            base.images_from = noted(&r, &mut base.at, "imagesFrom", n, &p, v);
        }
        if let Some((n, p)) = f.get("ssh") {
            read_ssh(&mut r, n, &p, &mut base);
        }
        if let Some((n, p)) = f.get("vars") {
            read_vars(&mut r, n, &p, &mut base);
        }
        match f.get("hosts") {
            None => r.diags.push(
                Diagnostic::error("no-hosts", "the inventory has no `hosts:` list", r.span(root), "")
                    .with_hint("add `hosts:` with at least the master: `- {name: edge-master, address: 10.0.0.2, role: master}`"),
            ),
            Some((n, p)) => match n.as_seq() {
                None if n.is_null() => {}
                None => r.type_error(n, &p, "hosts", "a list of hosts"),
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let hp = format!("{p}/{i}");
                        let Some(hf) = r.fields(item, &hp, "a host", HOST_KEYS) else {
                            continue;
                        };
                        let mut partial = base.clone();
                        let mut own = Partial::default();
                        let mut host_name = String::new();
                        match hf.get("name") {
                            Some((n, p)) => {
                                let v = r.string(n, &p, "name");
                                host_name = noted(&r, &mut own.at, "name", n, &p, v).unwrap_or_default();
                            }
                            None => r.diags.push(
                                Diagnostic::error("missing-key", "a host needs `name:`", r.span(item), hp.clone())
                                    .with_hint("the name is the device's hostname and Kubernetes node name"),
                            ),
                        }
                        match hf.get("address") {
                            Some((n, p)) => {
                                let v = r.string(n, &p, "address");
                                own.address = noted(&r, &mut own.at, "address", n, &p, v);
                            }
                            None => r.diags.push(
                                Diagnostic::error("missing-key", format!("host `{host_name}` needs `address:`"), r.span(item), hp.clone())
                                    .with_hint("the IP address or DNS name to reach it over SSH"),
                            ),
                        }
                        match hf.get("role") {
                            Some((n, p)) => {
                                let v = read_role(&mut r, n, &p, "role");
                                own.role = noted(&r, &mut own.at, "role", n, &p, v);
                            }
                            None => r.diags.push(
                                Diagnostic::error("missing-key", format!("host `{host_name}` needs `role:` (master or worker)"), r.span(item), hp.clone())
                                    .with_hint("exactly one host is `role: master`"),
                            ),
                        }
                        if let Some((n, p)) = hf.get("ssh") {
                            read_ssh(&mut r, n, &p, &mut own);
                        }
                        if let Some((n, p)) = hf.get("vars") {
                            read_vars(&mut r, n, &p, &mut own);
                        }
                        if let Some((n, p)) = hf.get("services") {
                            let v = r.string(n, &p, "services");
                            own.services = noted(&r, &mut own.at, "services", n, &p, v);
                        }
                        if let Some((n, p)) = hf.get("dataSweeper") {
                            let v = r.string(n, &p, "dataSweeper");
                            own.data_sweeper = noted(&r, &mut own.at, "dataSweeper", n, &p, v);
                        }
                        if let Some((n, p)) = hf.get("imagesFrom") {
                            let v = r.string(n, &p, "imagesFrom");
                            own.images_from = noted(&r, &mut own.at, "imagesFrom", n, &p, v);
                        }
                        partial.over(&own);
                        drafts.push(Draft {
                            pointer: hp.clone(),
                            name: host_name,
                            partial,
                            span: r.span(item),
                        });
                    }
                }
            },
        }
    }
    finish(
        file,
        dir,
        root,
        Globals {
            at: global_at,
            name,
            mode,
            known_hosts,
            kubeconfig,
            revision_history,
            previous_images,
            image_sources,
            peers,
            entry_port,
            entry_tls,
        },
        drafts,
        r,
    )
}
