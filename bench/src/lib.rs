//! Shared helpers for the benchmark programs in `bench/src/bin/`.
