//! A forwarded kanban and its files: the message another device's router receives, and the
//! files read from and stored under the AION home.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::message::Kanban;
use crate::transfer::{self};

/// A kanban forwarded to another device's inbound queue, with the files of its `fileList`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forwarded {
    pub service: String,
    pub number: i32,
    pub from_device: String,
    pub kanban: Kanban,
    /// Files inline (base64; older senders).
    #[serde(default)]
    pub files: Vec<ForwardedFile>,
    /// Files sent ahead as chunks ([`transfer`]): the commit of that transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<transfer::Manifest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedFile {
    /// File name (no directories) to store it under on the receiving device.
    pub name: String,
    /// Base64 content.
    pub data: String,
}

pub(super) enum ForwardError {
    /// Transient (remote broker unreachable): requeue and retry.
    Retry(String),
    /// Permanent (file missing or outside the AION home): dead-letter.
    Reject(String),
}

/// Why a kanban's files cannot be read to forward, or stored where they arrived.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("AION home {}: {source}", home.display())]
    Home {
        home: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fileList entry {entry}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fileList entry {entry} is outside {}", home.display())]
    Outside { entry: String, home: PathBuf },
    #[error("fileList entry {entry} is not a file")]
    NotAFile { entry: String },
    #[error("bad file name `{0}`")]
    BadName(String),
    #[error("file {name}: {source}")]
    Decode {
        name: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The name to store each `fileList` entry under and its real path, to forward them. Relative
/// paths are relative to the AION home (the data directory's parent), as upstream's
/// send-anything did; a path that resolves (symlinks included) outside the AION home is refused.
pub fn resolve_files(
    data_dir: &Path,
    list: &[String],
) -> Result<Vec<(String, PathBuf)>, FileError> {
    if list.is_empty() {
        // Nothing to read: a missing data directory is not this kanban's problem.
        return Ok(Vec::new());
    }
    let home = data_dir.parent().unwrap_or(data_dir);
    let home_c = home.canonicalize().map_err(|source| FileError::Home {
        home: home.to_owned(),
        source,
    })?;
    list.iter()
        .map(|p| {
            let path = if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                home.join(p)
            };
            let real = path.canonicalize().map_err(|source| FileError::Entry {
                entry: p.clone(),
                source,
            })?;
            if !real.starts_with(&home_c) {
                return Err(FileError::Outside {
                    entry: p.clone(),
                    home: home.to_owned(),
                });
            }
            if !real.is_file() {
                return Err(FileError::NotAFile { entry: p.clone() });
            }
            let name = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, real))
        })
        .collect()
}

/// Store received files atomically (temp file + rename) under `dir`; returns their paths.
pub fn store_files(dir: &Path, files: &[ForwardedFile]) -> Result<Vec<String>, FileError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| FileError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    files
        .iter()
        .map(|f| {
            let name = Path::new(&f.name)
                .file_name()
                .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                .ok_or_else(|| FileError::BadName(f.name.clone()))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&f.data)
                .map_err(|source| FileError::Decode {
                    name: f.name.clone(),
                    source,
                })?;
            let dest = dir.join(name);
            let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
            std::fs::write(&tmp, data).map_err(write_error(&tmp))?;
            std::fs::rename(&tmp, &dest).map_err(write_error(&dest))?;
            Ok(dest.to_string_lossy().into_owned())
        })
        .collect()
}
