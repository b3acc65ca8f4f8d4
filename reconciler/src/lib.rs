//! `aion-reconcile`: load → validate → gather facts → plan (pure data) → execute.

pub mod cli;
pub mod commands;
pub mod output;
