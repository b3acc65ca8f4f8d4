//! `aion-reconcile`: load → validate → gather facts → plan (pure data) → execute.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod kubeclient;
pub mod output;
pub mod render;
