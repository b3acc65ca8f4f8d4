//! `aion-reconcile`: load → validate → gather facts → plan (pure data) → execute.

pub mod change;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod execute;
pub mod facts;
pub mod graph;
pub mod host;
pub mod images;
pub mod kubeadm;
pub mod kubeclient;
pub mod live;
pub mod lock;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod plan_text;
pub mod progress;
pub mod reconcile;
pub mod render;
pub mod revision;
pub mod roles;
pub mod shell;
