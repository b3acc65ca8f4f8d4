//! Integration tests that need the real Kubernetes control plane (`scripts/k8s-testenv.sh`;
//! `kanban_k8s` also RabbitMQ): one test binary, one module per feature (as ripgrep's
//! `tests/tests.rs`), so kube is linked once for all of them. Each test makes its own namespace,
//! so they run in parallel. Fails (never skips) under `AION_REQUIRE_K8S=1`.

mod bootstrap_steps;
mod broker_secret;
mod cluster_apply;
mod k8s_control_plane;
mod kanban_k8s;
mod peers;
