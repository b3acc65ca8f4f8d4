//! RabbitMQ for integration tests: two loopback brokers started by `scripts/rabbitmq.sh start`
//! (`eval "$(scripts/rabbitmq.sh env)"` exports `AION_RABBITMQ_URL` and `AION_RABBITMQ_URL_B`).
//!
//! [`require`] returns the two URLs when both brokers accept TCP connections. When they do not,
//! the test is skipped with a loud `SKIPPED:` line, except under CI (`AION_REQUIRE_RABBITMQ=1`),
//! where it fails.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

pub const URL_ENV: &str = "AION_RABBITMQ_URL";
pub const URL_B_ENV: &str = "AION_RABBITMQ_URL_B";
pub const REQUIRE_ENV: &str = "AION_REQUIRE_RABBITMQ";

const DEFAULT_A: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_B: &str = "amqp://guest:guest@127.0.0.1:5673/%2f";

/// Two brokers acting as two devices' brokers.
#[derive(Debug, Clone)]
pub struct Brokers {
    /// This device's broker.
    pub url: String,
    /// Another device's broker.
    pub url_b: String,
}

/// `host:port` of an `amqp://user:pass@host:port/vhost` URL.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hp = rest.split('/').next()?;
    Some(if hp.contains(':') {
        hp.to_string()
    } else {
        format!("{hp}:5672")
    })
}

fn reachable(url: &str) -> bool {
    let Some(addr) = host_port(url).and_then(|hp| hp.to_socket_addrs().ok()?.next()) else {
        return false;
    };
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// The two brokers, or `None` (after printing `SKIPPED: ...`).
///
/// # Panics
/// When a broker is unreachable and `AION_REQUIRE_RABBITMQ=1`.
pub fn require() -> Option<Brokers> {
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_A.into());
    let url_b = std::env::var(URL_B_ENV).unwrap_or_else(|_| DEFAULT_B.into());
    let missing: Vec<&str> = [(&url, URL_ENV), (&url_b, URL_B_ENV)]
        .into_iter()
        .filter(|(u, _)| !reachable(u))
        .map(|(_, n)| n)
        .collect();
    if missing.is_empty() {
        return Some(Brokers { url, url_b });
    }
    let msg = format!(
        "RabbitMQ not reachable ({}); start it with `scripts/rabbitmq.sh start && eval \"$(scripts/rabbitmq.sh env)\"`",
        missing.join(", ")
    );
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {msg}");
    }
    eprintln!("SKIPPED: {msg} (set {REQUIRE_ENV}=1 to make this a failure)");
    None
}

/// Restart broker instance `which` (`"a"` or `"b"`) with `scripts/rabbitmq.sh restart` (stop,
/// then start on the same state: durable queues and persistent messages survive). Returns the
/// script's output, or an error naming what failed.
pub fn restart(which: &str) -> Result<String, String> {
    script(&["restart", which])
}

/// Extra `rabbitmq.conf` settings on broker instance `which` while this lives: written next
/// to its config (`scripts/rabbitmq.sh` appends them at start) and the broker restarted; on drop
/// (also when the test fails) removed and the broker restarted again. Take the brokers
/// exclusively (`component::exclusive_async`) around it.
pub struct ExtraConf {
    which: String,
    path: std::path::PathBuf,
}

impl ExtraConf {
    pub fn apply(which: &str, settings: &str) -> Result<ExtraConf, String> {
        let state = std::env::var_os("AION_RABBITMQ_STATE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/aion/rabbitmq")
            });
        let path = state.join(which).join("extra.conf");
        std::fs::write(&path, settings).map_err(|e| format!("{}: {e}", path.display()))?;
        let guard = ExtraConf {
            which: which.to_string(),
            path,
        };
        restart(which)?;
        Ok(guard)
    }
}

impl Drop for ExtraConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Err(e) = restart(&self.which) {
            eprintln!(
                "broker {} not restarted without the extra settings: {e}",
                self.which
            );
        }
    }
}

/// `rabbitmqctl ARGS` on broker instance `which` (`"a"` or `"b"`), through
/// `scripts/rabbitmq.sh ctl` (which knows the node names and the Erlang cookie). Returns its
/// output, or an error naming what failed.
pub fn ctl(which: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["ctl", which];
    all.extend_from_slice(args);
    script(&all)
}

/// Run `scripts/rabbitmq.sh ARGS`: stdout + stderr on success, an error with both otherwise.
fn script(args: &[&str]) -> Result<String, String> {
    // At run time (cargo sets it when running tests): a binary built from another checkout
    // sharing the target directory must still use this checkout's script.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let script = std::path::Path::new(&manifest_dir).join("../scripts/rabbitmq.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} {} failed: {text}",
            script.display(),
            args.join(" ")
        ))
    }
}

/// A name unique to this test run (queue names are global on a broker).
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::rng().random();
    format!("{prefix}{n:08x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_host_port() {
        assert_eq!(
            super::host_port("amqp://u:p@127.0.0.1:5673/%2f").unwrap(),
            "127.0.0.1:5673"
        );
        assert_eq!(
            super::host_port("amqp://localhost").unwrap(),
            "localhost:5672"
        );
    }
}

/// Small AMQP helpers for tests (lapin).
pub mod amqp {
    use std::time::{Duration, Instant};

    use lapin::options::{
        BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

    pub async fn connect(url: &str) -> (Connection, Channel) {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirm.select");
        (conn, ch)
    }

    /// Publish `body` to `queue` the way upstream's clients do; waits for the confirm.
    pub async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .unwrap_or_else(|e| panic!("publish to {queue}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("confirm from {queue}: {e}"));
        assert!(c.is_ack(), "broker did not ack publish to {queue}");
    }

    /// Take (and ack) up to `n` messages from `queue`, waiting at most `timeout` for them.
    pub async fn take(
        ch: &Channel,
        queue: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Vec<u8>, BasicProperties)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match ch.basic_get(queue.into(), BasicGetOptions::default()).await {
                Ok(Some(m)) => {
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    out.push((m.delivery.data.clone(), m.delivery.properties.clone()));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("basic.get {queue}: {e}"),
            }
        }
        out
    }

    /// Every queue in `queues` exists and holds no message.
    pub async fn assert_empty(conn: &Connection, queues: &[String]) {
        for q in queues {
            assert_eq!(queue_len(conn, q).await, Some(0), "{q} should be empty");
        }
    }

    /// Message count of `queue`, or `None` if it does not exist (passive declare on a
    /// throw-away channel: a failed one closes its channel).
    pub async fn queue_len(conn: &Connection, queue: &str) -> Option<u32> {
        let ch = conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "probe".into()).await;
        Some(q.message_count())
    }

    /// Wait until `queue` exists.
    pub async fn wait_declared(conn: &Connection, queue: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if queue_len(conn, queue).await.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub async fn delete(ch: &Channel, queues: &[String]) {
        for q in queues {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// Running the aion-kanban router in-process for tests, and small helpers around it.
pub mod kanban {
    use std::path::Path;

    use aion_kanban::replicator::{Record, Replicator, WriterThread};
    use aion_kanban::router::{self, RouterOptions};
    use aion_model::ServicesFile;
    use serde_json::Value;
    use tokio::sync::oneshot;

    /// A services.yml from text (panics with the loader's message on bad test input).
    pub fn services(yaml: &str) -> ServicesFile {
        aion_model::services::load_str(yaml, Path::new("test-services.yml"))
            .unwrap_or_else(|e| panic!("test services.yml: {e}"))
            .value
    }

    pub fn json_of(body: &[u8]) -> Value {
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
    }

    /// The `metadata.id` of each message, sorted (test kanbans carry an id each).
    pub fn ids(msgs: &[(Vec<u8>, lapin::BasicProperties)]) -> Vec<i64> {
        let mut v: Vec<i64> = msgs
            .iter()
            .map(|(b, _)| json_of(b)["metadata"]["id"].as_i64().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Kanban `id` among `msgs` as the routing rules deliver it to a local next hop: unknown
    /// fields kept, `nextDeviceName` set to `device`, `processNumber` as sent, JSON and persistent
    /// (the same expectations for the router and for the client library's routing).
    pub fn assert_delivered_as_routed(
        msgs: &[(Vec<u8>, lapin::BasicProperties)],
        id: i64,
        device: &str,
        process_number: i64,
    ) -> Value {
        let (v, props) = msgs
            .iter()
            .map(|(b, p)| (json_of(b), p))
            .find(|(v, _)| v["metadata"]["id"] == id)
            .unwrap_or_else(|| panic!("kanban {id} not among {:?}", ids(msgs)));
        assert_eq!(v["nextDeviceName"], device, "kanban {id}: {v}");
        assert_eq!(v["processNumber"], process_number, "kanban {id}: {v}");
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json"),
            "kanban {id}"
        );
        assert_eq!(*props.delivery_mode(), Some(2), "kanban {id}: persistent");
        v
    }

    /// The replicator's rows of sources starting with `source`, by their kanban's `metadata.id`
    /// (test kanbans carry an id each; a row without one panics).
    pub fn rows_by_id(db: &Path, source: &str) -> std::collections::HashMap<i64, Record> {
        let rows = aion_kanban::replicator::query(
            db,
            &aion_kanban::replicator::Query {
                source: Some(source.to_string()),
                limit: 1000,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("replicator {}: {e}", db.display()));
        rows.into_iter()
            .map(|(_, r)| {
                let id = json_of(r.kanban.as_bytes())["metadata"]["id"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("row without metadata.id: {r:?}"));
                (id, r)
            })
            .collect()
    }

    /// The queues of a configuration that belong to it alone (not the per-device ones).
    pub fn all_queues(cfg: &ServicesFile) -> Vec<String> {
        aion_kanban::topology::plan(cfg)
            .into_iter()
            .map(|q| q.name)
            .filter(|n| !n.starts_with("aion-kanban."))
            .collect()
    }

    pub struct Router {
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
        stop: oneshot::Sender<()>,
        writer: Option<WriterThread>,
        replicator: Option<Replicator>,
    }

    impl Router {
        /// Stop the router and wait until the replicator wrote everything.
        pub async fn stop(self) {
            let _ = self.stop.send(());
            self.task
                .await
                .expect("router task")
                .expect("router result");
            if let Some(r) = self.replicator {
                r.flush();
            }
            if let Some(w) = self.writer {
                w.join();
            }
        }
    }

    /// Start the router (prefetch 16), with a replicator writing to `db` if given.
    pub fn start_router(mut opts: RouterOptions, db: Option<&Path>) -> Router {
        let (stop, stopped) = oneshot::channel::<()>();
        let mut writer = None;
        let mut rep = None;
        if let Some(db) = db {
            let (r, w) = Replicator::open(db, 10_000).expect("replicator");
            opts.replicator = Some(r.clone());
            rep = Some(r);
            writer = Some(w);
        }
        opts.prefetch = 16;
        let task = tokio::spawn(router::run(opts, async move {
            let _ = stopped.await;
        }));
        Router {
            task,
            stop,
            writer,
            replicator: rep,
        }
    }
}

/// A TCP proxy to `upstream` on a free loopback port: for each connection accepted it connects
/// to `upstream` and hands both sockets (client, server) to `carry`, on a task of their own;
/// when `upstream` refuses, the client's connection is dropped. Returns the proxy's address.
async fn spawn_proxy<F, Fut>(upstream: String, carry: F) -> String
where
    F: Fn(tokio::net::TcpStream, tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            tokio::spawn(carry(client, server));
        }
    });
    addr
}

/// A TCP proxy to `upstream` that cuts every connection once, after `cut_after` bytes went
/// upstream in total (the link to the other installation drops mid-transfer), and carries
/// everything after that. Returns its address and a flag that says the cut happened.
pub async fn link_cutting_proxy(
    upstream: String,
    cut_after: u64,
) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cut = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let kill = Arc::new(tokio::sync::Notify::new());
    let flag = cut.clone();
    let addr = spawn_proxy(upstream, move |client, server| {
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let (cut, sent, kill) = (cut.clone(), sent.clone(), kill.clone());
        let killed = kill.clone();
        async move {
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                    if total > cut_after && !cut.swap(true, Ordering::SeqCst) {
                        kill.notify_waiters();
                        return;
                    }
                }
            };
            let down = tokio::io::copy(&mut sr, &mut cw);
            tokio::select! {
                _ = up => {}
                _ = down => {}
                _ = killed.notified() => {}
            }
            // Dropping both halves of both sockets cuts the connection.
        }
    })
    .await;
    (addr, flag)
}

/// A TCP proxy to `upstream` whose link stalls while the returned flag is set: nothing the
/// client sends reaches the server (the connection stays open, as on a link that stopped
/// carrying packets), and everything held back goes on when it is cleared. Returns its address.
pub async fn stalling_proxy(upstream: String) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let addr = spawn_proxy(upstream, move |client, server| {
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let stalled = stalled.clone();
        async move {
            let up = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    while stalled.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            };
            let down = tokio::io::copy(&mut sr, &mut cw);
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        }
    })
    .await;
    (addr, flag)
}

/// A TCP proxy to a broker whose open connections can be frozen: after [`FreezingProxy::freeze`]
/// every connection open at that moment carries nothing more, either way, and is never closed
/// (a link that stopped carrying packets without a reset: a NAT or firewall that forgot the
/// flow, a cable pulled between two switches), while connections made later are carried
/// normally. Neither end learns anything from the network: only a timeout can tell it.
pub struct FreezingProxy {
    /// `host:port` to connect to instead of the broker.
    pub addr: String,
    /// Bumped by each freeze: a connection accepted in an earlier epoch is frozen.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl FreezingProxy {
    /// A proxy to the broker of `broker_url` (`amqp://user:pass@host:port/vhost`).
    pub async fn start(broker_url: &str) -> FreezingProxy {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let epoch = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (epochs, count) = (epoch.clone(), accepted.clone());
        let upstream = Self::authority(broker_url).to_string();
        let addr = spawn_proxy(upstream, move |client, server| {
            count.fetch_add(1, Ordering::SeqCst);
            let born = epochs.load(Ordering::SeqCst);
            let frozen = {
                let epochs = epochs.clone();
                move || epochs.load(Ordering::SeqCst) > born
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            async move {
                tokio::join!(
                    Self::carry(cr, sw, frozen.clone()),
                    Self::carry(sr, cw, frozen)
                );
            }
        })
        .await;
        FreezingProxy {
            addr,
            epoch,
            accepted,
        }
    }

    /// Freeze every connection open now.
    pub fn freeze(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many connections the proxy has carried so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `url` (`amqp://user:pass@host:port/vhost`) through this proxy.
    pub fn url(&self, url: &str) -> String {
        url.replacen(Self::authority(url), &self.addr, 1)
    }

    /// `host:port` of `amqp://user:pass@host:port/vhost`.
    fn authority(url: &str) -> &str {
        let after = url.rsplit_once('@').expect("credentials in the URL").1;
        after.split('/').next().unwrap_or(after)
    }

    /// One direction of a connection. Once frozen it neither reads, writes nor closes, and
    /// keeps both sockets open until the test's runtime ends.
    async fn carry(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: impl Fn() -> bool,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = from.read(&mut buf).await;
            if frozen() {
                let _held = (from, to);
                std::future::pending::<()>().await;
                return;
            }
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// Certificates made with `openssl` for a TLS entry: a CA, a server certificate it signed
/// (`server.pem`, `server.key` in `dir`; for 127.0.0.1 or the address given to
/// [`test_pki_for`]), and another CA that signed nothing here.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub other_ca_pem: String,
}

/// Make a [`TestPki`] for 127.0.0.1 (runs `openssl`; panics naming the step that failed).
pub fn test_pki() -> TestPki {
    test_pki_for("127.0.0.1")
}

/// Make a [`TestPki`] whose server certificate names the IP address `ip`.
pub fn test_pki_for(ip: &str) -> TestPki {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for ca in ["ca", "other-ca"] {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=aion test {ca}"),
        ]);
    }
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &format!("/CN={ip}"),
    ]);
    std::fs::write(
        dir.path().join("san.ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    TestPki {
        ca_pem: read("ca.pem"),
        other_ca_pem: read("other-ca.pem"),
        dir,
    }
}

/// A TLS entry in front of `upstream` (`host:port`, plain AMQP): terminates TLS with the
/// server certificate of `pki` and carries the bytes through, as RabbitMQ's TLS listener would.
/// Returns its address.
pub async fn tls_entry(upstream: String, pki: &TestPki) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.dir.path().join("server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.dir.path().join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake: nothing more.
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    addr
}
