//! [`LocalHost`]: runs the engine's scripts with `sh` on this machine, with every absolute path
//! the scripts touch placed under a scratch root (`AION_ROOT`) and an extra directory first on
//! `PATH` (stand-ins for `apt-get`, `systemctl`, `hostname`, ... in unit tests).
//!
//! It is a test double for [`super::ssh::SshHost`] that still executes the real scripts, so the
//! facts parser, the checks and the apply scripts are exercised end to end without a network.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::{Host, HostError, Output};

#[derive(Debug, Clone)]
pub struct LocalHost {
    pub name: String,
    /// Prefix for every path the scripts use (exported as `AION_ROOT`).
    pub root: PathBuf,
    /// Directory put first on `PATH`.
    pub bin: Option<PathBuf>,
}

impl Host for LocalHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, script: &str) -> Result<Output, HostError> {
        let err = |source| HostError::Local {
            host: self.name.clone(),
            source,
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-s").env("AION_ROOT", &self.root);
        if let Some(bin) = &self.bin {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", bin.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let body = script.as_bytes().to_vec();
        let write = async move {
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        };
        let (_, out) = tokio::join!(write, child.wait_with_output());
        let out = out.map_err(err)?;
        Ok(Output {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
