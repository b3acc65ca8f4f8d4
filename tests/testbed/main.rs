//! Integration tests on the SSH testbed (`scripts/testbed up`; most also need the control plane):
//! one test binary, one module per feature (as ripgrep's `tests/tests.rs`). The tests that reset
//! or provision the testbed's hosts take them exclusively (`aion_integration_tests::component`),
//! so they run one at a time, as they did when each was its own binary; the read-only SSH
//! checks share them. Fails (never skips) under `AION_REQUIRE_TESTBED=1` (and `AION_REQUIRE_K8S=1`).

mod images_containerd;
mod installations_pods;
mod provision_testbed;
mod testbed_images;
mod testbed_kubeadm;
mod testbed_nodes;
mod testbed_ssh;
