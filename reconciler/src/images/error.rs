//! The images layer's error.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("image source {path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("{path}:{line}:1: {message}")]
    List {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "host {host}: {object}, container {container}: image {reference} is in no image source ({sources})"
    )]
    Missing {
        host: String,
        object: String,
        container: String,
        reference: String,
        sources: String,
    },
}
