//! The kubeadm stand-in against the real control plane: `init` on the testbed master attaches
//! to it, `token create --print-join-command` makes a real bootstrap token, `join` on a worker
//! does real discovery and the kubelet's TLS bootstrap (CSR signed by the controller-manager),
//! and the worker's Node appears in the apiserver with its own, non-admin credentials.
//!
//! The node images are not what this test is about: init is told to ignore the ImagePull
//! preflight check (a registry-less device gets them from `apply`'s image phase, which
//! `testbed_nodes` covers), after checking that without them init stops there.
//!
//! Both hosts run the flow in throwaway layers ([`Testbed::scratch`]) with fresh hostnames, so
//! the hosts other tests provision are left as they were. The test deletes the Nodes and the
//! bootstrap tokens it made.

use aion_integration_tests::component;
use aion_integration_tests::{k8s, testbed};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams};

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!("{:x}", n % 0xff_ffff)
}

const INSTALL: &str = r#"
# A pod network (a bridge, as a CNI add-on would install) before containerd starts, so the real
# kubelet reports Ready.
rm -rf /etc/cni/net.d
mkdir -p /etc/cni/net.d
cat > /etc/cni/net.d/10-test.conflist <<'CNI'
{"cniVersion": "0.4.0", "name": "test", "plugins": [{"type": "bridge", "bridge": "cnitest0",
  "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.99.0.0/24"}}, {"type": "loopback"}]}
CNI
echo 'deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.37/deb/ /' > /etc/apt/sources.list.d/kubernetes.list
apt-get update >/dev/null && apt-get install -y docker.io kubelet kubeadm kubectl >/dev/null || echo install-failed
# A fresh node in this scratch layer, whatever provisioning did to the host before.
rm -rf /etc/kubernetes /var/lib/kubelet /var/lib/aion-standins/kubeadm
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kubeadm_init_token_and_join_register_real_nodes() {
    let Some(tb) = testbed::require() else { return };
    let _hosts = component::exclusive_async().await;
    let Some(cluster) = k8s::require() else {
        return;
    };
    let client = cluster.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");

    let sfx = suffix();
    let master_name = format!("tbtest-m-{sfx}");
    let worker_name = format!("tbtest-w-{sfx}");
    let master = tb.master().clone();
    let worker = tb.workers().last().expect("a worker").clone();

    // --- master: init, idempotence, token ---------------------------------------------------
    let out = tb.scratch(
        &master,
        &format!(
            r#"hostname {master_name}
{INSTALL}
kubeadm init --pod-network-cidr 10.244.0.0/16 > /tmp/init0.out 2>&1
echo "offline-rc=$?"
grep -q '\[ERROR ImagePull\]: failed to pull image registry.k8s.io/kube-apiserver:' /tmp/init0.out && echo offline-names-image
kubeadm init --ignore-preflight-errors=ImagePull --pod-network-cidr 10.244.0.0/16 --apiserver-cert-extra-sans 10.213.0.10 > /tmp/init.out 2>&1
echo "init-rc=$?"
echo "server=$(sed -n 's/^ *server: *//p' /etc/kubernetes/admin.conf)"
echo "init-token=$(sed -n 's/.*--token \([^ ]*\).*/\1/p' /tmp/init.out | head -1)"
kubeadm init --ignore-preflight-errors=imagepull --pod-network-cidr 10.244.0.0/16 > /tmp/init2.out 2>&1
echo "reinit-rc=$?"
grep -q 'FileAvailable--etc-kubernetes-admin.conf' /tmp/init2.out && echo reinit-names-admin-conf
echo "join=$(kubeadm token create --print-join-command --ttl 15m)"
test -f /var/lib/kubelet/config.yaml && echo kubelet-config-written
systemctl stop kubelet containerd
tail -3 /tmp/init.out >&2
"#
        ),
    );
    let m = String::from_utf8_lossy(&out.stdout).into_owned();
    let m_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let join = field(&m, "join").unwrap_or_default().to_owned();
    let init_token = field(&m, "init-token").unwrap_or_default().to_owned();
    let cleanup = async |tokens: &[&str]| {
        for n in [&master_name, &worker_name] {
            let _ = nodes.delete(n, &DeleteParams::default()).await;
        }
        for t in tokens {
            if let Some((id, _)) = t.split_once('.') {
                let _ = secrets
                    .delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                    .await;
            }
        }
    };
    let join_token = join
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    if field(&m, "init-rc") != Some("0") || !join.starts_with("kubeadm join 10.213.0.1:") {
        cleanup(&[&init_token, &join_token]).await;
        panic!(
            "kubeadm init on {} failed:\n{m}\nstderr:\n{m_err}",
            master.name
        );
    }
    assert!(
        field(&m, "server").is_some_and(|s| s.starts_with("https://10.213.0.1:")),
        "admin.conf must point at the control plane on the bridge: {m}"
    );
    assert_eq!(
        field(&m, "reinit-rc"),
        Some("1"),
        "a second init must fail: {m}"
    );
    assert!(m.contains("reinit-names-admin-conf"), "{m}");
    // Offline, as a device without a registry: containerd has none of kubeadm's images, so
    // init stops at preflight naming them (apply imports them first; testbed_nodes shows it).
    assert_eq!(
        (field(&m, "offline-rc"), m.contains("offline-names-image")),
        (Some("1"), true),
        "init without the node images must fail at ImagePull: {m}"
    );
    assert!(m.contains("kubelet-config-written"), "{m}");
    assert!(
        join.contains("--discovery-token-ca-cert-hash sha256:"),
        "{join}"
    );

    // The master's Node: registered by its kubelet, marked control-plane by init.
    let mn = nodes.get(&master_name).await;
    // --- worker: bad token, join, node credentials ------------------------------------------
    let bad = join.replace(&join_token, "abcdef.0123456789abcdef");
    let out = tb.scratch(
        &worker,
        &format!(
            r#"hostname {worker_name}
{INSTALL}
{bad} > /tmp/bad.out 2>&1
echo "bad-rc=$?"
echo "bad-msg=$(grep 'error execution phase' /tmp/bad.out)"
{join} > /tmp/join.out 2>&1
echo "join-rc=$?"
echo "subject=$(openssl x509 -noout -subject -nameopt compat -in /var/lib/kubelet/pki/kubelet-client-current.pem)"
test -e /etc/kubernetes/admin.conf && echo admin-conf-present
test -e /usr/local/lib/aion-testbed/control-plane/admin.conf && echo admin-creds-present
kubectl --kubeconfig /etc/kubernetes/kubelet.conf get secrets -A > /dev/null 2>&1; echo "node-lists-secrets-rc=$?"
# A real kubelet: TLS bootstrap, runtime and network checks, first status (can take a while here).
for i in $(seq 1 180); do
  s=$(kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node {worker_name} -o jsonpath='{{.status.conditions[?(@.type=="Ready")].status}}' 2>/dev/null)
  [ "$s" = True ] && break; sleep 0.5
done
echo "self-ready=$s"
kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node {worker_name} -o jsonpath='{{.status.conditions[?(@.type=="Ready")].message}}' >&2 2>/dev/null
systemctl stop kubelet containerd
cat /tmp/join.out >&2
"#
        ),
    );
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let w_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let wn = nodes.get(&worker_name).await;
    cleanup(&[&init_token, &join_token]).await;

    assert_eq!(
        field(&w, "bad-rc"),
        Some("1"),
        "a bad token must fail:\n{w}\n{w_err}"
    );
    assert!(
        field(&w, "bad-msg").is_some_and(|s| s.contains("could not find a JWS signature")),
        "{w}"
    );
    assert_eq!(
        field(&w, "join-rc"),
        Some("0"),
        "join failed:\n{w}\nstderr:\n{w_err}"
    );
    let subject = field(&w, "subject").unwrap_or_default();
    assert!(
        subject.contains(&format!("CN=system:node:{worker_name}"))
            && subject.contains("O=system:nodes"),
        "the worker's client certificate must be a node identity: {subject}"
    );
    assert!(
        !w.contains("admin-conf-present") && !w.contains("admin-creds-present"),
        "{w}"
    );
    assert_ne!(
        field(&w, "node-lists-secrets-rc"),
        Some("0"),
        "node credentials must not list secrets"
    );
    assert_eq!(field(&w, "self-ready"), Some("True"), "{w}\n{w_err}");

    let mn = mn.unwrap_or_else(|e| panic!("Node {master_name} not found: {e}"));
    let labels = mn.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(master_name.as_str())
    );
    assert!(
        labels.contains_key("node-role.kubernetes.io/control-plane"),
        "{labels:?}"
    );
    let taints = mn.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node-role.kubernetes.io/control-plane" && t.effect == "NoSchedule"),
        "{taints:?}"
    );

    let wn = wn.unwrap_or_else(|e| panic!("Node {worker_name} not found: {e}"));
    let labels = wn.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(worker_name.as_str())
    );
    assert!(!labels.contains_key("node-role.kubernetes.io/control-plane"));
    let status = wn.status.unwrap_or_default();
    let ready = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("True"));
    let addrs = status.addresses.unwrap_or_default();
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == worker.address),
        "{addrs:?}"
    );
}
