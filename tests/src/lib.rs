//! Test support shared by the integration tests: finding the real control plane, the SSH
//! testbed and RabbitMQ, and failing (never skipping) under CI when one is missing.

pub mod chromium;
pub mod component;
pub mod k8s;
pub mod oci;
pub mod pod_env;
pub mod rabbitmq;
pub mod registry;
pub mod testbed;
