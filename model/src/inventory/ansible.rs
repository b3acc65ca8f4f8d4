//! The Ansible-style YAML inventory (`all:`/`children:`/`hosts:`/`vars:`), converted into the
//! same [`Inventory`].

use std::path::Path;

use crate::diag::{Diagnostic, Loaded};
use crate::read::{Reader, suggest};
use crate::span::Span;
use crate::yaml::{Node, join_pointer};

use super::fields::*;
use super::*;

/// One Ansible variable into a partial (aion_* typos warned).
fn ansible_var(r: &mut Reader, key: &str, n: &Node, p: &str, into: &mut Partial, global: bool) {
    match key {
        "ansible_host" => {
            let v = r.string(n, p, key);
            into.address = noted(r, &mut into.at, "address", n, p, v);
        }
        "ansible_user" => into.user = r.string(n, p, key),
        "ansible_port" => into.port = read_port(r, n, p, key),
        "ansible_ssh_private_key_file" | "ansible_private_key_file" => {
            let v = r.string(n, p, key).filter(|s| !s.is_empty());
            into.key = noted(r, &mut into.at, "key", n, p, v);
        }
        "aion_role" => {
            let v = read_role(r, n, p, key);
            into.role = noted(r, &mut into.at, "role", n, p, v);
        }
        "aion_gpu" => into.gpu = r.bool(n, p, key),
        "aion_kubernetes_version" => {
            let v = r.string(n, p, key);
            into.kubernetes_version = noted(r, &mut into.at, "kubernetesVersion", n, p, v);
        }
        "aion_pod_cidr" => {
            let v = r.string(n, p, key);
            into.pod_cidr = noted(r, &mut into.at, "podCidr", n, p, v);
        }
        "aion_extra_sans" => {
            let v = r.string_list(n, p, key);
            into.extra_sans = noted(r, &mut into.at, "extraSans", n, p, v);
        }
        "aion_registry_prefix" => into.registry_prefix = r.string(n, p, key),
        "aion_namespace" => {
            let v = r.string(n, p, key);
            into.namespace = noted(r, &mut into.at, "namespace", n, p, v);
        }
        "aion_services" => {
            let v = r.string(n, p, key);
            into.services = noted(r, &mut into.at, "services", n, p, v);
        }
        "aion_data_sweeper" => {
            let v = r.string(n, p, key);
            into.data_sweeper = noted(r, &mut into.at, "dataSweeper", n, p, v);
        }
        "aion_images_from" => {
            let v = r.string(n, p, key);
            into.images_from = noted(r, &mut into.at, "imagesFrom", n, p, v);
        }
        "aion_image_repository" => into.image_repository = r.string(n, p, key),
        "aion_cgroup_driver" => into.cgroup_driver = read_cgroup_driver(r, n, p, key),
        "aion_images" => into.images = read_images(r, n, p, key),
        "aion_flannel_iface" => into.flannel_iface = r.string(n, p, key),
        "ansible_ssh_pass" | "ansible_password" | "ansible_become_pass" => {
            r.diags.push(
                Diagnostic::warning(
                    "unsupported-var",
                    format!("`{key}` is ignored: aion-reconcile logs in with SSH keys only"),
                    r.span(n),
                    p,
                )
                .with_hint(
                    "set `ansible_ssh_private_key_file` (and remove the password from the file)",
                ),
            );
        }
        k if k.starts_with("aion_") && !(global && ANSIBLE_GLOBAL_VARS.contains(&k)) => {
            let mut all: Vec<&str> = ANSIBLE_HOST_VARS.to_vec();
            all.extend_from_slice(ANSIBLE_GLOBAL_VARS);
            let mut d = Diagnostic::warning(
                "unknown-key",
                format!("unknown AION variable `{k}` (ignored)"),
                r.span(n),
                p,
            );
            d = match suggest(k, &all) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("AION variables: {}", all.join(", "))),
            };
            r.diags.push(d);
        }
        _ => {}
    }
}

struct AnsibleWalk<'a> {
    r: Reader,
    /// Host name → (accumulated settings, first span, first pointer, master group seen).
    hosts: Vec<(String, Partial, Span, String, bool)>,
    globals: Vec<(&'a str, &'a Node, String)>,
}

impl<'a> AnsibleWalk<'a> {
    fn group(
        &mut self,
        name: &str,
        node: &'a Node,
        ptr: &str,
        inherited: &Partial,
        master: bool,
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        let master = master || MASTER_GROUPS.contains(&name);
        let what = format!("group `{name}`");
        let Some(f) = self
            .r
            .fields(node, ptr, &what, &["hosts", "children", "vars"])
        else {
            return;
        };
        let mut vars = inherited.clone();
        if let Some((vn, vp)) = f.get("vars")
            && let Some(entries) = self.r.map_entries(vn, &vp, "vars")
        {
            for (k, _, v) in entries {
                let p = join_pointer(&vp, &k);
                let global = name == "all";
                if global && ANSIBLE_GLOBAL_VARS.contains(&k.as_str()) {
                    let key: &'static str = ANSIBLE_GLOBAL_VARS
                        .iter()
                        .find(|g| **g == k)
                        .expect("contained");
                    self.globals.push((key, v, p.clone()));
                }
                ansible_var(&mut self.r, &k, v, &p, &mut vars, global);
            }
        }
        if let Some((hn, hp)) = f.get("hosts")
            && let Some(entries) = self.r.map_entries(hn, &hp, "hosts")
        {
            for (host, key, v) in entries {
                let p = join_pointer(&hp, &host);
                let mut own = vars.clone();
                if let Some(hv) = self.r.map_entries(v, &p, &format!("host `{host}`")) {
                    for (k, _, val) in hv {
                        let vp = join_pointer(&p, &k);
                        ansible_var(&mut self.r, &k, val, &vp, &mut own, false);
                    }
                }
                match self.hosts.iter_mut().find(|h| h.0 == host) {
                    Some(h) => {
                        h.1.over(&own);
                        h.4 |= master;
                    }
                    None => {
                        // An Ansible host's name is its key.
                        own.at.set("name", &p, self.r.span(key));
                        self.hosts
                            .push((host, own, self.r.span(key), p.clone(), master));
                    }
                }
            }
        }
        if let Some((cn, cp)) = f.get("children")
            && let Some(entries) = self.r.map_entries(cn, &cp, "children")
        {
            for (child, _, v) in entries {
                let p = join_pointer(&cp, &child);
                self.group(&child, v, &p, &vars, master, depth + 1);
            }
        }
    }
}

pub(super) fn from_ansible(root: &Node, file: &Path, dir: &Path) -> (Loaded<Inventory>, Located) {
    let mut w = AnsibleWalk {
        r: Reader::new(std::sync::Arc::new(file.to_path_buf())),
        hosts: Vec::new(),
        globals: Vec::new(),
    };
    let top = root.as_map().unwrap_or_default();
    // `all` first (its vars are inherited by every other top-level group).
    let all_vars = {
        let mut v = Partial::default();
        if let Some(all) = root.get("all") {
            w.group("all", all, "/all", &Partial::default(), false, 0);
            if let Some(vars) = all.get("vars")
                && let Some(pairs) = vars.as_map()
            {
                let mut scratch = Reader::new(std::sync::Arc::new(file.to_path_buf()));
                for pair in pairs {
                    if let Some(k) = pair.key.text() {
                        let p = join_pointer("/all/vars", k);
                        ansible_var(&mut scratch, k, &pair.value, &p, &mut v, true);
                    }
                }
            }
        }
        v
    };
    for pair in top {
        let Some(k) = pair.key.text() else { continue };
        if k == "all" {
            continue;
        }
        let p = join_pointer("", k);
        w.group(k, &pair.value, &p, &all_vars, false, 0);
    }
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
    for (k, n, p) in std::mem::take(&mut w.globals) {
        match k {
            "aion_name" => name = w.r.string(n, &p, k),
            "aion_mode" => {
                let v = read_mode(&mut w.r, n, &p, k);
                mode = noted(&w.r, &mut global_at, "mode", n, &p, v);
            }
            "aion_known_hosts" => {
                let v = w.r.string(n, &p, k);
                known_hosts = noted(&w.r, &mut global_at, "knownHosts", n, &p, v);
            }
            "aion_kubeconfig" => kubeconfig = w.r.string(n, &p, k),
            "aion_revision_history" => revision_history = read_revision_history(&mut w.r, n, &p, k),
            "aion_previous_images" => previous_images = read_previous_images(&mut w.r, n, &p, k),
            "aion_image_sources" => image_sources = read_image_sources(&mut w.r, n, &p, k),
            "aion_peers" => peers = read_peers(&mut w.r, n, &p, k),
            "aion_entry_tls" => entry_tls = read_entry_tls(&mut w.r, n, &p, k),
            "aion_entry_port" => {
                let v = read_entry_port(&mut w.r, n, &p, k);
                entry_port = noted(&w.r, &mut global_at, "entryPort", n, &p, v);
            }
            _ => {}
        }
    }
    let drafts: Vec<Draft> = std::mem::take(&mut w.hosts)
        .into_iter()
        .map(|(name, mut partial, span, pointer, master)| {
            if partial.role.is_none() {
                partial.role = Some(if master { Role::Master } else { Role::Worker });
            }
            Draft {
                pointer,
                name,
                partial,
                span,
            }
        })
        .collect();
    if drafts.is_empty() {
        w.r.diags.push(
            Diagnostic::error("no-hosts", "the Ansible inventory names no hosts", w.r.span(root), "")
                .with_hint("put hosts under `all: {children: {masters: {hosts: {...}}, workers: {hosts: {...}}}}`"),
        );
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
        w.r,
    )
}
