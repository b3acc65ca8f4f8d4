//! What a pod sees of AION: the paths upstream's containers use and the environment each
//! microservice gets, in upstream's order.

use aion_model::services::Microservice;

/// Upstream's `AION_HOME` inside containers.
pub const AION_HOME: &str = "/var/lib/aion";
/// Where the namespace's config directory (`services.yml`, written by host provisioning to
/// `$AION_HOME/<namespace>/config`) is mounted read-only in aion-kanban and microservice pods.
pub const CONFIG_MOUNT: &str = "/var/lib/aion/config";
/// `services.yml` inside those pods (`AION_SERVICES`).
pub const SERVICES_IN_POD: &str = "/var/lib/aion/config/services.yml";

/// Where `data-sweeper.yml` (written by host provisioning into the config directory) is in the
/// aion-kanban pod.
pub const SWEEPER_IN_POD: &str = "/var/lib/aion/config/data-sweeper.yml";

/// Upstream `getHostAionDataPath`: the namespace inserted before the last segment of
/// `$AION_HOME/Data`, trailing slash kept.
pub(super) fn data_host_path(ns: &str) -> String {
    format!("{AION_HOME}/{ns}/Data/")
}

/// Env vars in upstream's order, made deterministic: `SERVICE_NAME` first (a user value
/// replaces it in place), then `env` in file order, then `AION_HOME`, `DEVICE_NAME`, `DEBUG`,
/// `MS_NUMBER`, which override same-named user entries (as upstream's map overwrite did).
/// Then what the kanban client library needs ([`CLIENT_DEFAULTS`] order), each only when the
/// user's `env` does not set it (upstream files set their own `RABBITMQ_URL`/`QUEUE_*`):
/// `RABBITMQ_URL` (this inventory's broker), `QUEUE_ORIGIN=<base>-NNN.in`,
/// `QUEUE_TO=<base>-NNN.out`, `AION_SERVICES` (services.yml, mounted read-only),
/// `AION_DEVICE` (= `DEVICE_NAME`) and `AION_NAMESPACE` (= the pod's namespace `ns`: the client
/// sends its records to that namespace's runtime, `aion-kanban.records.<ns>`). `AION_SERVICES`
/// only when `services_mounted` (the namespace's config directory is at [`CONFIG_MOUNT`] in the
/// pod and `QUEUE_TO` is ours).
pub(super) fn env_list(
    ms: &Microservice,
    instance: i32,
    device_name: &str,
    debug: &str,
    rabbitmq_url: &str,
    services_mounted: bool,
    ns: &str,
) -> Vec<(String, String)> {
    const INJECTED: [&str; 4] = ["AION_HOME", "DEVICE_NAME", "DEBUG", "MS_NUMBER"];
    let mut env = vec![("SERVICE_NAME".to_owned(), ms.name.clone())];
    for (k, v) in &ms.env {
        if k == "SERVICE_NAME" {
            env[0].1 = v.clone();
        } else if !INJECTED.contains(&k.as_str()) {
            match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
    }
    let debug = if debug.is_empty() { "false" } else { debug };
    env.push(("AION_HOME".into(), AION_HOME.into()));
    env.push(("DEVICE_NAME".into(), device_name.into()));
    env.push(("DEBUG".into(), debug.into()));
    env.push(("MS_NUMBER".into(), instance.to_string()));
    let name = ms.instance_name(instance);
    for key in CLIENT_DEFAULTS {
        if ms.env.iter().any(|(k, _)| k == key) || (key == "AION_SERVICES" && !services_mounted) {
            continue;
        }
        let value = match key {
            "RABBITMQ_URL" => rabbitmq_url.to_owned(),
            "QUEUE_ORIGIN" => format!("{name}.in"),
            "QUEUE_TO" => format!("{name}.out"),
            "AION_SERVICES" => SERVICES_IN_POD.to_owned(),
            "AION_NAMESPACE" => ns.to_owned(),
            _ => device_name.to_owned(), // AION_DEVICE
        };
        env.push((key.to_owned(), value));
    }
    env
}

/// Env vars injected for the kanban client library when `env` does not set them, in this order.
pub const CLIENT_DEFAULTS: [&str; 6] = [
    "RABBITMQ_URL",
    "QUEUE_ORIGIN",
    "QUEUE_TO",
    "AION_SERVICES",
    "AION_DEVICE",
    "AION_NAMESPACE",
];
