//! Real nodes on the testbed (real kubelet, containerd + runc, Flannel, kube-proxy, CoreDNS):
//! fresh hosts → `apply --wait` → every core Deployment of every namespace runs on its node and
//! the node software on every node → kanbans with files flow sensor → processor (started on
//! demand by the runtime) → sink across three devices, and `aion-kanban log` in each namespace
//! shows every hop in order → each namespace's live page, in headless Chromium, lists its
//! instances running and a rate on the chain's edges (`testbed_nodes/live_page.rs`) → a pod on one worker reaches a pod on the other through a
//! Service name → the `aion-kanban` runtime reached the broker through its Service and declared
//! its topology, and its service account can do exactly what its Role allows → `plan
//! --detailed-exitcode` exits 0 after the runtime scaled the processor → `down` leaves no
//! pod containers on any host (`crictl ps`) but the nodes' own.
//!
//! Fails (never skips) under `AION_REQUIRE_TESTBED=1 AION_REQUIRE_K8S=1`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "testbed_nodes/live_page.rs"]
mod live_page;

use aion_integration_tests::component;
use aion_integration_tests::k8s::{self, TestCluster};
use aion_integration_tests::testbed::{self, ResetIfFailed, inventory_copy, rt};
use aion_reconcile::output::OutputFormat;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

/// Running pods of a namespace matching `selector`, as (pod name, node name).
async fn running_pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            )
        })
        .collect()
}

/// The namespace of the processor: its host's (the second worker).
/// The last lines of every container log on `host` (the kubelet's files under /var/log/pods):
/// what a failed kanban test prints, since pods are gone once it cleans up.
fn pod_logs(tb: &testbed::Testbed, host: &testbed::TestbedHost) -> String {
    let out = tb.run_as_root(
        host,
        "for f in /var/log/pods/*/*/*.log; do [ -f \"$f\" ] || continue; \
         echo \"== $f\"; tail -n 15 \"$f\" | cut -c1-400; done 2>&1",
    );
    format!("--- {}\n{out}", host.name)
}

fn processor_ns_of(workers: &[testbed::TestbedHost]) -> String {
    workers[1].name.clone()
}

#[test]
fn real_nodes_run_the_installation_and_down_removes_it() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::exclusive();
    let Some(cluster) = k8s::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let master = tb.master().clone();
    let workers: Vec<_> = tb.workers().cloned().collect();
    assert!(workers.len() >= 2, "the test needs two workers");
    // The processor's host gets its services file from here: step 10 edits it.
    let processor_file = format!("services-{}.yml", workers[1].name);
    let shared = tb.dir().join(&processor_file).display().to_string();
    let own = dir.path().join(&processor_file);
    std::fs::copy(&shared, &own).unwrap();
    // The master's services file too: step 10b gives the sink a broken image.
    let master_shared = tb.dir().join("services.yml").display().to_string();
    let master_own = dir.path().join("services.yml");
    std::fs::copy(&master_shared, &master_own).unwrap();
    let inv = inventory_copy(&tb, dir.path(), |t| {
        t.replace(&shared, &own.display().to_string()).replace(
            &format!("services: {master_shared}\n"),
            &format!("services: {}\n", master_own.display()),
        )
    });
    assert!(
        std::fs::read_to_string(&inv)
            .unwrap()
            .contains(&master_own.display().to_string()),
        "the inventory copy names the copied services.yml"
    );
    let _reset_if_failed = ResetIfFailed(&tb);
    tb.reset_all();

    // Objects an earlier, failed run left in the cluster (resetting hosts does not touch the
    // apiserver): the runtime-owned replicas of such leftovers would mask what this run does.
    // (The inventory's own kubeconfig is fetched from the master by apply: not there yet.)
    let leftovers = aion_reconcile::commands::down::Args {
        inventory: inv.clone(),
        kubeconfig: Some(cluster.kubeconfig().to_owned()),
        dry_run: false,
    };
    assert_eq!(aion_reconcile::commands::down::run(&leftovers).unwrap(), 0);
    let down = aion_reconcile::commands::down::Args {
        kubeconfig: None,
        ..leftovers
    };

    // 1. apply --wait: hosts, then the cluster, then real readiness.
    let t0 = Instant::now();
    let outcome =
        aion_reconcile::commands::apply::run_blocking(&testbed::apply_args(&inv, true)).unwrap();
    print!("{}", outcome.summary());
    assert!(outcome.ok(), "apply --wait failed:\n{}", outcome.summary());
    let ready = outcome.readiness.clone().expect("--wait reports readiness");
    assert!(
        ready.as_ref().is_ok_and(|s| s.starts_with("ready: ")),
        "{ready:?}"
    );
    eprintln!(
        "apply --wait on fresh hosts: {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    // Kubernetes' own images (kubeadm's, Flannel's) came through the image path: nothing is
    // preloaded on the testbed, and each carries the label apply's import gives.
    let loaded = aion_model::inventory::load(&inv).unwrap().value;
    for h in &loaded.hosts {
        let th = tb.hosts.iter().find(|t| t.name == h.name).unwrap();
        let list = tb.run_as_root(th, "ctr -n k8s.io images ls");
        for img in aion_reconcile::kubeadm::node_images(h) {
            let line = list
                .lines()
                .find(|l| l.split_whitespace().next() == Some(img.reference.as_str()));
            assert!(
                line.is_some_and(|l| l.contains(aion_reconcile::images::IMPORTED_LABEL)),
                "{}: {} ({}) not imported by apply:\n{list}",
                h.name,
                img.reference,
                img.by
            );
        }
    }
    // The cluster part's progress went through the same renderer and into the run's log,
    // object by object, not only as final counts.
    let log = std::fs::read_to_string(outcome.log.as_ref().expect("the run's log")).unwrap();
    assert!(
        log.contains("[cluster] Deployment/default/rabbitmq\ncreated\n"),
        "no cluster progress in {}",
        outcome.log.as_ref().unwrap().display()
    );

    rt().block_on(async {
        let client = cluster.client().await;

        // 2. Node software on every node, core workloads on theirs.
        // The node software is not among the rendered workloads `--wait` waits for: a worker
        // that joined last may still be starting its copy.
        for (ns, name) in [("kube-system", "kube-proxy"), ("kube-flannel", "kube-flannel-ds")] {
            let api = Api::<DaemonSet>::namespaced(client.clone(), ns);
            let want = tb.hosts.len() as i32;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let d = api.get(name).await.unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
                let st = d.status.unwrap_or_default();
                let got = (st.desired_number_scheduled, st.number_ready);
                if got == (want, want) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{ns}/{name} ready on every node: (desired, ready) = {got:?}, want {want}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let deployments = Api::<Deployment>::namespaced(client.clone(), "kube-system");
        let deadline = Instant::now() + Duration::from_secs(120);
        while deployments
            .get("coredns")
            .await
            .unwrap()
            .status
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            < 1
        {
            assert!(Instant::now() < deadline, "CoreDNS available");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // The broker and redis on the master; each namespace's runtime on its own node.
        let mut placement: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (ns, run) in [("default", "rabbitmq"), ("default", "redis-cluster")] {
            placement.insert(format!("{ns}/{run}"), running_pods(&client, ns, &format!("run={run}")).await);
        }
        for h in &tb.hosts {
            let ns = if h.name == master.name { "default".to_string() } else { h.name.clone() };
            placement.insert(
                format!("{ns}/aion-kanban"),
                running_pods(&client, &ns, "run=aion-kanban").await,
            );
        }
        eprintln!("placement: {placement:?}");
        for (what, pods) in &placement {
            assert_eq!(pods.len(), 1, "{what}: one Running pod, got {pods:?}");
            let want = match what.split('/').next().unwrap() {
                "default" => master.name.clone(),
                ns => ns.to_string(),
            };
            assert_eq!(pods[0].1, want, "{what} runs on {want}");
            // The core asks for CPU and memory: the kubelet classes it Burstable, not
            // BestEffort (first evicted, lowest CPU weight).
            let (ns, _) = what.split_once('/').unwrap();
            let pod = Api::<Pod>::namespaced(client.clone(), ns).get(&pods[0].0).await.unwrap();
            let qos = pod.status.and_then(|s| s.qos_class);
            assert_eq!(qos.as_deref(), Some("Burstable"), "QoS class of {what}");
        }

        // `status` shows the same: each core workload's pods Running on their nodes.
        let (_, manifests) = aion_reconcile::reconcile::load_and_render(&inv).unwrap();
        let rows = aion_reconcile::cluster::status(&client, &manifests, 4).await.unwrap();
        for (what, pods) in &placement {
            let (ns, name) = what.split_once('/').unwrap();
            let row = rows
                .iter()
                .find(|r| r.key.namespace.as_deref() == Some(ns) && r.key.name == name)
                .unwrap_or_else(|| panic!("status has no row for {what}"));
            let shown: Vec<(String, String)> =
                row.pods.iter().map(|p| (p.phase.clone(), p.node.clone())).collect();
            assert_eq!(shown, [("Running".to_string(), pods[0].1.clone())], "status of {what}");
        }

        // 3. Kanbans flow on the real pods: sensor (worker 1) → processor (worker 2, another
        //    device: the kanban and its file are forwarded) → sink (master, another device).
        //    The processor is `startup: no`: rendered idle, started by its namespace's runtime
        //    when the first kanban arrived (the runtime owns `replicas` since).
        let processor_ns = processor_ns_of(&workers);
        let processors = Api::<Deployment>::namespaced(client.clone(), &processor_ns);
        let deadline = Instant::now() + Duration::from_secs(180);
        let stored = loop {
            if let Some(v) =
                testbed::newest_stored_kanban(&tb, &master, "/var/lib/aion/default/Data/sink_1/stored")
            {
                break v;
            }
            if Instant::now() >= deadline {
                let logs: String = tb.hosts.iter().map(|h| pod_logs(&tb, h)).collect();
                panic!(
                    "no kanban with its file reached the sink on {} in 180 s; processor: {:?}\n\
                     the last lines of every container's log:\n{logs}",
                    master.name,
                    processors.get_opt("processor-001").await.ok().flatten().and_then(|d| d.status)
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        eprintln!("stored by the sink: {stored}");
        for f in stored["metadata"]["storedFiles"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            let check = tb.run_as_root(
                &master,
                &format!("test -s /var/lib/aion/default/Data/sink_1/stored/{f} && echo present"),
            );
            assert_eq!(check.trim(), "present", "the kanban's file {f} was stored with it");
        }
        // The pods logged in with the password `apply` generated into the Secret aion-broker;
        // it is in no file under the inventory's directory (rendered output, state, apply logs).
        let password = k8s::secret_key(&client, "default", "aion-broker", "password")
            .await
            .expect("the broker password");
        assert_eq!(password.len(), 32);
        testbed::assert_files_do_not_hold(dir.path(), &[&password]);
        let processor = processors.get("processor-001").await.unwrap();
        assert_eq!(
            processor.metadata.annotations.as_ref().and_then(|a| a.get("aion.latona.io/start")),
            Some(&"on-demand".to_string()),
            "processor-001 is rendered for on-demand start"
        );
        assert_eq!(processor.spec.replicas, Some(1));
        let replicas_owner: Vec<String> = processor
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
            })
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(
            replicas_owner.iter().any(|m| m == aion_kanban::lifecycle::FIELD_MANAGER),
            "the runtime started processor-001 on demand (owns spec.replicas); owners: \
             {replicas_owner:?}"
        );
        // The sink names service account `aion-sink` in services.yml: created, so admitted.
        let sinks = running_pods(&client, "default", "run=sink-001").await;
        assert_eq!(sinks.len(), 1, "sink-001 runs with its own service account: {sinks:?}");
        let sink_pod = Api::<Pod>::namespaced(client.clone(), "default")
            .get(&sinks[0].0)
            .await
            .unwrap();
        assert_eq!(
            sink_pod.spec.and_then(|s| s.service_account_name).as_deref(),
            Some("aion-sink")
        );

        // 3b. `aion-kanban log` shows each hop of the stored kanban with its time: the sensor's
        //     kanban on worker 1, forwarded into worker 2 and the processor's output there,
        //     forwarded into the master's namespace for the sink.
        let seq = stored["metadata"]["seq"].clone();
        assert!(seq.is_u64(), "the stored kanban carries its seq: {stored}");
        let hops = |ns: &str| -> Vec<serde_json::Value> {
            cluster
                .kanban_log(ns)
                .into_iter()
                .filter(|r| {
                    r["kanban"]
                        .as_str()
                        .and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok())
                        .is_some_and(|k| k["metadata"]["seq"] == seq)
                })
                .collect()
        };
        let find = |rows: &[serde_json::Value], what: &str, pred: &dyn Fn(&str, &str) -> bool| {
            rows.iter()
                .filter(|r| pred(r["source"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
                .map(|r| r["at"].as_str().unwrap().to_string())
                .min()
                .unwrap_or_else(|| panic!("no record of {what} for seq {seq}: {rows:#?}"))
        };
        let w1_rows = hops(&workers[0].name);
        let w2_rows = hops(&processor_ns);
        let master_rows = hops("default");
        let from = |host: &str| format!("device:{host}");
        let from_w1 = from(&workers[0].name);
        let from_w2 = from(&workers[1].name);
        let trail = [
            find(&w1_rows, "the sensor's kanban", &|s, _| s.starts_with("sensor")),
            find(&w2_rows, "the kanban forwarded from worker 1", &|s, o| {
                s == from_w1 && o == "forwarded-in"
            }),
            find(&w2_rows, "the processor's output", &|s, o| {
                s.starts_with("processor") && o == "routed"
            }),
            find(&master_rows, "the kanban forwarded from worker 2", &|s, o| {
                s == from_w2 && o == "forwarded-in"
            }),
        ];
        eprintln!("log trail of seq {seq}: {trail:?}");
        assert!(
            trail.windows(2).all(|w| w[0] <= w[1]),
            "the hops are logged in the order they happened: {trail:?}"
        );

        // 3c. Each namespace's live page in headless Chromium: every instance running, a rate
        //     above zero on the chain's edges, the API's document valid (own module).
        live_page::live_pages_show_the_chain(
            &format!("aion-tb-{}", testbed::index(&master)),
            &client,
            &[
                (workers[0].name.clone(), vec!["sensor-001".to_string()]),
                (processor_ns.clone(), vec!["processor-001".to_string()]),
                ("default".to_string(), vec!["sink-001".to_string()]),
            ],
        )
        .await;

        // 4. Pod to pod across workers through a Service name: DNS (CoreDNS), the ClusterIP
        //    (kube-proxy) and the pod network between the hosts (Flannel) are all real.
        let ns = cluster.fresh_namespace().await;
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sa.get_opt("default").await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "no default ServiceAccount in {ns}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = |name: &str, node: &str, command: &str, restart: &str| -> Pod {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "restartPolicy": restart,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": name, "image": "aion.local/redis:7.0.15",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", command],
                    }],
                },
            }))
            .unwrap()
        };
        pods.create(
            &PostParams::default(),
            &pod("server", &workers[0].name, "exec redis-server --protected-mode no", "Always"),
        )
        .await
        .unwrap();
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "server"},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 6379, "targetPort": 6379}]},
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let fqdn = format!("server.{ns}.svc.cluster.local");
        pods.create(
            &PostParams::default(),
            &pod(
                "client",
                &workers[1].name,
                &format!(
                    "for i in $(seq 60); do out=$(redis-cli -h {fqdn} -p 6379 ping 2>&1) && \
                     [ \"$out\" = PONG ] && echo \"reply: $out\" && exit 0; echo \"try $i: $out\"; sleep 1; done; exit 1"
                ),
                "Never",
            ),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        let phase = loop {
            let p = pods.get("client").await.unwrap();
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" || Instant::now() > deadline {
                break phase;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let log = cluster.kubectl(&["-n", &ns, "logs", "client"]).unwrap_or_else(|e| e);
        let server = pods.get("server").await.unwrap();
        let client_pod = pods.get("client").await.unwrap();
        let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        eprintln!("server {} on {}, client {} on {}", ip(&server), workers[0].name, ip(&client_pod), workers[1].name);
        assert_eq!(phase, "Succeeded", "client pod on {} could not reach {fqdn}:\n{log}", workers[1].name);
        assert!(log.contains("reply: PONG"), "{log}");
        // Different nodes, different Flannel subnets.
        let subnet = |ip: String| ip.rsplit_once('.').map(|(a, _)| a.to_owned()).unwrap_or_default();
        assert_ne!(subnet(ip(&server)), subnet(ip(&client_pod)), "pods on different node subnets");
        cluster.delete_namespace(&ns).await;
    });

    // 5. The runtime reached the broker through its Service and declared its topology in its
    //    namespace's virtual host (rabbitmqctl in the broker pod).
    let services = aion_model::services::load(&tb.dir().join("services.yml"))
        .unwrap()
        .value;
    let want: Vec<String> = aion_kanban::topology::plan_in(&services, Some("default"))
        .into_iter()
        .map(|q| q.name)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let queues = loop {
        let out = cluster
            .kubectl(&[
                "-n",
                "default",
                "exec",
                "deploy/rabbitmq",
                "--",
                "rabbitmqctl",
                "list_queues",
                "-q",
                "-p",
                "default",
                "name",
            ])
            .unwrap_or_else(|e| e);
        if want.iter().all(|q| out.lines().any(|l| l.trim() == q)) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    for q in &want {
        assert!(
            queues.lines().any(|l| l.trim() == q),
            "queue {q} declared by the runtime in vhost default:\n{queues}"
        );
    }

    // 6. The runtime's service account: what its Role allows, and nothing more.
    let can = |verb_res: &[&str], ns: &str| -> bool {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(verb_res);
        args.extend_from_slice(&[
            "-n",
            ns,
            "--as",
            "system:serviceaccount:default:aion-kanban",
        ]);
        cluster.kubectl(&args).is_ok_and(|o| o.trim() == "yes")
    };
    assert!(
        can(&["patch", "deployments/scale"], "default"),
        "runtime may scale its deployments"
    );
    assert!(
        can(&["get", "deployments"], "default"),
        "runtime may read its deployments"
    );
    assert!(
        !can(&["get", "secrets"], "default"),
        "runtime must not read secrets"
    );
    assert!(
        !can(&["patch", "deployments/scale"], &workers[0].name),
        "runtime must not scale another namespace's deployments"
    );
    let logs = cluster
        .kubectl(&["-n", "default", "logs", "deploy/aion-kanban"])
        .unwrap();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the runtime was refused by the apiserver:\n{logs}"
    );

    // 7. The plan converges with the runtime: after the on-demand start, nothing to do
    //    (before, `plan` wanted `replicas: 1 → 0` back and `apply` stopped the processor).
    let plan = aion_reconcile::commands::plan::Args {
        common: testbed::apply_args(&inv, true).common,
        detailed_exitcode: true,
    };
    assert_eq!(
        aion_reconcile::commands::plan::run(&plan).unwrap(),
        0,
        "plan --detailed-exitcode after the runtime started processor-001"
    );

    // 8. The broker pod deleted mid-stream: a new one starts on the same data; the sensor
    //    retries, the runtimes and clients reconnect, and every kanban arrives (duplicates
    //    allowed: at-least-once; the sink stores by seq).
    let stored_seqs = || -> Vec<u64> {
        let out = tb.run_as_root(
            &master,
            "ls /var/lib/aion/default/Data/sink_1/stored 2>/dev/null | sed -n 's/^\\([0-9]*\\)\\.json$/\\1/p'",
        );
        let mut v: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        v.sort_unstable();
        v
    };
    let gaps = |v: &[u64]| -> Vec<u64> {
        let have: std::collections::BTreeSet<u64> = v.iter().copied().collect();
        (1..=v.last().copied().unwrap_or(0))
            .filter(|s| !have.contains(s))
            .collect()
    };
    rt().block_on(async {
        let client = cluster.client().await;
        let pods = Api::<Pod>::namespaced(client.clone(), "default");
        let before = stored_seqs();
        let old = running_pods(&client, "default", "run=rabbitmq").await;
        assert_eq!(old.len(), 1, "{old:?}");
        pods.delete(&old[0].0, &Default::default()).await.unwrap();
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(240);
        loop {
            let now = running_pods(&client, "default", "run=rabbitmq").await;
            let ready = match now.iter().find(|(n, _)| *n != old[0].0) {
                Some((n, _)) => pods
                    .get(n)
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .and_then(|s| s.container_statuses)
                    .is_some_and(|c| c.iter().all(|c| c.ready)),
                None => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no new broker pod ready after 240 s"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let back = t0.elapsed();
        let at_return = stored_seqs().last().copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(240);
        let after = loop {
            let v = stored_seqs();
            if v.last().copied().unwrap_or(0) >= at_return + 10 && gaps(&v).is_empty() {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "after the broker pod came back: stored up to {:?}, missing {:?}",
                v.last(),
                gaps(&v)
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let logs = cluster
            .kubectl(&["-n", "default", "logs", "deploy/sink-001"])
            .unwrap_or_default();
        let stores: Vec<u64> = logs
            .lines()
            .filter_map(|l| l.split("seq=").nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        let distinct: std::collections::BTreeSet<_> = stores.iter().collect();
        eprintln!(
            "broker pod deleted with {} kanbans stored (up to {:?}); a new broker was ready after \
             {:.0} s; {} stored since, none missing (1..={}); sink log: {} stores of {} seqs \
             ({} duplicates)",
            before.len(),
            before.last(),
            back.as_secs_f64(),
            after.len() - before.len(),
            after.last().unwrap(),
            stores.len(),
            distinct.len(),
            stores.len() - distinct.len()
        );
    });

    // 9. An `always: yes` container killed on its host runs again within 30 s (the kubelet).
    rt().block_on(async {
        let client = cluster.client().await;
        let pods = Api::<Pod>::namespaced(client.clone(), "default");
        let sink = running_pods(&client, "default", "run=sink-001").await;
        assert_eq!(sink.len(), 1, "{sink:?}");
        let status = |p: Pod| {
            let c = p.status.and_then(|s| s.container_statuses).unwrap_or_default();
            c.first().map(|c| (c.restart_count, c.ready, c.container_id.clone().unwrap_or_default()))
        };
        let (restarts, _, id) = status(pods.get(&sink[0].0).await.unwrap()).unwrap();
        let id = id.rsplit("://").next().unwrap().to_owned();
        let out = tb.run_as_root(
            &master,
            &format!("crictl --runtime-endpoint unix:///run/containerd/containerd.sock stop --timeout 0 {id} && echo killed"),
        );
        assert!(out.contains("killed"), "{out}");
        let t0 = Instant::now();
        loop {
            let st = status(pods.get(&sink[0].0).await.unwrap()).unwrap();
            if st.0 > restarts && st.1 {
                eprintln!("sink container killed on {}: running again after {:.1} s", master.name, t0.elapsed().as_secs_f64());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the killed sink container is not running again after 30 s: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // 10. The processor becomes `always: no` (a Job that exits after one kanban) by editing its
    //     services.yml and applying: the Deployment is pruned, the Job created suspended; each
    //     kanban for it starts a run, a finished run is started again for the next kanban, and
    //     the plan still converges.
    let text = std::fs::read_to_string(&own).unwrap();
    let edited = text.replace(
        "  processor:\n    startup: no\n    always: yes\n",
        "  processor:\n    startup: no\n    always: no\n    env:\n      COUNT: \"1\"\n",
    );
    assert_ne!(edited, text, "processor entry in {}", own.display());
    std::fs::write(&own, edited).unwrap();
    let outcome =
        aion_reconcile::commands::apply::run_blocking(&testbed::apply_args(&inv, true)).unwrap();
    assert!(
        outcome.ok(),
        "apply of the Job processor:\n{}",
        outcome.summary()
    );
    let switched_at = stored_seqs().last().copied().unwrap_or(0);
    rt().block_on(async {
        let client = cluster.client().await;
        let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &processor_ns_of(&workers));
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut completed = std::collections::BTreeSet::new();
        loop {
            if let Some(j) = jobs.get_opt("processor-001").await.unwrap()
                && aion_kanban::lifecycle::job_finished(&j)
            {
                completed.insert(j.metadata.uid.unwrap_or_default());
            }
            let out = tb.run_as_root(
                &master,
                "cd /var/lib/aion/default/Data/sink_1/stored && jq -c '[.metadata.seq, .metadata.processorStartedAt]' *.json",
            );
            let runs: std::collections::BTreeSet<String> = out
                .lines()
                .filter_map(|l| serde_json::from_str::<(u64, String)>(l).ok())
                .filter(|(seq, _)| *seq > switched_at)
                .map(|(_, run)| run)
                .collect();
            if completed.len() >= 2 && runs.len() >= 2 {
                eprintln!("processor Job: {} runs completed, kanbans from {} runs stored", completed.len(), runs.len());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Job processor-001 did not run again: completed runs {completed:?}, \
                 kanbans stored by runs {runs:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    assert_eq!(
        aion_reconcile::commands::plan::run(&plan).unwrap(),
        0,
        "plan --detailed-exitcode after the runtime ran the Job again"
    );

    // 10b. An upgrade that cannot come up, under --atomic: the sink gets an image that cannot
    //      be pulled. The apply records revision 3, waits, names the sink and the pod's reason,
    //      rolls back to revision 2 (recorded as 4) and exits 1; the sink runs its old image
    //      again, `history` shows the failure and the rollback, and with the file restored
    //      `plan` finds nothing to do: the rollback restored exactly what revision 2 held.
    atomic_upgrade_is_rolled_back(&cluster, &inv, &master_own, &plan);

    // 11. down: no pod containers left on any host but the nodes' own (kube-system, Flannel).
    assert_eq!(aion_reconcile::commands::down::run(&down).unwrap(), 0);
    testbed::wait_for_no_pod_containers(&tb);
    tb.reset_all();
}

/// Step 10b of [`real_nodes_run_the_installation_and_down_removes_it`] (issue 16).
fn atomic_upgrade_is_rolled_back(
    cluster: &TestCluster,
    inv: &Path,
    master_services: &Path,
    plan: &aion_reconcile::commands::plan::Args,
) {
    let good = std::fs::read_to_string(master_services).unwrap();
    let broken = good.replace(
        "  sink:\n    startup: yes\n",
        "  sink:\n    startup: yes\n    tag: no-such-version\n",
    );
    assert_ne!(broken, good, "sink entry in {}", master_services.display());
    std::fs::write(master_services, &broken).unwrap();
    // Through the image path an unknown image is a plan error and nothing is applied (the
    // testbed_images tests show that); the upgrade that fails only once it runs is the one an
    // operator whose devices pull from a registry makes: the same inventory without
    // `imageSources`, so the kubelet is left to pull a tag that does not exist.
    let pulling = inv.with_file_name("inventory-pulling.yml");
    let text: String = std::fs::read_to_string(inv)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("imageSources:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("imageSources")),
        "one-line imageSources in {}",
        inv.display()
    );
    std::fs::write(&pulling, text).unwrap();
    let mut args = testbed::apply_args(&pulling, true);
    args.wait = false;
    args.atomic = true;
    args.timeout = 60;
    let t0 = Instant::now();
    let outcome = aion_reconcile::commands::apply::run_blocking(&args).unwrap();
    let summary = outcome.summary();
    eprintln!(
        "apply --atomic with a broken sink image: {:.0} s\n{summary}",
        t0.elapsed().as_secs_f64()
    );
    assert!(!outcome.ok(), "--atomic must fail:\n{summary}");
    let why = outcome.cluster.clone().unwrap_err().to_string();
    assert!(
        why.contains("revision 3 did not become ready")
            && why.contains("Deployment/default/sink-001")
            && (why.contains("ErrImagePull") || why.contains("ImagePullBackOff")),
        "{why}"
    );
    assert!(
        why.contains("rolled back to revision 2 (recorded as revision 4)")
            && why.contains("its workloads are ready again"),
        "{why}"
    );
    assert_eq!(outcome.revision, Some(4));

    rt().block_on(async {
        let client = cluster.client().await;
        let d = Api::<Deployment>::namespaced(client.clone(), "default")
            .get("sink-001")
            .await
            .unwrap();
        let image = d.spec.template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap();
        assert_eq!(
            image, "aion.local/sink:latest",
            "the sink's image after the rollback"
        );
        // The old pod serves; the broken one goes away with its ReplicaSet scaled down.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pods = Api::<Pod>::namespaced(client.clone(), "default")
                .list(&ListParams::default().labels("run=sink-001"))
                .await
                .unwrap();
            let images: Vec<(String, String)> = pods
                .items
                .iter()
                .map(|p| {
                    (
                        p.spec.as_ref().unwrap().containers[0]
                            .image
                            .clone()
                            .unwrap(),
                        p.status
                            .as_ref()
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            if images == [("aion.local/sink:latest".to_string(), "Running".to_string())] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sink pods after the rollback: {images:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // history: 3 failed with the reason, 4 the rollback to 2.
        let inventory = aion_reconcile::reconcile::load_inventory(inv).unwrap();
        let decoded = aion_reconcile::cluster::history::History::of(&client, &inventory)
            .decoded()
            .await
            .unwrap();
        let entries = aion_reconcile::commands::history::entries(&decoded);
        let text = aion_reconcile::commands::history::render_text(&inventory.name, &entries);
        eprintln!("history:\n{text}");
        let summary: Vec<(u32, &str, Option<String>)> = entries
            .iter()
            .map(|e| (e.revision, e.status, e.description.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, "applied", Some("apply".into())),
                (2, "applied", Some("apply".into())),
                (3, "failed", Some("apply".into())),
                (
                    4,
                    "applied",
                    Some("rollback to 2 after 3 failed (--atomic)".into())
                ),
            ],
            "{text}"
        );
        assert!(
            entries[2]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("sink-001")),
            "{text}"
        );
        assert!(
            text.contains("image aion.local/sink:latest → aion.local/sink:no-such-version"),
            "{text}"
        );
    });

    // The cluster holds exactly revision 2 again: with the good file, `diff` finds nothing.
    // The master's copy of services.yml still has the broken tag (host provisioning is not
    // rolled back); an apply converges it, changing no cluster object (no new revision).
    std::fs::write(master_services, &good).unwrap();
    let diff = aion_reconcile::commands::diff::Args {
        inventory: inv.to_owned(),
        kubeconfig: None,
        detailed_exitcode: true,
        output: OutputFormat::Text,
        revision: None,
        concurrency: 16,
    };
    assert_eq!(
        aion_reconcile::commands::diff::run(&diff).unwrap(),
        0,
        "diff --detailed-exitcode with the good services.yml after the rollback"
    );
    let outcome =
        aion_reconcile::commands::apply::run_blocking(&testbed::apply_args(inv, true)).unwrap();
    assert!(outcome.ok(), "{}", outcome.summary());
    assert_eq!(outcome.revision, None, "{}", outcome.summary());
    assert_eq!(
        aion_reconcile::commands::plan::run(plan).unwrap(),
        0,
        "plan --detailed-exitcode after converging the host file"
    );
}
