//! Where resources are checked and applied: a [`Host`] runs one shell script (given on stdin,
//! as root: directly when the SSH user is root, else through `sudo -n`) and returns its output.
//!
//! Everything the engine does on a host goes through [`Host::run`], so a script is the unit of
//! work: facts are gathered by one script (one round trip), each change is applied by one.
//! [`ssh::SshHost`] talks to a real device over a multiplexed OpenSSH connection;
//! [`local::LocalHost`] runs the same scripts on this machine under a scratch root directory
//! (unit tests).

use std::future::Future;

pub mod local;
pub mod rate;
pub mod ssh;

/// What a script printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status; `-1` when the remote side gave none (killed by a signal).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stdout then stderr, as one text (what a log shows).
    pub fn combined(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.stdout).into_owned();
        if !self.stderr.is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&String::from_utf8_lossy(&self.stderr));
        }
        s
    }
}

/// A host could not be reached or the transport broke (not: a script failed).
/// Each host's connection by name, or why it could not be made (the plan shows the host as
/// unreachable, `apply` skips it; the others go on).
pub type Connections<H> =
    std::collections::BTreeMap<String, Result<std::sync::Arc<H>, std::sync::Arc<HostError>>>;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{host}: cannot connect over SSH to {destination}: {message}")]
    Connect {
        host: String,
        destination: String,
        message: String,
    },
    #[error("{host}: SSH session broke: {message}")]
    Transport { host: String, message: String },
    #[error("{host}: cannot run a local process: {source}")]
    Local {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// A local file streamed to a script could not be read (or is shorter than said).
    #[error("{host}: cannot read {path} to send it: {message}")]
    Input {
        host: String,
        path: std::path::PathBuf,
        message: String,
    },
}

/// One part of what [`Host::run_with_input`] streams to a script's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Bytes(Vec<u8>),
    /// `len` bytes of a local file from `offset` (a blob in an OCI layout directory, or
    /// inside an archive), read while sending: never held in memory whole.
    File {
        path: std::path::PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Input {
    pub fn len(&self) -> u64 {
        match self {
            Input::Bytes(b) => b.len() as u64,
            Input::File { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a script with input is started: a fixed bootstrap reads the script's length, then the
/// script, and evaluates it with the rest of stdin (the input) still unread. The script never
/// appears on a command line; `read` takes the length byte by byte and `head -c` never reads
/// past what it is asked for, so the input stays for the script.
pub const BOOTSTRAP: &str =
    "IFS= read -r n || exit 97; s=$(head -c \"$n\"; echo x); s=${s%x}; eval \"$s\"";

/// The bytes that precede the input on stdin: the script's length, a newline, the script.
pub fn bootstrap_header(script: &str) -> Vec<u8> {
    let mut h = format!("{}\n", script.len()).into_bytes();
    h.extend_from_slice(script.as_bytes());
    h
}

/// Write `header` then every input to `w`, in chunks (files read as they are sent), each chunk
/// of a file waiting for its turn under `limit` when there is one.
pub async fn write_input<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    header: &[u8],
    input: &[Input],
    limit: Option<&rate::RateLimit>,
) -> Result<(), (Option<std::path::PathBuf>, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
    w.write_all(header)
        .await
        .map_err(|e| (None, e.to_string()))?;
    let mut buf = vec![0u8; 256 * 1024];
    for part in input {
        match part {
            Input::Bytes(b) => w.write_all(b).await.map_err(|e| (None, e.to_string()))?,
            Input::File { path, offset, len } => {
                let local = |e: std::io::Error| (Some(path.clone()), e.to_string());
                let mut f = tokio::fs::File::open(path).await.map_err(local)?;
                f.seek(std::io::SeekFrom::Start(*offset))
                    .await
                    .map_err(local)?;
                let mut left = *len;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = f.read(&mut buf[..want]).await.map_err(local)?;
                    if n == 0 {
                        return Err((
                            Some(path.clone()),
                            format!("ends {left} byte(s) before offset {}", offset + len),
                        ));
                    }
                    if let Some(l) = limit {
                        l.take(n).await;
                    }
                    w.write_all(&buf[..n])
                        .await
                        .map_err(|e| (None, e.to_string()))?;
                    left -= n as u64;
                }
            }
        }
    }
    w.flush().await.map_err(|e| (None, e.to_string()))?;
    Ok(())
}

/// One device the engine can run scripts on.
pub trait Host: Send + Sync {
    /// Inventory name of the device.
    fn name(&self) -> &str;
    /// Run `script` with `sh` as root (the script arrives on stdin, never on a command line).
    fn run(&self, script: &str) -> impl Future<Output = Result<Output, HostError>> + Send;
    /// Run `script` as root with `input` streamed on its stdin (see [`BOOTSTRAP`]): the script
    /// reads it (e.g. `head -c SIZE > file` per part). Files are read while sending.
    fn run_with_input(
        &self,
        script: &str,
        input: &[Input],
    ) -> impl Future<Output = Result<Output, HostError>> + Send;
}
