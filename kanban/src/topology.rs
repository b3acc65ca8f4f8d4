//! Queue names and the queue topology a `services.yml` implies (pure).
//!
//! Per microservice instance `<base>-NNN` (upstream's object name, `Microservice::instance_name`):
//! * `<base>-NNN.in`  — durable input queue the instance consumes (its `QUEUE_ORIGIN`);
//! * `<base>-NNN.out` — durable output queue the instance publishes result kanbans to (its
//!   `QUEUE_TO`); the router consumes it.
//!
//! Per microservice: `<base>.dlq` — durable dead-letter queue. Both `.in` and `.out` queues carry
//! `x-dead-letter-exchange: ""` + `x-dead-letter-routing-key: <base>.dlq`, so a client's
//! `fail()` (nack without requeue) lands there too.
//!
//! Per device: [`INBOUND_QUEUE`], where other devices' routers deliver forwarded kanbans, and
//! [`RECORDS_QUEUE`], where clients that route producer-side send a record of each kanban they
//! routed (for the replicator and on-demand start). In cluster mode every node's namespace runs
//! its own runtime on the master's one broker, so the records queue is scoped by namespace
//! ([`records_queue_name`]): `aion-kanban.records.<namespace>`.
//!
//! Upstream's RabbitMQ-era files name their queues in `env` instead (`QUEUE_ORIGIN`,
//! `QUEUE_TO`, `QUEUE_TO_*`), pre-declared by an operator script (`rabbitmqadmin declare queue
//! durable=true`): [`env_named`] lists those, to be declared the same way (durable, no
//! arguments) and tolerated when they already exist with other arguments.

use aion_model::{Microservice, ServicesFile};

/// Queue on every device's broker that receives kanbans forwarded by other devices.
pub const INBOUND_QUEUE: &str = "aion-kanban.inbound";
/// Dead-letter queue for undecodable forwarded messages.
pub const INBOUND_DLQ: &str = "aion-kanban.inbound.dlq";
/// Other installations' devices (`peers`): their exchange and broker users.
pub use aion_model::peer::{PEER_EXCHANGE, peer_device, peer_user};

/// Records of kanbans routed producer-side by the client library; the runtime consumes them.
/// The name used when no namespace is configured; see [`records_queue_name`].
pub const RECORDS_QUEUE: &str = "aion-kanban.records";
/// Bound on [`RECORDS_QUEUE`] (messages; each holds a batch of records) while no runtime consumes
/// it: the oldest are dropped beyond this.
pub const RECORDS_MAX_LENGTH: i64 = 100_000;

/// The records queue of the runtime of `namespace`: `aion-kanban.records.<namespace>`, or
/// [`RECORDS_QUEUE`] when no (or an empty) namespace is configured. Client and runtime must
/// resolve the same name (both read `AION_NAMESPACE`).
pub fn records_queue_name(namespace: Option<&str>) -> String {
    match namespace.map(str::trim).filter(|n| !n.is_empty()) {
        Some(ns) => format!("{RECORDS_QUEUE}.{ns}"),
        None => RECORDS_QUEUE.to_string(),
    }
}

pub fn input_queue(ms: &Microservice, number: i32) -> String {
    format!("{}.in", ms.instance_name(number))
}
pub fn output_queue(ms: &Microservice, number: i32) -> String {
    format!("{}.out", ms.instance_name(number))
}
pub fn dead_letter_queue(ms: &Microservice) -> String {
    format!("{}.dlq", ms.label_base())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRole {
    Input {
        service: String,
        number: i32,
    },
    Output {
        service: String,
        number: i32,
    },
    DeadLetter {
        service: String,
    },
    Inbound,
    Records,
    /// Named in a microservice's env (`var` = `QUEUE_ORIGIN`, `QUEUE_TO`, `QUEUE_TO_*`).
    EnvNamed {
        service: String,
        var: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub role: QueueRole,
    /// Where rejected messages go (`x-dead-letter-routing-key`), if anywhere.
    pub dead_letter_to: Option<String>,
    /// `x-max-length`, if bounded.
    pub max_length: Option<i64>,
}

/// Every queue the runtime without a namespace declares for this configuration, in a stable
/// order ([`plan_in`] with `None`).
pub fn plan(cfg: &ServicesFile) -> Vec<QueueSpec> {
    plan_in(cfg, None)
}

/// Every queue the runtime of `namespace` declares for this configuration, in a stable order
/// (the records queue named by [`records_queue_name`]).
pub fn plan_in(cfg: &ServicesFile, namespace: Option<&str>) -> Vec<QueueSpec> {
    let mut out = vec![
        QueueSpec {
            name: INBOUND_DLQ.into(),
            role: QueueRole::Inbound,
            dead_letter_to: None,
            max_length: None,
        },
        QueueSpec {
            name: INBOUND_QUEUE.into(),
            role: QueueRole::Inbound,
            dead_letter_to: Some(INBOUND_DLQ.into()),
            max_length: None,
        },
        records_queue(namespace),
    ];
    for ms in &cfg.microservices {
        let dlq = dead_letter_queue(ms);
        out.push(QueueSpec {
            name: dlq.clone(),
            role: QueueRole::DeadLetter {
                service: ms.name.clone(),
            },
            dead_letter_to: None,
            max_length: None,
        });
        for n in 1..=ms.scale.max(1) {
            out.push(input_queue_spec(ms, n));
            if !ms.without_kanban {
                out.push(QueueSpec {
                    name: output_queue(ms, n),
                    role: QueueRole::Output {
                        service: ms.name.clone(),
                        number: n,
                    },
                    dead_letter_to: Some(dlq.clone()),
                    max_length: None,
                });
            }
        }
    }
    out
}

/// The records queue of `namespace` (declared by the runtime and by every producer-side client).
pub fn records_queue(namespace: Option<&str>) -> QueueSpec {
    QueueSpec {
        name: records_queue_name(namespace),
        role: QueueRole::Records,
        dead_letter_to: None,
        max_length: Some(RECORDS_MAX_LENGTH),
    }
}

/// The spec of input queue `number` of `ms` (as [`plan`] declares it).
pub fn input_queue_spec(ms: &Microservice, number: i32) -> QueueSpec {
    QueueSpec {
        name: input_queue(ms, number),
        role: QueueRole::Input {
            service: ms.name.clone(),
            number,
        },
        dead_letter_to: Some(dead_letter_queue(ms)),
        max_length: None,
    }
}

/// Whether an env var of a microservice names a queue (upstream's RabbitMQ-era convention).
pub fn is_queue_var(key: &str) -> bool {
    key == "QUEUE_ORIGIN" || key == "QUEUE_TO" || key.starts_with("QUEUE_TO_")
}

/// A queue name from env that cannot be declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvQueueProblem {
    pub service: String,
    pub var: String,
    pub value: String,
    pub reason: &'static str,
}

impl std::fmt::Display for EnvQueueProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "microservice {} env {}: queue {:?} {}; not declared",
            self.service, self.var, self.value, self.reason
        )
    }
}

/// Queues named by the microservices' `QUEUE_ORIGIN` / `QUEUE_TO` / `QUEUE_TO_*` env values
/// (comma-separated lists allowed, as [`crate::client::ClientConfig`] reads `QUEUE_ORIGIN`),
/// in file order, each once, leaving out those [`plan`] declares already (with its own
/// arguments). Each is durable without arguments, like upstream's
/// `rabbitmqadmin declare queue durable=true`. Names RabbitMQ would refuse (longer than 255
/// bytes, `amq.` prefix) are returned as problems instead.
pub fn env_named(cfg: &ServicesFile) -> (Vec<QueueSpec>, Vec<EnvQueueProblem>) {
    let mut seen: std::collections::HashSet<String> =
        plan(cfg).into_iter().map(|q| q.name).collect();
    let (mut specs, mut problems) = (Vec::new(), Vec::new());
    for ms in &cfg.microservices {
        for (var, value) in ms.env.iter().filter(|(k, _)| is_queue_var(k)) {
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let reason = if name.len() > 255 {
                    Some("is longer than 255 bytes")
                } else if name.starts_with("amq.") {
                    Some("starts with the reserved prefix `amq.`")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    problems.push(EnvQueueProblem {
                        service: ms.name.clone(),
                        var: var.clone(),
                        value: name.to_string(),
                        reason,
                    });
                } else if seen.insert(name.to_string()) {
                    specs.push(QueueSpec {
                        name: name.to_string(),
                        role: QueueRole::EnvNamed {
                            service: ms.name.clone(),
                            var: var.clone(),
                        },
                        dead_letter_to: None,
                        max_length: None,
                    });
                }
            }
        }
    }
    (specs, problems)
}

/// Output queues the router consumes: (queue, service, instance number).
pub fn router_sources(cfg: &ServicesFile) -> Vec<(String, String, i32)> {
    plan(cfg)
        .into_iter()
        .filter_map(|q| match q.role {
            QueueRole::Output { service, number } => Some((q.name, service, number)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testutil {
    use aion_model::{Device, Microservice, NextService, ServicesFile, Span};

    /// connection key → [(name, pattern, device)]
    pub type Next<'a> = [(&'a str, &'a [(&'a str, &'a str, &'a str)])];

    pub fn ms(name: &str, scale: i32, next: &Next) -> Microservice {
        Microservice {
            name: name.into(),
            command: None,
            next_service: next
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.iter()
                            .map(|(n, p, d)| NextService {
                                name: n.to_string(),
                                pattern: p.to_string(),
                                device: d.to_string(),
                                span: Span::default(),
                            })
                            .collect(),
                    )
                })
                .collect(),
            scale,
            env: vec![],
            position: "Runtime".into(),
            always: false,
            multiple: false,
            startup: false,
            interval: 0,
            ports: vec![],
            directory_path: String::new(),
            service_account: "default".into(),
            network: "ClusterIP".into(),
            tag: "latest".into(),
            volume_mount_path_list: vec![],
            privileged: false,
            without_kanban: false,
            target_node: String::new(),
            runtime_class_name: String::new(),
            resources: None,
            span: Span::default(),
        }
    }

    pub fn device(name: &str, addr: &str) -> Device {
        Device {
            name: name.into(),
            addr: addr.into(),
            ssh_port: 22,
            username: "aion".into(),
            password: "aion".into(),
            aion_home: "/var/lib/aion".into(),
            span: Span::default(),
        }
    }

    pub fn cfg(device_name: &str, mss: Vec<Microservice>) -> ServicesFile {
        ServicesFile {
            microservices: mss,
            device_name: device_name.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn queues_per_instance_and_dlq_per_service() {
        let c = cfg("d", vec![ms("a", 2, &[]), ms("org/b:v1", 1, &[])]);
        let names: Vec<_> = plan(&c).into_iter().map(|q| q.name).collect();
        assert_eq!(
            names,
            vec![
                INBOUND_DLQ,
                INBOUND_QUEUE,
                RECORDS_QUEUE,
                "a.dlq",
                "a-001.in",
                "a-001.out",
                "a-002.in",
                "a-002.out",
                "b.dlq",
                "b-001.in",
                "b-001.out"
            ]
        );
        let q = plan(&c).into_iter().find(|q| q.name == "a-002.in").unwrap();
        assert_eq!(q.dead_letter_to.as_deref(), Some("a.dlq"));
        assert_eq!(router_sources(&c).len(), 3);
    }

    #[test]
    fn records_queue_is_scoped_by_namespace() {
        assert_eq!(records_queue_name(None), "aion-kanban.records");
        assert_eq!(records_queue_name(Some("")), "aion-kanban.records");
        assert_eq!(records_queue_name(Some(" ")), "aion-kanban.records");
        assert_eq!(
            records_queue_name(Some("aion-worker-1")),
            "aion-kanban.records.aion-worker-1"
        );
        let c = cfg("d", vec![ms("a", 1, &[])]);
        let records: Vec<_> = plan_in(&c, Some("ns-a"))
            .into_iter()
            .filter(|q| q.role == QueueRole::Records)
            .collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].name, "aion-kanban.records.ns-a");
        assert_eq!(records[0].max_length, Some(RECORDS_MAX_LENGTH));
        // Everything else is the same as without a namespace.
        let others = |ns| -> Vec<String> {
            plan_in(&c, ns)
                .into_iter()
                .filter(|q| q.role != QueueRole::Records)
                .map(|q| q.name)
                .collect()
        };
        assert_eq!(others(Some("ns-a")), others(None));
    }

    #[test]
    fn env_named_queues_durable_without_arguments_once_each() {
        let mut a = ms("a", 1, &[]);
        a.env = vec![
            ("RABBITMQ_URL".into(), "amqp://u:p@rabbitmq:5672/v".into()),
            ("QUEUE_ORIGIN".into(), "a-queue".into()),
            ("QUEUE_TO".into(), "b-queue".into()),
            ("QUEUE_TO_FOR_LOG".into(), "log-queue, b-queue".into()),
            ("QUEUE_TOO".into(), "not-a-queue-var".into()),
            ("QUEUE_FROM".into(), "not-either".into()),
        ];
        let mut b = ms("b", 1, &[]);
        b.env = vec![
            ("QUEUE_ORIGIN".into(), "b-queue".into()),
            // Our own naming: declared by `plan` with its arguments, not again here.
            ("QUEUE_TO".into(), "b-001.out".into()),
            ("QUEUE_TO_EMPTY".into(), "".into()),
        ];
        let (specs, problems) = env_named(&cfg("d", vec![a, b]));
        assert!(problems.is_empty(), "{problems:?}");
        let got: Vec<(&str, &QueueRole)> =
            specs.iter().map(|q| (q.name.as_str(), &q.role)).collect();
        let role = |s: &str, v: &str| QueueRole::EnvNamed {
            service: s.into(),
            var: v.into(),
        };
        assert_eq!(
            got,
            vec![
                ("a-queue", &role("a", "QUEUE_ORIGIN")),
                ("b-queue", &role("a", "QUEUE_TO")),
                ("log-queue", &role("a", "QUEUE_TO_FOR_LOG")),
            ]
        );
        assert!(
            specs
                .iter()
                .all(|q| q.dead_letter_to.is_none() && q.max_length.is_none())
        );
        // Not part of the strictly declared plan (a conflicting existing queue must not fail it).
        assert!(plan(&cfg("d", vec![])).iter().all(|q| q.name != "a-queue"));
    }

    #[test]
    fn env_named_queues_refused_by_rabbitmq_are_problems() {
        let mut a = ms("a", 1, &[]);
        let long = "q".repeat(256);
        a.env = vec![
            ("QUEUE_ORIGIN".into(), "amq.mine".into()),
            ("QUEUE_TO".into(), long.clone()),
        ];
        let (specs, problems) = env_named(&cfg("d", vec![a]));
        assert!(specs.is_empty());
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[0].to_string(),
            "microservice a env QUEUE_ORIGIN: queue \"amq.mine\" starts with the reserved prefix `amq.`; not declared"
        );
        assert_eq!(problems[1].value, long);
    }

    #[test]
    fn without_kanban_has_no_output_queue() {
        let mut m = ms("a", 1, &[]);
        m.without_kanban = true;
        let names: Vec<_> = plan(&cfg("d", vec![m]))
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".out")));
    }
}
