//! [`SshHost`]: a device reached with the system OpenSSH client through the `openssh` crate,
//! one multiplexed master connection per host (native mux protocol), so every later script is
//! a new channel on the same authenticated connection.
//!
//! Host keys are strict by default: only the inventory's `known_hosts` file is consulted
//! (`UserKnownHostsFile`, `StrictHostKeyChecking=yes`); `accept_new` switches to
//! `accept-new`, which records unknown keys in that same file but still refuses changed ones.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

use super::{BOOTSTRAP, Host, HostError, Input, Output, bootstrap_header, write_input};

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
    /// Keep each master connection open this long after the run (idle), for the next run to
    /// reuse (as Ansible's ControlPersist does); None: close it at the end.
    pub persist: Option<Duration>,
    /// The cap on bytes per second sent to all hosts together (`--max-upload-rate`), shared
    /// by every host connected with these options.
    pub upload_limit: Option<Arc<super::rate::RateLimit>>,
}

#[derive(Debug)]
pub struct SshHost {
    name: String,
    sudo: bool,
    session: Arc<Session>,
    /// Where the control socket's path is recorded for the next run (when persisting).
    record: Option<PathBuf>,
    /// An idle remote `cat` held open for the whole run. ControlPersist's idle time counts from
    /// the last session on the master connection, so without one a host that waits longer than
    /// `--ssh-persist` between two of its steps (the master while the workers join: a real kubelet
    /// takes its time) would find its connection gone. Dropped at [`close`](Self::close): the
    /// idle time then runs for the next run's reuse.
    keepalive: Option<openssh::Child<Arc<Session>>>,
    /// See [`SshOptions::upload_limit`].
    upload_limit: Option<Arc<super::rate::RateLimit>>,
}

/// Start the keepalive session (best effort: without it a long run may have to reconnect).
async fn keepalive(session: &Arc<Session>) -> Option<openssh::Child<Arc<Session>>> {
    Session::to_command(Arc::clone(session), "cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .await
        .ok()
}

/// The file recording a persisted master connection for `host` with these options. Its name
/// changes with everything that decides how the connection was made (address, port, user,
/// key, known_hosts file and content, accept-new), so a changed inventory never reuses a
/// connection made under other settings.
fn record_path(host: &aion_model::inventory::Host, opts: &SshOptions) -> PathBuf {
    let known_hosts = opts
        .known_hosts
        .as_ref()
        .map(|kh| std::fs::read(kh).unwrap_or_default())
        .unwrap_or_default();
    let key = reuse_key(
        &[
            &host.name,
            &host.address,
            &host.ssh.port.to_string(),
            &host.ssh.user,
            &format!("{:?}", host.ssh.key),
            &format!("{:?}", opts.known_hosts),
            if opts.accept_new {
                "accept-new"
            } else {
                "strict"
            },
        ],
        &known_hosts,
    );
    opts.control_dir.join(format!("{}-{key}.ctl", host.name))
}

/// 16 hex digits of SHA-256 over the settings and the known_hosts content.
fn reuse_key(settings: &[&str], known_hosts: &[u8]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in settings {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(known_hosts);
    hex::encode(h.finalize())[..16].to_string()
}

/// A master connection an earlier run left open, if it is still alive.
async fn resume(record: &std::path::Path) -> Option<Session> {
    let ctl = std::fs::read_to_string(record).ok()?;
    let ctl = PathBuf::from(ctl.trim());
    if !ctl.exists() {
        return None;
    }
    let session = Session::resume_mux(ctl.into_boxed_path(), None);
    // (a resumed session is not shut down when dropped)
    session.check().await.ok().map(|()| session)
}

/// Remove control directories of master connections that have ended: no socket, and not
/// just made (a master being launched right now, by this run or another, has no socket yet).
fn clean_dead_masters(control_dir: &std::path::Path) {
    let old = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(120))
    };
    let Ok(entries) = std::fs::read_dir(control_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(".ssh-connection")
            && e.file_type().is_ok_and(|t| t.is_dir())
            && !e.path().join("master").exists()
            && old(&e)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
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
        let record = opts.persist.map(|_| record_path(host, opts));
        if let Some(record) = &record {
            if let Some(session) = resume(record).await {
                tracing::debug!(host = %host.name, "reusing the master connection of an earlier run");
                let session = Arc::new(session);
                return Ok(SshHost {
                    name: host.name.clone(),
                    sudo: host.ssh.user != "root",
                    keepalive: keepalive(&session).await,
                    session,
                    record: Some(record.clone()),
                    upload_limit: opts.upload_limit.clone(),
                });
            }
            let _ = std::fs::remove_file(record);
            clean_dead_masters(&opts.control_dir);
        }
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
            .control_persist(
                match opts
                    .persist
                    .and_then(|d| NonZeroUsize::new(d.as_secs() as usize))
                {
                    Some(secs) => ControlPersist::IdleFor(secs),
                    None => ControlPersist::Forever,
                },
            )
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
            .map_err(|e| err(crate::output::chain(&e)))?;
        let session = Arc::new(session);
        Ok(SshHost {
            name: host.name.clone(),
            sudo: host.ssh.user != "root",
            keepalive: keepalive(&session).await,
            session,
            record,
            upload_limit: opts.upload_limit.clone(),
        })
    }

    /// Close the master connection, or (when persisting) leave it open for the next run,
    /// recording its control socket; it ends by itself after the idle time.
    pub async fn close(mut self) {
        if let Some(k) = self.keepalive.take() {
            let _ = k.disconnect().await;
        }
        // The keepalive held the only other reference.
        let Ok(session) = Arc::try_unwrap(self.session) else {
            return;
        };
        match self.record {
            Some(record) => {
                let (ctl, _log) = session.detach();
                let tmp = record.with_extension("ctl.tmp");
                let written = std::fs::write(&tmp, ctl.to_string_lossy().as_bytes())
                    .and_then(|()| std::fs::rename(&tmp, &record));
                if written.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                    // Unrecorded, it cannot be reused: end it now.
                    let _ = Session::resume_mux(ctl, None).close().await;
                }
            }
            None => {
                let _ = session.close().await;
            }
        }
    }
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
            .map_err(|e| transport(crate::output::chain(&e)))?;
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
        let out = out.map_err(|e| transport(crate::output::chain(&e)))?;
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

    async fn run_with_input(&self, script: &str, input: &[Input]) -> Result<Output, HostError> {
        self.run_streamed(script, input).await
    }
}

impl SshHost {
    /// `sh` (through `sudo -n` when not root) with `args`.
    fn sh(&self, args: &[&str]) -> openssh::OwningCommand<Arc<Session>> {
        let mut c = if self.sudo {
            let mut c = Session::to_command(Arc::clone(&self.session), "sudo");
            c.args(["-n", "sh"]);
            c
        } else {
            Session::to_command(Arc::clone(&self.session), "sh")
        };
        c.args(args);
        c
    }

    /// [`Host::run_with_input`] over this connection: one more channel on the master.
    async fn run_streamed(&self, script: &str, input: &[Input]) -> Result<Output, HostError> {
        let transport = |message: String| HostError::Transport {
            host: self.name.clone(),
            message,
        };
        let mut child = self
            .sh(&["-c", BOOTSTRAP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| transport(crate::output::chain(&e)))?;
        let mut stdin = child
            .stdin()
            .take()
            .ok_or_else(|| transport("no stdin".into()))?;
        let header = bootstrap_header(script);
        let write = async move {
            let r = write_input(&mut stdin, &header, input, self.upload_limit.as_deref()).await;
            let _ = stdin.shutdown().await;
            drop(stdin);
            r
        };
        let (w, out) = tokio::join!(write, child.wait_with_output());
        let out = out.map_err(|e| transport(crate::output::chain(&e)))?;
        match w {
            Err((Some(path), message)) => {
                return Err(HostError::Input {
                    host: self.name.clone(),
                    path,
                    message,
                });
            }
            // The script may end before reading everything (it refused the input): not a
            // transport error when it gave a status.
            Err((None, e)) if out.status.code().is_none() => return Err(transport(e)),
            _ => {}
        }
        Ok(Output {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reuse_key;

    #[test]
    fn reuse_key_changes_with_every_setting_and_the_known_hosts() {
        let base = reuse_key(&["h", "10.0.0.1", "22", "root", "strict"], b"k1");
        assert_eq!(
            base,
            reuse_key(&["h", "10.0.0.1", "22", "root", "strict"], b"k1")
        );
        assert_ne!(
            base,
            reuse_key(&["h", "10.0.0.1", "22", "aion", "strict"], b"k1")
        );
        assert_ne!(
            base,
            reuse_key(&["h", "10.0.0.1", "2222", "root", "strict"], b"k1")
        );
        assert_ne!(
            base,
            reuse_key(&["h", "10.0.0.1", "22", "root", "accept-new"], b"k1")
        );
        assert_ne!(
            base,
            reuse_key(&["h", "10.0.0.1", "22", "root", "strict"], b"k2")
        );
        // parts are delimited: "ab"+"c" is not "a"+"bc"
        assert_ne!(reuse_key(&["ab", "c"], b""), reuse_key(&["a", "bc"], b""));
        assert_eq!(base.len(), 16);
    }
}
