//! The one model of AION's inputs that both binaries share.
//!
//! * [`yaml`]: a spanned YAML tree with go-yaml v2 scalar semantics.
//! * [`services`]: `services.yml` exactly as upstream aion-core reads it (go-yaml v2 semantics).
//! * [`inventory`]: the devices an operator provisions, their roles and per-host variables.
//! * [`schema`]: the embedded JSON Schemas and their checks.
//! * [`validate`]: semantic rules beyond the schema.
//! * [`peer`]: the broker names of devices of other installations.
//! * [`diag`]: diagnostics with file, line, column and a hint; what `validate` prints.
//!
//! This crate does no I/O beyond reading the files it is asked to load, and nothing async.

pub mod diag;
pub mod inventory;
pub mod k8s;
pub mod peer;
mod read;
pub mod schema;
pub mod services;
pub mod span;
pub mod validate;
pub mod yaml;

pub use diag::{Diagnostic, LoadError, Loaded, Severity};
pub use inventory::{Host, Inventory, Mode, Role};
pub use read::{FieldSpans, suggest};
pub use services::{Device, Microservice, NextService, Port, ServicesFile};
pub use span::Span;
