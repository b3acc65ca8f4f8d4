//! Locks so that two `apply` runs on one inventory / cluster cannot overlap:
//!
//! * a local lock file next to the inventory (`.aion/reconcile.lock`, created with `O_EXCL`);
//!   stale when its process is gone (same machine);
//! * a lock on the master host: the directory `/var/lib/aion/.reconcile.lock` made with
//!   `mkdir` (atomic: exactly one creator wins) holding an `owner` file; stale after
//!   `stale_after` (default 2 h), then taken over with a warning.
//!
//! Both messages name the holder and when it started.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::Host;
use crate::shell::{prelude, sh_quote};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another apply holds the lock {path}: {holder}")]
    HeldLocal { path: PathBuf, holder: String },
    #[error(
        "another apply holds the lock on {host} (/var/lib/aion/.reconcile.lock): {holder}; if that run is gone, remove the directory or wait until it is stale ({stale_after_s} s)"
    )]
    HeldRemote {
        host: String,
        holder: String,
        stale_after_s: u64,
    },
    #[error("lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take the lock on {host}: {message}")]
    Remote { host: String, message: String },
}

/// Who holds a lock: `user@machine pid N since RFC3339`.
pub fn holder_id() -> String {
    format!(
        "{} pid {} since {}",
        user_at_machine(),
        std::process::id(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The login name of this process's real uid from `/etc/passwd` (services and CI jobs often
/// run without `USER`).
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid).then(|| name.to_owned())
        })
}

/// `user@machine` of whoever runs this (recorded in locks and revisions).
pub fn user_at_machine() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_of_uid)
        .unwrap_or_else(|| "unknown".into());
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{machine}")
}

/// The local lock; removed when dropped.
#[derive(Debug)]
pub struct LocalLock {
    path: PathBuf,
}

impl LocalLock {
    pub fn acquire(path: &Path, holder: &str) -> Result<LocalLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    writeln!(f, "{holder}").map_err(io)?;
                    return Ok(LocalLock {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let existing = std::fs::read_to_string(path)
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    if is_stale_local(&existing) {
                        tracing::warn!("removing stale lock {} ({existing})", path.display());
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    return Err(LockError::HeldLocal {
                        path: path.to_owned(),
                        holder: existing,
                    });
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(LockError::HeldLocal {
            path: path.to_owned(),
            holder: "(could not take over a stale lock)".into(),
        })
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A local lock is stale when it was taken on this machine by a process that no longer exists.
fn is_stale_local(holder: &str) -> bool {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut words = holder.split_whitespace();
    let (Some(who), Some("pid"), Some(pid)) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    let same_machine = who.rsplit_once('@').is_some_and(|(_, m)| m == machine);
    same_machine
        && pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

const REMOTE_DIR: &str = "/var/lib/aion/.reconcile.lock";

/// Script that takes the remote lock; prints `ACQUIRED`, `TAKEN-OVER <old holder>` or
/// `HELD <age seconds> <holder>`.
pub fn remote_acquire_script(user: &str, holder: &str, stale_after: Duration) -> String {
    format!(
        "{pre}L=\"$R\"{dir}\nmkdir -p \"$R/var/lib/aion\"\nH={h}\n\
         if mkdir \"$L\" 2>/dev/null; then printf '%s\\n' \"$H\" > \"$L/owner\"; echo ACQUIRED; exit 0; fi\n\
         age=$(( $(date +%s) - $(stat -c %Y \"$L\") ))\nold=$(cat \"$L/owner\" 2>/dev/null)\n\
         if [ \"$age\" -gt {stale} ]; then rm -rf \"$L\" && mkdir \"$L\" && printf '%s\\n' \"$H\" > \"$L/owner\" && echo \"TAKEN-OVER $old\"; exit 0; fi\n\
         echo \"HELD $age $old\"\n",
        pre = prelude(user),
        dir = sh_quote(REMOTE_DIR),
        h = sh_quote(holder),
        stale = stale_after.as_secs(),
    )
}

/// Script that releases the remote lock if (and only if) we still hold it.
pub fn remote_release_script(user: &str, holder: &str) -> String {
    format!(
        "{pre}L=\"$R\"{dir}\nif [ \"$(cat \"$L/owner\" 2>/dev/null)\" = {h} ]; then rm -rf \"$L\"; fi\n",
        pre = prelude(user),
        dir = sh_quote(REMOTE_DIR),
        h = sh_quote(holder)
    )
}

/// Take the remote lock on `host`.
pub async fn acquire_remote<H: Host>(
    host: &H,
    user: &str,
    holder: &str,
    stale_after: Duration,
) -> Result<(), LockError> {
    let out = host
        .run(&remote_acquire_script(user, holder, stale_after))
        .await
        .map_err(|e| LockError::Remote {
            host: host.name().into(),
            message: e.to_string(),
        })?;
    let text = out.stdout_str();
    let line = text.trim();
    if line == "ACQUIRED" {
        Ok(())
    } else if let Some(old) = line.strip_prefix("TAKEN-OVER") {
        tracing::warn!(
            "{}: took over a stale lock held by {}",
            host.name(),
            old.trim()
        );
        Ok(())
    } else if let Some(rest) = line.strip_prefix("HELD ") {
        let holder = rest
            .split_once(' ')
            .map(|(_, h)| h)
            .unwrap_or("(unknown holder)")
            .to_string();
        Err(LockError::HeldRemote {
            host: host.name().into(),
            holder,
            stale_after_s: stale_after.as_secs(),
        })
    } else {
        Err(LockError::Remote {
            host: host.name().into(),
            message: format!("unexpected answer {line:?}; {}", out.combined().trim()),
        })
    }
}

pub async fn release_remote<H: Host>(host: &H, user: &str, holder: &str) {
    let _ = host.run(&remote_release_script(user, holder)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_lock_excludes_and_names_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = LocalLock::acquire(&p, &holder_id()).unwrap();
        let e = LocalLock::acquire(&p, "someone").unwrap_err().to_string();
        assert!(e.contains("pid") && e.contains("since"), "{e}");
        drop(a);
        let _b = LocalLock::acquire(&p, "someone").unwrap();
    }

    #[test]
    fn stale_local_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        std::fs::write(
            &p,
            format!(
                "u@{} pid 4000000000 since 2026-01-01T00:00:00Z\n",
                machine.trim()
            ),
        )
        .unwrap();
        assert!(LocalLock::acquire(&p, "me").is_ok());
    }

    #[tokio::test]
    async fn remote_lock_excludes_names_holder_and_expires() {
        use crate::host::local::LocalHost;
        let dir = tempfile::tempdir().unwrap();
        let h = LocalHost {
            name: "m".into(),
            root: dir.path().to_owned(),
            bin: None,
        };
        let stale = Duration::from_secs(3600);
        acquire_remote(&h, "root", "alice@op pid 1 since T1", stale)
            .await
            .unwrap();
        let e = acquire_remote(&h, "root", "bob@op pid 2 since T2", stale)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("alice@op pid 1 since T1") && e.contains("on m"),
            "{e}"
        );
        // Only the holder releases it.
        release_remote(&h, "root", "bob@op pid 2 since T2").await;
        assert!(
            acquire_remote(&h, "root", "bob@op pid 2 since T2", stale)
                .await
                .is_err()
        );
        release_remote(&h, "root", "alice@op pid 1 since T1").await;
        acquire_remote(&h, "root", "bob@op pid 2 since T2", stale)
            .await
            .unwrap();
        // A lock older than `stale_after` is taken over.
        acquire_remote(
            &h,
            "root",
            "carol@op pid 3 since T3",
            Duration::from_secs(0),
        )
        .await
        .ok();
        std::thread::sleep(Duration::from_millis(1100));
        acquire_remote(
            &h,
            "root",
            "carol@op pid 3 since T3",
            Duration::from_secs(0),
        )
        .await
        .unwrap();
        let owner =
            std::fs::read_to_string(dir.path().join("var/lib/aion/.reconcile.lock/owner")).unwrap();
        assert_eq!(owner.trim(), "carol@op pid 3 since T3");
    }
}
