//! An example microservice using the aion-kanban client library.
//!
//! Configured the AION way: `RABBITMQ_URL`, `QUEUE_ORIGIN` (its input queue, e.g.
//! `echo-001.in`), `QUEUE_TO` (its output queue, e.g. `echo-001.out`), optionally
//! `AION_SERVICES` (services.yml: route results producer-side). For every kanban it
//! receives it adds `metadata.echoedBy`, sends the result on, and acknowledges the input only
//! after the result was confirmed by the broker. A message that is not a kanban is failed
//! (→ the service's dead-letter queue) and the service keeps going.
//!
//! ```sh
//! RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f QUEUE_ORIGIN=echo-001.in \
//!   QUEUE_TO=echo-001.out cargo run -p aion-kanban --example echo_service
//! ```

use aion_kanban::client::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut client = Client::from_env()?;
    let me = std::env::var("HOSTNAME").unwrap_or_else(|_| "echo".into());
    while let Some(msg) = client.receiver.next().await {
        match msg.kanban() {
            Ok(mut k) => {
                k.metadata.insert("echoedBy".into(), me.clone().into());
                k.prior_success = true;
                // Acks the input after the result was confirmed; requeues it otherwise.
                if let Err(e) = client.forward(msg, &k).await {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => {
                tracing::warn!("not a kanban on {}: {e}", msg.queue_name());
                msg.fail().await?;
            }
        }
    }
    Ok(())
}
