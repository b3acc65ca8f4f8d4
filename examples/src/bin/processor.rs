//! `processor`: an AION microservice that receives the sensor's kanbans, adds
//! `metadata.processedBy` (`<base>-NNN`, `@<DEVICE_NAME>` when set), `metadata.processedAt`
//! (RFC 3339, ms) and `metadata.anomaly` (`reading > THRESHOLD`), and sends each on with
//! connection key `anomaly` when it is one, else `default`. Routing follows services.yml: a
//! `nextService.anomaly` entry gets the anomalies, and without one they go to `default`
//! (upstream's fallback), so a file listing only `default` keeps working.
//!
//! The input is acknowledged only after the broker confirmed the output
//! (`aion_kanban::client::Client::forward`; it is requeued otherwise): at-least-once. The
//! kanban's `fileList` travels unchanged (the runtime forwards the files when the next hop is
//! on another device). `nextDeviceName` is cleared before sending: a received kanban carries
//! this device's name there, which would override the `device` of the services.yml entry.
//! A message that is not a kanban, or has no numeric `metadata.reading`, is failed (→ the
//! service's dead-letter queue `<base>.dlq`) and the service goes on.
//!
//! Configuration (environment, as the reconciler renders a microservice pod): `RABBITMQ_URL`,
//! `QUEUE_ORIGIN`, `QUEUE_TO` (required); `AION_SERVICES` (producer-side routing),
//! `AION_DEVICE`, `AION_NAMESPACE`; `SERVICE_NAME`, `MS_NUMBER`, `DEVICE_NAME`; `THRESHOLD`
//! (default 30); `COUNT` (default 0 = forever; else exit 0 after forwarding that many kanbans:
//! an `always: no` microservice, a Job that the runtime runs again for the next kanban);
//! `RUST_LOG`. SIGTERM/SIGINT stop it after the kanban in hand (exit 0).
//!
//! Each kanban also gets `metadata.processorStartedAt`, when this process started: kanbans
//! processed by different runs (Job runs, restarts) tell them apart.
//!
//! ```sh
//! RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f QUEUE_ORIGIN=processor-001.in \
//!   QUEUE_TO=processor-001.out THRESHOLD=25 cargo run -p aion-examples --bin processor
//! ```

use std::process::ExitCode;
use std::time::Duration;

use aion_examples::{
    RECORD_GRACE, ServiceEnv, Shutdown, meta_f64, meta_u64, parse_var, rfc3339_ms,
};
use aion_kanban::Kanban;
use aion_kanban::client::Client;
use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::json;

fn main() -> ExitCode {
    aion_examples::run(processor)
}

/// The processed kanban: `processedBy`, `processedAt`, `anomaly`, the connection key; or why
/// the kanban cannot be processed.
fn process(
    mut k: Kanban,
    by: &str,
    started: &str,
    now: DateTime<Utc>,
    threshold: f64,
) -> Result<Kanban, &'static str> {
    let reading = meta_f64(&k, "reading").ok_or("metadata.reading is missing or not a number")?;
    let anomaly = reading > threshold;
    k.metadata.insert("processedBy".into(), json!(by));
    k.metadata
        .insert("processorStartedAt".into(), json!(started));
    k.metadata
        .insert("processedAt".into(), json!(rfc3339_ms(now)));
    k.metadata.insert("anomaly".into(), json!(anomaly));
    k.connection_key = if anomaly { "anomaly" } else { "default" }.into();
    k.prior_success = true;
    // services.yml decides the next device (a received kanban names this one).
    k.next_device_name.clear();
    Ok(k)
}

fn processed_by(env: &ServiceEnv) -> String {
    if env.device_name.is_empty() {
        env.instance()
    } else {
        format!("{}@{}", env.instance(), env.device_name)
    }
}

async fn processor() -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing the signal handlers")?;
    let get = |k: &str| std::env::var(k).ok();
    let env = ServiceEnv::from_vars(&get, "processor")?;
    let threshold: f64 = parse_var(&get, "THRESHOLD", 30.0)?;
    let count: u64 = parse_var(&get, "COUNT", 0)?;
    let started = rfc3339_ms(Utc::now());
    let by = processed_by(&env);
    let mut forwarded = 0u64;
    let mut client = Client::from_env()?;
    tracing::info!(
        instance = %env.instance(),
        queue_to = %client.queue_to,
        routed = client.output.is_some(),
        threshold,
        count,
        "processor started"
    );
    while count == 0 || forwarded < count {
        let Some(msg) = shutdown.next_message(&mut client.receiver).await else {
            break;
        };
        let reason = match msg.kanban() {
            Ok(k) => match process(k, &by, &started, Utc::now(), threshold) {
                Ok(out) => {
                    let seq = meta_u64(&out, "seq");
                    match client.forward(msg, &out).await {
                        Ok(()) => {
                            forwarded += 1;
                            tracing::info!(seq, connection_key = %out.connection_key, "forwarded")
                        }
                        Err(e) => {
                            // Requeued by forward(): pause so a broker refusing the output is
                            // not hammered by the same kanban coming straight back.
                            tracing::warn!(seq, "{e}; the input was requeued");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    continue;
                }
                Err(reason) => reason.to_string(),
            },
            Err(e) => format!("not a kanban: {e}"),
        };
        tracing::warn!(queue = msg.queue_name(), "{reason}: dead-lettering it");
        if let Err(e) = msg.fail().await {
            tracing::warn!("{e}");
        }
    }
    // A kanban the receiver took meanwhile is unacked: the broker requeues it when we exit.
    tokio::time::sleep(RECORD_GRACE).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor_kanban(reading: serde_json::Value) -> Kanban {
        Kanban::decode(
            json!({
                "processNumber": 2,
                "nextDeviceName": "edge",
                "fileList": ["/var/lib/aion/Data/sensor_2/reading-7.csv"],
                "metadata": {"seq": 7, "emittedAt": "2026-05-01T12:00:00.000Z", "reading": reading},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T12:00:00.050Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn normal_readings_go_on_by_default() {
        let k = process(
            sensor_kanban(json!(21.5)),
            "processor-002",
            "t0",
            at(),
            30.0,
        )
        .unwrap();
        assert_eq!(k.connection_key, "default");
        assert_eq!(k.metadata["anomaly"], false);
        assert_eq!(k.metadata["processedBy"], "processor-002");
        assert_eq!(k.metadata["processedAt"], "2026-05-01T12:00:00.050Z");
        assert_eq!(k.metadata["processorStartedAt"], "t0");
        // What the sensor sent is kept; the next device is left to services.yml.
        assert_eq!(k.metadata["seq"], 7);
        assert_eq!(k.metadata["reading"], 21.5);
        assert_eq!(k.file_list, ["/var/lib/aion/Data/sensor_2/reading-7.csv"]);
        assert_eq!(k.process_number, 2);
        assert_eq!(k.next_device_name, "");
    }

    #[test]
    fn anomalies_get_their_own_connection_key() {
        let k = process(sensor_kanban(json!(30.01)), "p", "t0", at(), 30.0).unwrap();
        assert_eq!(k.connection_key, "anomaly");
        assert_eq!(k.metadata["anomaly"], true);
        let k = process(sensor_kanban(json!(30)), "p", "t0", at(), 30.0).unwrap();
        assert_eq!(
            k.connection_key, "default",
            "the threshold itself is normal"
        );
    }

    #[test]
    fn a_kanban_without_a_reading_is_refused() {
        assert!(process(sensor_kanban(json!("hot")), "p", "t0", at(), 30.0).is_err());
        assert!(process(Kanban::default(), "p", "t0", at(), 30.0).is_err());
    }

    #[test]
    fn processed_by_names_instance_and_device() {
        let mut env = ServiceEnv {
            service_name: "processor".into(),
            ms_number: 1,
            aion_home: "/var/lib/aion".into(),
            device_name: String::new(),
        };
        assert_eq!(processed_by(&env), "processor-001");
        env.device_name = "jetson-1".into();
        assert_eq!(processed_by(&env), "processor-001@jetson-1");
    }
}
