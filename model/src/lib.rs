//! The one model of AION's inputs that both binaries share.
//!
//! * [`services`]: `services.yml` exactly as upstream aion-core reads it (go-yaml v2 semantics).
//! * [`inventory`]: the devices an operator provisions, their roles and per-host variables.
//! * [`diag`]: diagnostics with file, line, column and a hint; what `validate` prints.
//!
//! This crate does no I/O beyond reading the files it is asked to load, and nothing async.

pub mod diag;
pub mod inventory;
pub mod services;
pub mod span;

pub use diag::{Diagnostic, Severity};
pub use inventory::{Host, Inventory, Mode, Role};
pub use services::{Device, Microservice, NextService, Port, ServicesFile};
pub use span::Span;
