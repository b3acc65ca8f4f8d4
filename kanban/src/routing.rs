//! Routing decisions (pure): which queues or devices a kanban emitted by one microservice goes
//! to, following upstream's broker (`cmd/service-broker/app/watcher.go`, doc §5.3).

use aion_model::ServicesFile;

use crate::message::Kanban;
use crate::topology::input_queue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// Publish to `queue` on this device's broker; instance `number` of `service` must run.
    Local {
        service: String,
        number: i32,
        queue: String,
    },
    /// Forward (kanban + files) to `device`'s broker for instance `number` of `service`.
    Remote {
        device: String,
        addr: String,
        service: String,
        number: i32,
    },
    /// A target that cannot be delivered (unknown service, instance beyond `scale`).
    Invalid {
        service: String,
        number: i32,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Route(Vec<Hop>),
    /// Upstream's terminate kanban from a non-`always` service: nothing is routed.
    Terminate,
    /// No entry for the connection key and no `default`: upstream warns and skips.
    NoRoute,
    /// The emitting service is not (or no longer) in the configuration.
    UnknownSource,
}

/// Upstream `config.GetNextNumber`: `"n"`/empty → same number, anything else → 1.
pub fn next_number(pattern: &str, process_number: i32) -> i32 {
    match pattern {
        "n" | "" => process_number,
        _ => 1,
    }
}

/// Decide where kanban `k`, emitted by microservice `from`, goes. `self_device` is this
/// device's name (`deviceName` or `--device`).
pub fn route(cfg: &ServicesFile, self_device: &str, from: &str, k: &Kanban) -> Decision {
    let Some(src) = cfg.microservice(from) else {
        return Decision::UnknownSource;
    };
    // Upstream: terminate stops a non-always service's watch; an always service falls
    // through and is routed like any kanban (via `default`, a quirk we keep for compatibility).
    if k.is_terminate() && !src.always {
        return Decision::Terminate;
    }
    let targets = src.next_services(&k.connection_key);
    if targets.is_empty() {
        return Decision::NoRoute;
    }
    let hops = targets
        .iter()
        .map(|t| {
            let number = next_number(&t.pattern, k.process_number);
            let dev = if k.next_device_name.is_empty() {
                &t.device
            } else {
                &k.next_device_name
            };
            if !dev.is_empty()
                && dev != self_device
                && let Some(d) = cfg.device(dev)
            {
                return Hop::Remote {
                    device: d.name.clone(),
                    addr: d.addr.clone(),
                    service: t.name.clone(),
                    number,
                };
            }
            match cfg.microservice(&t.name) {
                None => Hop::Invalid {
                    service: t.name.clone(),
                    number,
                    reason: format!(
                        "nextService target `{}` is not a microservice in services.yml",
                        t.name
                    ),
                },
                Some(ms) if number < 1 || number > ms.scale.max(1) => Hop::Invalid {
                    service: t.name.clone(),
                    number,
                    reason: format!(
                        "instance {number} of `{}` does not exist (scale {})",
                        t.name,
                        ms.scale.max(1)
                    ),
                },
                Some(ms) => Hop::Local {
                    service: ms.name.clone(),
                    number,
                    queue: input_queue(ms, number),
                },
            }
        })
        .collect();
    Decision::Route(hops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testutil::*;

    fn k(key: &str, n: i32) -> Kanban {
        Kanban {
            connection_key: key.into(),
            process_number: n,
            ..Default::default()
        }
    }

    fn sample() -> ServicesFile {
        let mut c = cfg(
            "self",
            vec![
                ms(
                    "a",
                    2,
                    &[
                        ("default", &[("b", "n", "")]),
                        ("delete", &[("c", "0", ""), ("b", "", "")]),
                        ("far", &[("c", "n", "other")]),
                        ("ghost", &[("nope", "n", "")]),
                    ],
                ),
                ms("b", 2, &[]),
                ms("c", 1, &[("status", &[("b", "x", "")])]),
            ],
        );
        c.devices = vec![device("other", "10.213.0.12"), device("self", "127.0.0.1")];
        c
    }

    fn local(s: &str, n: i32) -> Hop {
        let c = sample();
        Hop::Local {
            service: s.into(),
            number: n,
            queue: input_queue(c.microservice(s).unwrap(), n),
        }
    }

    #[test]
    fn exact_key_then_default_fallback() {
        let c = sample();
        assert_eq!(
            route(&c, "self", "a", &k("default", 2)),
            Decision::Route(vec![local("b", 2)])
        );
        assert_eq!(
            route(&c, "self", "a", &k("unknown", 1)),
            Decision::Route(vec![local("b", 1)])
        );
        assert_eq!(
            route(&c, "self", "a", &k("delete", 2)),
            Decision::Route(vec![local("c", 1), local("b", 2)])
        );
    }

    #[test]
    fn no_default_means_no_route() {
        assert_eq!(
            route(&sample(), "self", "c", &k("other", 1)),
            Decision::NoRoute
        );
        assert_eq!(
            route(&sample(), "self", "b", &k("default", 1)),
            Decision::NoRoute
        );
    }

    #[test]
    fn pattern_other_values_mean_first_instance() {
        assert_eq!(
            route(&sample(), "self", "c", &k("status", 1)),
            Decision::Route(vec![local("b", 1)])
        );
        assert_eq!(next_number("0", 7), 1);
        assert_eq!(next_number("n", 7), 7);
        assert_eq!(next_number("", 7), 7);
        assert_eq!(next_number("2", 7), 1);
    }

    #[test]
    fn remote_by_entry_device_or_kanban_next_device_name() {
        let c = sample();
        let remote = Hop::Remote {
            device: "other".into(),
            addr: "10.213.0.12".into(),
            service: "c".into(),
            number: 1,
        };
        assert_eq!(
            route(&c, "self", "a", &k("far", 1)),
            Decision::Route(vec![remote.clone()])
        );
        let mut kk = k("default", 1);
        kk.next_device_name = "other".into();
        let Decision::Route(h) = route(&c, "self", "a", &kk) else {
            panic!()
        };
        assert!(
            matches!(&h[0], Hop::Remote { device, service, .. } if device == "other" && service == "b")
        );
        // naming ourselves, or a device not in `devices`, stays local
        kk.next_device_name = "self".into();
        assert_eq!(
            route(&c, "self", "a", &kk),
            Decision::Route(vec![local("b", 1)])
        );
        kk.next_device_name = "unlisted".into();
        assert_eq!(
            route(&c, "self", "a", &kk),
            Decision::Route(vec![local("b", 1)])
        );
    }

    #[test]
    fn invalid_targets_and_sources() {
        let c = sample();
        assert!(matches!(
            &route(&c, "self", "a", &k("ghost", 1)),
            Decision::Route(h) if matches!(&h[0], Hop::Invalid { .. })
        ));
        assert!(matches!(
            &route(&c, "self", "a", &k("default", 3)),
            Decision::Route(h) if matches!(&h[0], Hop::Invalid { number: 3, .. })
        ));
        assert_eq!(
            route(&c, "self", "zzz", &k("default", 1)),
            Decision::UnknownSource
        );
    }

    #[test]
    fn terminate_kanban() {
        let mut c = sample();
        assert_eq!(
            route(&c, "self", "a", &k("service-broker", 1)),
            Decision::Terminate
        );
        c.microservices[0].always = true;
        assert_eq!(
            route(&c, "self", "a", &k("service-broker", 1)),
            Decision::Route(vec![local("b", 1)])
        );
    }

    #[test]
    fn local_hop_sets_next_device_name() {
        let body = k("default", 1).encode_for_hop("self");
        assert_eq!(Kanban::decode(&body).unwrap().next_device_name, "self");
    }
}
