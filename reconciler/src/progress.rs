//! What a person sees while `apply` runs, and the full log kept in a file.
//!
//! On a terminal (and without `NO_COLOR`) each host, and the cluster part, gets an indicatif
//! spinner line; otherwise one plain line per step or object goes to stderr; with `-o json`,
//! one JSON object per event ([`Render::JsonLines`], for CI). One renderer for both: host steps call [`Progress::step`], cluster objects [`Progress::object`] (through
//! [`cluster_events`]). Everything a step prints goes to the log file, after
//! [`redact`]: join tokens, CA hashes and certificate keys never reach a terminal or a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Replace secrets in `text`: every registered secret string, and the value after
/// `--token`, `--discovery-token-ca-cert-hash`, `--certificate-key` and `password:` words.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut s = text.to_string();
    for secret in secrets.iter().filter(|x| x.len() >= 6) {
        s = s.replace(secret.as_str(), "<redacted>");
    }
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.split_inclusive('\n').enumerate() {
        let _ = i;
        let mut hide_next = false;
        let mut first = true;
        for word in line.split_inclusive([' ', '\t']) {
            let bare = word.trim_end_matches([' ', '\t', '\n', '\\']);
            if hide_next && !bare.is_empty() {
                out.push_str("<redacted>");
                out.push_str(&word[bare.len()..]);
                hide_next = false;
            } else {
                out.push_str(word);
            }
            if matches!(
                bare,
                "--token" | "--discovery-token-ca-cert-hash" | "--certificate-key" | "password:"
            ) {
                hide_next = true;
            } else if let Some((k, _)) = bare.split_once('=')
                && matches!(
                    k,
                    "--token" | "--discovery-token-ca-cert-hash" | "--certificate-key"
                )
            {
                out.truncate(out.len() - word.len());
                out.push_str(k);
                out.push_str("=<redacted>");
                out.push_str(&word[bare.len()..]);
            }
            first = false;
        }
        let _ = first;
    }
    out
}

/// The run's log file (append-only, redacted).
pub struct Log {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    secrets: Mutex<Vec<String>>,
}

impl Log {
    /// Create `<dir>/apply-<UTC timestamp>.log`.
    pub fn create(dir: &Path) -> std::io::Result<Log> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "apply-{}.log",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Log {
            path,
            file: Mutex::new(file),
            secrets: Mutex::new(Vec::new()),
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn add_secret(&self, s: &str) {
        if let Ok(mut v) = self.secrets.lock() {
            v.push(s.to_string());
        }
    }
    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.lock().map(|v| v.clone()).unwrap_or_default();
        redact(text, &secrets)
    }
    pub fn write(&self, host: &str, what: &str, text: &str) {
        let text = self.redact(text);
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(
                f,
                "==> {} [{host}] {what}",
                chrono::Utc::now().format("%H:%M:%S%.3f")
            );
            let _ = f.write_all(text.as_bytes());
            if !text.is_empty() && !text.ends_with('\n') {
                let _ = writeln!(f);
            }
        }
    }
}

/// How [`Progress`] shows events on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// A spinner line per host and one for the cluster (a terminal, colours allowed).
    Spinners,
    /// One plain line per event.
    Lines,
    /// One JSON object per line per event (`-o json`): `{"t": seconds, "event": "step" |
    /// "host-done" | "object" | "failure", …}`; stdout keeps only the final result.
    JsonLines,
}

impl Render {
    /// JSON lines when `json` (`-o json`), else spinners on a terminal, else plain lines.
    pub fn for_stderr(json: bool) -> Render {
        if json {
            Render::JsonLines
        } else if fancy() {
            Render::Spinners
        } else {
            Render::Lines
        }
    }
}

/// Per-host progress during `apply`.
pub struct Progress {
    multi: Option<MultiProgress>,
    json: bool,
    /// Where plain and JSON lines go instead of stderr (tests).
    out: Option<Mutex<Box<dyn Write + Send>>>,
    bars: Mutex<Vec<(String, ProgressBar, Instant)>>,
    started: Instant,
    /// Cluster events shown so far (the `cluster` line's counter).
    objects: Mutex<usize>,
}

impl Progress {
    pub fn new(render: Render) -> Progress {
        Progress {
            multi: (render == Render::Spinners).then(MultiProgress::new),
            json: render == Render::JsonLines,
            out: None,
            bars: Mutex::new(Vec::new()),
            started: Instant::now(),
            objects: Mutex::new(0),
        }
    }

    /// Plain or JSON lines to `out` instead of stderr.
    pub fn to_writer(render: Render, out: Box<dyn Write + Send>) -> Progress {
        Progress {
            out: Some(Mutex::new(out)),
            ..Progress::new(render)
        }
    }

    fn emit(&self, s: &str) {
        match &self.out {
            Some(out) => {
                if let Ok(mut w) = out.lock() {
                    let _ = writeln!(w, "{s}");
                }
            }
            None => eprintln!("{s}"),
        }
    }

    fn with_bar(&self, host: &str, f: impl FnOnce(&ProgressBar, Instant)) {
        let Some(multi) = &self.multi else { return };
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        if !bars.iter().any(|(h, _, _)| h == host) {
            let pb = multi.add(ProgressBar::new_spinner());
            pb.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(host.to_string());
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            bars.push((host.to_string(), pb, Instant::now()));
        }
        if let Some((_, pb, t)) = bars.iter().find(|(h, _, _)| h == host) {
            f(pb, *t);
        }
    }

    fn line(&self, s: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            None => self.emit(&s),
        }
    }

    /// One event as a JSON line (`-o json`).
    fn json_line(&self, event: &str, fields: serde_json::Value) {
        let mut v = serde_json::json!({
            "t": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "event": event,
        });
        if let (Some(o), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
            o.extend(f);
        }
        self.emit(&v.to_string());
    }

    pub fn step(&self, host: &str, index: usize, total: usize, what: &str) {
        if self.json {
            self.json_line(
                "step",
                serde_json::json!({"host": host, "index": index + 1, "total": total, "what": what}),
            );
        } else if self.multi.is_some() {
            self.with_bar(host, |pb, _| {
                pb.set_message(format!("[{}/{total}] {what}", index + 1))
            });
        } else {
            self.line(format!(
                "[{:>6.1}s] {host}: [{}/{total}] {what}",
                self.started.elapsed().as_secs_f64(),
                index + 1
            ));
        }
    }

    pub fn host_done(&self, host: &str, status: &str, ok: bool) {
        let mark = if ok { "✓" } else { "✗" };
        if self.json {
            self.json_line(
                "host-done",
                serde_json::json!({"host": host, "ok": ok, "status": status}),
            );
        } else if self.multi.is_some() {
            self.with_bar(host, |pb, t| {
                pb.finish_with_message(format!(
                    "{mark} {status} ({:.1}s)",
                    t.elapsed().as_secs_f64()
                ))
            });
        } else {
            self.line(format!(
                "[{:>6.1}s] {host}: {mark} {status}",
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    /// One event of the cluster part (an object created, configured, deleted, ready, waiting…):
    /// on a terminal the `cluster` line shows the latest with how many came so far; otherwise
    /// one plain line per event, as for the hosts' steps.
    pub fn object(&self, object: &str, what: &str) {
        if self.json {
            self.json_line(
                "object",
                serde_json::json!({"object": object, "what": what}),
            );
        } else if self.multi.is_some() {
            let n = {
                let Ok(mut n) = self.objects.lock() else {
                    return;
                };
                *n += 1;
                *n
            };
            self.with_bar("cluster", |pb, _| {
                pb.set_message(format!("[{n}] {object}: {what}"))
            });
        } else {
            self.line(format!(
                "[{:>6.1}s] cluster: {object}: {what}",
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    /// The cluster part ended with `summary` (the spinner line stays with it).
    pub fn cluster_done(&self, summary: &str, ok: bool) {
        if self.multi.is_some() && self.objects.lock().is_ok_and(|n| *n > 0) {
            self.host_done("cluster", summary, ok);
        }
    }

    /// Show the last lines of a failing step (already redacted).
    pub fn failure(&self, host: &str, what: &str, tail: &str) {
        if self.json {
            let lines: Vec<&str> = tail.lines().collect();
            self.json_line(
                "failure",
                serde_json::json!({"host": host, "step": what, "tail": lines}),
            );
            return;
        }
        let mut s = format!("{host}: {what} failed; last lines of its output:");
        for l in tail.lines() {
            s.push_str("\n    │ ");
            s.push_str(l);
        }
        self.line(s);
    }
}

/// A [`crate::cluster::ProgressFn`] that shows each cluster event on `progress` and writes it
/// to `log`.
pub fn cluster_events(
    progress: std::sync::Arc<Progress>,
    log: std::sync::Arc<Log>,
) -> crate::cluster::ProgressFn {
    std::sync::Arc::new(move |e: &crate::cluster::Event| {
        let key = e.key.to_string();
        progress.object(&key, &e.what);
        log.write("cluster", &key, &e.what);
    })
}

/// A [`crate::cluster::ProgressFn`] for commands without hosts (`down`, `rollback`, the wait
/// after `apply`): the same renderer, the same lines, no log file.
pub fn cluster_lines(render: Render) -> crate::cluster::ProgressFn {
    let progress = Progress::new(render);
    std::sync::Arc::new(move |e: &crate::cluster::Event| {
        progress.object(&e.key.to_string(), &e.what)
    })
}

/// Whether stderr gets spinners (a terminal, colours allowed) rather than plain lines.
pub fn fancy() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_commands_are_redacted() {
        let cmd = "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef \\\n\t--discovery-token-ca-cert-hash sha256:deadbeef --node-name w1\n";
        let r = redact(cmd, &[]);
        assert!(
            !r.contains("abcdef.0123456789abcdef") && !r.contains("deadbeef"),
            "{r}"
        );
        assert!(
            r.contains("--token <redacted>") && r.contains("--node-name w1"),
            "{r}"
        );
        assert_eq!(redact("x --token=secret y", &[]), "x --token=<redacted> y");
        assert_eq!(
            redact("pass s3cr3tvalue here", &["s3cr3tvalue".into()]),
            "pass <redacted> here"
        );
    }

    /// Cluster events reach the same renderer as the hosts' steps and the run's log file.
    #[test]
    fn cluster_events_are_shown_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(Log::create(dir.path()).unwrap());
        let progress = std::sync::Arc::new(Progress::new(Render::Lines));
        let events = cluster_events(progress.clone(), log.clone());
        let key = crate::manifest::ObjectKey {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("edge".into()),
            name: "cam-001".into(),
        };
        events(&crate::cluster::Event {
            key: key.clone(),
            what: "created".into(),
        });
        events(&crate::cluster::Event {
            key,
            what: "ready".into(),
        });
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(
            text.contains("[cluster] Deployment/edge/cam-001\ncreated\n"),
            "{text}"
        );
        assert!(text.contains("\nready\n"), "{text}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
