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
}

/// One device the engine can run scripts on.
pub trait Host: Send + Sync {
    /// Inventory name of the device.
    fn name(&self) -> &str;
    /// Run `script` with `sh` as root (the script arrives on stdin, never on a command line).
    fn run(&self, script: &str) -> impl Future<Output = Result<Output, HostError>> + Send;
}
