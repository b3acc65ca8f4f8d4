//! Integration tests that need no component: the render golden files and the example
//! inventories. One test binary, one module per feature (as ripgrep's `tests/tests.rs`).

mod cluster_render_golden;
mod example_inventories;
