//! [`LocalHost`]: runs the engine's scripts with `sh` on this machine, with every absolute path
//! the scripts touch placed under a scratch root (`AION_ROOT`) and an extra directory first on
//! `PATH` (stand-ins for `apt-get`, `systemctl`, `hostname`, ... in unit tests).
//!
//! It is a test double for [`super::ssh::SshHost`] that still executes the real scripts, so the
//! facts parser, the checks and the apply scripts are exercised end to end without a network.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::{BOOTSTRAP, Host, HostError, Input, Output, bootstrap_header, write_input};

#[derive(Debug, Clone)]
pub struct LocalHost {
    pub name: String,
    /// Prefix for every path the scripts use (exported as `AION_ROOT`).
    pub root: PathBuf,
    /// Directory put first on `PATH`.
    pub bin: Option<PathBuf>,
}

impl LocalHost {
    /// `sh` with `AION_ROOT` and `PATH` set.
    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.env("AION_ROOT", &self.root);
        if let Some(bin) = &self.bin {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", bin.display()));
        }
        cmd
    }
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
        let mut cmd = self.command();
        cmd.arg("-s");
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

    async fn run_with_input(&self, script: &str, input: &[Input]) -> Result<Output, HostError> {
        let err = |source| HostError::Local {
            host: self.name.clone(),
            source,
        };
        let mut child = self
            .command()
            .args(["-c", BOOTSTRAP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let header = bootstrap_header(script);
        let write = async move {
            let r = write_input(&mut stdin, &header, input, None).await;
            let _ = stdin.shutdown().await;
            r
        };
        let (w, out) = tokio::join!(write, child.wait_with_output());
        let out = out.map_err(err)?;
        if let Err((Some(path), message)) = w {
            return Err(HostError::Input {
                host: self.name.clone(),
                path,
                message,
            });
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
    use super::*;

    /// The script arrives first, then every part in order; each `head -c` gets exactly its
    /// part (the bootstrap leaves the input unread), file ranges included.
    #[tokio::test]
    async fn run_with_input_streams_parts_after_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        std::fs::write(&file, b"0123456789abcdef").unwrap();
        let h = LocalHost {
            name: "l".into(),
            root: dir.path().to_path_buf(),
            bin: None,
        };
        // trailing newlines of the script survive the bootstrap
        let script = "set -e\na=$(head -c 3)\nb=$(head -c 4)\nc=$(head -c 5)\nprintf '%s|%s|%s' \"$a\" \"$b\" \"$c\"\n\n\n";
        let input = [
            Input::Bytes(b"xyz".to_vec()),
            Input::File {
                path: file.clone(),
                offset: 10,
                len: 4,
            },
            Input::Bytes(b"tail!".to_vec()),
        ];
        let out = h.run_with_input(script, &input).await.unwrap();
        assert!(out.success(), "{}", out.combined());
        assert_eq!(out.stdout_str(), "xyz|abcd|tail!");
        // a file shorter than the range: an error naming the file
        let short = [Input::File {
            path: file.clone(),
            offset: 10,
            len: 100,
        }];
        let e = h
            .run_with_input("cat >/dev/null\n", &short)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HostError::Input { path, .. } if *path == file),
            "{e}"
        );
    }
}
