//! Integration tests against real RabbitMQ brokers (`scripts/rabbitmq.sh start`): one test
//! binary, one module per feature (as ripgrep's `tests/tests.rs`), so lapin and the kanban runtime
//! are linked once for all of them. Every test uses its own queues and virtual hosts; the one
//! that restarts a broker takes the brokers exclusively (`aion_integration_tests::component`).
//! Fails (never skips) under `AION_REQUIRE_RABBITMQ=1`.

mod cluster_broker;
mod installations;
mod kanban_client;
mod kanban_faults;
mod kanban_router;
mod kanban_wiring;
mod live_api;
