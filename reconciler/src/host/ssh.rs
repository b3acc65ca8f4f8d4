//! [`SshHost`]: a device reached with the system OpenSSH client through the `openssh` crate,
//! one multiplexed master connection per host (native mux protocol), so every later script is
//! a new channel on the same authenticated connection.
//!
//! Host keys are strict by default: only the inventory's `known_hosts` file is consulted
//! (`UserKnownHostsFile`, `StrictHostKeyChecking=yes`); `accept_new` switches to
//! `accept-new`, which records unknown keys in that same file but still refuses changed ones.

use std::path::PathBuf;
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

use super::{Host, HostError, Output};

/// How to reach hosts; the same for every host of an inventory.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The inventory's known_hosts file (None: ssh's own defaults).
    pub known_hosts: Option<PathBuf>,
    /// `--accept-new-host-keys`.
    pub accept_new: bool,
    pub connect_timeout: Duration,
    /// Directory for control sockets and the generated ssh config.
    pub control_dir: PathBuf,
}

#[derive(Debug)]
pub struct SshHost {
    name: String,
    sudo: bool,
    session: Session,
}

impl SshHost {
    /// Open the master connection to `host` (fails fast: BatchMode, no password prompts).
    pub async fn connect(
        host: &aion_model::inventory::Host,
        opts: &SshOptions,
    ) -> Result<SshHost, HostError> {
        let destination = host.address.clone();
        let err = |message: String| HostError::Connect {
            host: host.name.clone(),
            destination: format!("{}@{}:{}", host.ssh.user, destination, host.ssh.port),
            message,
        };
        std::fs::create_dir_all(&opts.control_dir).map_err(|e| err(e.to_string()))?;
        // A generated config replaces ~/.ssh/config so runs are reproducible; it only sets
        // what the builder cannot: batch mode and a faster key exchange first.
        let config = opts.control_dir.join("ssh_config");
        std::fs::write(
            &config,
            "Host *\n  BatchMode yes\n  KexAlgorithms ^curve25519-sha256\n  LogLevel ERROR\n  ServerAliveCountMax 3\n",
        )
        .map_err(|e| err(e.to_string()))?;
        let mut b = SessionBuilder::default();
        b.user(host.ssh.user.clone())
            .port(host.ssh.port)
            .config_file(&config)
            .control_directory(&opts.control_dir)
            .connect_timeout(opts.connect_timeout)
            .server_alive_interval(Duration::from_secs(10))
            .known_hosts_check(if opts.accept_new {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            });
        if let Some(kh) = &opts.known_hosts {
            b.user_known_hosts_file(kh);
        }
        if let Some(key) = &host.ssh.key {
            b.keyfile(key);
        }
        let session = b
            .connect_mux(&destination)
            .await
            .map_err(|e| err(error_chain(&e)))?;
        Ok(SshHost {
            name: host.name.clone(),
            sudo: host.ssh.user != "root",
            session,
        })
    }

    /// Close the master connection.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Host for SshHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, script: &str) -> Result<Output, HostError> {
        let transport = |message: String| HostError::Transport {
            host: self.name.clone(),
            message,
        };
        let mut cmd = if self.sudo {
            let mut c = self.session.command("sudo");
            c.args(["-n", "sh", "-s"]);
            c
        } else {
            let mut c = self.session.command("sh");
            c.arg("-s");
            c
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let mut stdin = child
            .stdin()
            .take()
            .ok_or_else(|| transport("no stdin".into()))?;
        let body = script.as_bytes().to_vec();
        let write = async move {
            let r = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
            drop(stdin);
            r
        };
        let (w, out) = tokio::join!(write, child.wait_with_output());
        let out = out.map_err(|e| transport(error_chain(&e)))?;
        if let Err(e) = w {
            // A script that exits before reading all of stdin is not a transport error
            // when it produced a status.
            if out.status.code().is_none() {
                return Err(transport(e.to_string()));
            }
        }
        Ok(Output {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
