//! A step of `testbed_nodes`: the live page of each namespace's runtime in a real browser, while
//! the chain sensor → processor → sink runs on real pods. For each namespace: headless Chromium,
//! run in the master host's network namespace (`ip netns exec`: a browser on the cluster's
//! network, where Flannel routes the pod addresses; the page listens on the pod network only),
//! loads the page from the runtime pod's address, its script polls `/api/v1/status`, and the DOM must list every
//! instance of the namespace with state `running` and show a rate above zero on every edge of
//! the chain (connection key `default`); the document itself must match its schema. A
//! screenshot of each page is kept under the test's scratch directory (printed).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aion_integration_tests::chromium;
use serde_json::Value;

/// How long the page may take to show a rate on every edge of the chain.
const WITHIN: Duration = Duration::from_secs(30);

/// The address of a namespace's running `aion-kanban` pod.
async fn runtime_ip(client: &kube::Client, ns: &str) -> String {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&kube::api::ListParams::default().labels("run=aion-kanban"))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .find_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .unwrap_or_else(|| panic!("{ns}: no running aion-kanban pod with an address"))
}

/// `GET url` from inside network namespace `netns` (curl): the body, or why not.
fn get(netns: &str, url: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "20",
            url,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn schema_errors(doc: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(include_str!("../../../schemas/live-v1.schema.json")).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The step. `expect`: namespace → the instances its page must list as running.
pub async fn live_pages_show_the_chain(
    netns: &str,
    client: &kube::Client,
    expect: &[(String, Vec<String>)],
) {
    // What `aion-reconcile status` gets through the apiserver's pod proxy (printed, not
    // asserted: the test control plane runs in this machine's network namespace, which has no
    // route to the testbed's pod network; docs/kanban.md#the-live-page).
    let namespaces: Vec<String> = expect.iter().map(|(ns, _)| ns.clone()).collect();
    for l in aion_reconcile::live::fetch(client, &namespaces).await {
        eprintln!(
            "status via the apiserver proxy, {}: {}",
            l.namespace,
            l.error.as_deref().unwrap_or("document received")
        );
    }
    let chromium = chromium::require().expect("headless Chromium (the live page is tested in it)");
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("testbed_nodes-live-page");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // The browser in the master host's network namespace.
    let browser = scratch.join("chromium-in-netns");
    std::fs::write(
        &browser,
        format!(
            "#!/bin/sh\nexec ip netns exec {netns} {} \"$@\"\n",
            chromium.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for (ns, instances) in expect {
        let ip = runtime_ip(client, ns).await;
        let url = format!("http://{ip}:8089/");
        let doc: Value = serde_json::from_str(
            &get(netns, &format!("{url}api/v1/status")).unwrap_or_else(|e| panic!("{ns}: {e}")),
        )
        .unwrap();
        assert_eq!(schema_errors(&doc), Vec::<String>::new(), "{ns}: {doc:#}");
        // The chain's edges: key `default` (the processor also has an `anomaly` edge that the
        // example never uses).
        let chain: Vec<String> = doc["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["connectionKey"] == "default")
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        let profile = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        loop {
            let dom = chromium::dump_dom(&browser, profile.path(), &url, Duration::from_secs(4))
                .unwrap_or_else(|e| panic!("{ns}: {e}"));
            let states: Vec<(String, Option<String>)> = instances
                .iter()
                .map(|i| {
                    let s =
                        chromium::attr_of(&dom, &format!("data-instance=\"{i}\""), "data-state");
                    (i.clone(), s)
                })
                .collect();
            let rates: Vec<(String, Option<f64>)> = chain
                .iter()
                .map(|e| {
                    let r = chromium::attr_of(&dom, &format!("data-edge=\"{e}\""), "data-rate")
                        .and_then(|r| r.parse().ok());
                    (e.clone(), r)
                })
                .collect();
            let ok = states.iter().all(|(_, s)| s.as_deref() == Some("running"))
                && rates.iter().all(|(_, r)| r.is_some_and(|r| r > 0.0));
            if ok {
                eprintln!(
                    "live page of {ns}: {states:?}, edges {rates:?} after {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
            assert!(
                t0.elapsed() < WITHIN,
                "live page of {ns} after {} s: instances {states:?}, edges {rates:?}\nDOM:\n{dom}",
                WITHIN.as_secs()
            );
        }
        let png = scratch.join(format!("{ns}.png"));
        chromium::screenshot(&browser, profile.path(), &url, Duration::from_secs(4), &png)
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
        eprintln!("live page of {ns}: screenshot {}", png.display());
    }
}
