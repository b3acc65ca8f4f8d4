//! The data sweeper: deletes old files under the data directory (`/var/lib/aion/Data`) by age and
//! extension, as upstream's data-sweeper-kube did (doc §7.1), from the same `data-sweeper.yml`.
//!
//! Rules (upstream's): for each file, the first `sweepTargets` entry one of whose
//! `fileExtention` [sic] strings is a suffix of the path gives its maximum age (`interval`, ms);
//! no match → kept. A file younger than that is kept. A file whose path contains an
//! `ignoreMicroservices[].microservice` string (empty matches every path) and ends with one of
//! that entry's `fileExtention`/`fileName` strings is kept. Directories are never removed.
//! Not carried over: upstream's MySQL `data_sweeper_ignore_tables` lookup and its HTTP endpoint.
//!
//! Safety: the data directory is canonicalised; symbolic links are never followed (a link is
//! treated as a file of its own and only the link is removed); before each removal the file's
//! parent directory is canonicalised again and must still be inside the data directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    Config {
        file: PathBuf,
        line: u64,
        col: u64,
        message: String,
    },
    #[error("data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SweeperConfig {
    #[serde(default)]
    pub sweep_targets: Option<Vec<SweepTarget>>,
    #[serde(default)]
    pub ignore_microservices: Option<Vec<IgnoreRule>>,
    #[serde(default)]
    pub sweep_settings: Option<Vec<SweepSetting>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SweepTarget {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "fileExtention")]
    pub file_extention: Option<Vec<String>>,
    /// Maximum age in milliseconds.
    pub interval: Spanned<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IgnoreRule {
    #[serde(default)]
    pub microservice: Option<String>,
    #[serde(default, rename = "fileExtention")]
    pub file_extention: Option<Vec<String>>,
    #[serde(default, rename = "fileName")]
    pub file_name: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepSetting {
    pub sweep_start_type: Spanned<String>,
    #[serde(default)]
    pub sweep_check_interval: Option<Spanned<i64>>,
    #[serde(default)]
    pub sweep_check_alarm: Option<Spanned<String>>,
}

/// When sweeps run (upstream uses only the first `sweepSettings` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    /// Daily at this local time (h, m, s).
    DailyAt(u32, u32, u32),
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub targets: Vec<(Vec<String>, Duration)>,
    pub ignores: Vec<(String, Vec<String>)>,
    /// `None` when `sweepSettings` is missing: one-shot sweeps only (`aion-kanban sweep`).
    pub schedule: Option<Schedule>,
}

fn cfg_err(file: &Path, loc: serde_saphyr::Location, message: String) -> SweepError {
    SweepError::Config {
        file: file.to_path_buf(),
        line: loc.line(),
        col: loc.column(),
        message,
    }
}

pub fn parse(text: &str, file: &Path) -> Result<Rules, SweepError> {
    let cfg: SweeperConfig = if text.trim().is_empty() {
        SweeperConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            SweepError::Config {
                file: file.to_path_buf(),
                line,
                col,
                message: e.to_string(),
            }
        })?
    };
    let mut targets = Vec::new();
    for t in cfg.sweep_targets.unwrap_or_default() {
        if t.interval.value < 0 {
            return Err(cfg_err(
                file,
                t.interval.referenced,
                format!("interval must be ≥ 0 ms, got {}", t.interval.value),
            ));
        }
        targets.push((
            t.file_extention.unwrap_or_default(),
            Duration::from_millis(t.interval.value as u64),
        ));
    }
    let ignores = cfg
        .ignore_microservices
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            let mut ends = i.file_extention.unwrap_or_default();
            ends.extend(i.file_name.unwrap_or_default());
            (i.microservice.unwrap_or_default(), ends)
        })
        .collect();
    let schedule = match cfg.sweep_settings.unwrap_or_default().into_iter().next() {
        None => None,
        Some(s) => Some(match s.sweep_start_type.value.as_str() {
            "interval" => {
                let iv = s.sweep_check_interval.ok_or_else(|| {
                    cfg_err(
                        file,
                        s.sweep_start_type.referenced,
                        "sweepStartType interval needs sweepCheckInterval (ms)".into(),
                    )
                })?;
                if iv.value <= 0 {
                    return Err(cfg_err(
                        file,
                        iv.referenced,
                        format!("sweepCheckInterval must be > 0 ms, got {}", iv.value),
                    ));
                }
                Schedule::Every(Duration::from_millis(iv.value as u64))
            }
            "alarm" => {
                let a = s.sweep_check_alarm.ok_or_else(|| {
                    cfg_err(
                        file,
                        s.sweep_start_type.referenced,
                        "sweepStartType alarm needs sweepCheckAlarm (HH:MM:SS)".into(),
                    )
                })?;
                let (h, m, sec) = parse_hms(&a.value).ok_or_else(|| {
                    cfg_err(
                        file,
                        a.referenced,
                        format!("sweepCheckAlarm `{}` is not HH:MM:SS", a.value),
                    )
                })?;
                Schedule::DailyAt(h, m, sec)
            }
            other => {
                return Err(cfg_err(
                    file,
                    s.sweep_start_type.referenced,
                    format!("invalid sweepStartType `{other}` (expected `interval` or `alarm`)"),
                ));
            }
        }),
    };
    Ok(Rules {
        targets,
        ignores,
        schedule,
    })
}

pub fn load(file: &Path) -> Result<Rules, SweepError> {
    let text = std::fs::read_to_string(file).map_err(|source| SweepError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&text, file)
}

fn parse_hms(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
    (it.next().is_none() && h < 24 && m < 60 && sec < 60).then_some((h, m, sec))
}

/// Decision for one file (pure): `Some(reason)` to delete it.
pub fn should_delete(rules: &Rules, path: &str, age: Duration) -> bool {
    let Some((_, max_age)) = rules
        .targets
        .iter()
        .find(|(exts, _)| exts.iter().any(|e| path.ends_with(e.as_str())))
    else {
        return false;
    };
    if age < *max_age {
        return false;
    }
    let ignored = rules.ignores.iter().any(|(ms, ends)| {
        path.contains(ms.as_str()) && ends.iter().any(|e| path.ends_with(e.as_str()))
    });
    !ignored
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub deleted: Vec<PathBuf>,
    pub kept: usize,
    pub errors: Vec<String>,
}

/// Directories directly under the data directory that hold AION's own state and are never
/// swept: the broker's database (`rabbitmq/`, the rabbitmq Deployment's hostPath on the master)
/// and the replicator's SQLite file (`aion-kanban/`, `AION_KANBAN_DB`). Upstream's sweeper
/// matched extensions anywhere under Data; a rule for `db` or `idx` there would have deleted
/// them.
pub const PROTECTED_DIRS: [&str; 2] = ["rabbitmq", "aion-kanban"];

/// Sweep `data_dir` once. With `dry_run`, nothing is removed and `deleted` lists what would be.
pub fn sweep(
    data_dir: &Path,
    rules: &Rules,
    now: SystemTime,
    dry_run: bool,
) -> Result<SweepReport, SweepError> {
    let root = data_dir
        .canonicalize()
        .map_err(|source| SweepError::DataDir {
            dir: data_dir.to_path_buf(),
            source,
        })?;
    let mut report = SweepReport::default();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                report.errors.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // lstat: never follow symlinks
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let own_state = dir == root
                    && path
                        .file_name()
                        .is_some_and(|n| PROTECTED_DIRS.iter().any(|p| n == *p));
                if !own_state {
                    stack.push(path);
                }
                continue;
            }
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !should_delete(rules, &path.to_string_lossy(), age) {
                report.kept += 1;
                continue;
            }
            // Re-check containment right before acting (a directory may have been swapped
            // for a symlink since we listed it).
            let inside = path
                .parent()
                .and_then(|p| p.canonicalize().ok())
                .is_some_and(|p| p.starts_with(&root));
            if !inside {
                report.errors.push(format!(
                    "{}: left alone, not inside {}",
                    path.display(),
                    root.display()
                ));
                continue;
            }
            if dry_run {
                report.deleted.push(path);
            } else {
                match std::fs::remove_file(&path) {
                    Ok(()) => report.deleted.push(path),
                    Err(e) => report.errors.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
    report.deleted.sort();
    Ok(report)
}

/// Time until the next run of `schedule` from local time `now`.
pub fn next_delay(schedule: Schedule, now: chrono::DateTime<chrono::Local>) -> Duration {
    match schedule {
        Schedule::Every(d) => d,
        Schedule::DailyAt(h, m, s) => {
            use chrono::{Days, TimeZone};
            let today = now
                .date_naive()
                .and_hms_opt(h, m, s)
                .expect("validated HH:MM:SS");
            let mut at = chrono::Local
                .from_local_datetime(&today)
                .earliest()
                .unwrap_or(now);
            if at <= now {
                let tomorrow = today.checked_add_days(Days::new(1)).unwrap_or(today);
                at = chrono::Local
                    .from_local_datetime(&tomorrow)
                    .earliest()
                    .unwrap_or(now);
            }
            (at - now).to_std().unwrap_or(Duration::from_secs(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../testdata/data-sweeper-kube-sample.yml");

    #[test]
    fn parses_upstream_samples() {
        let r = parse(SAMPLE, Path::new("sample.yml")).unwrap();
        assert_eq!(r.targets.len(), 3);
        assert_eq!(
            r.targets[0],
            (
                vec!["jpg".to_string(), "png".to_string()],
                Duration::from_millis(600000)
            )
        );
        assert_eq!(r.schedule, Some(Schedule::DailyAt(0, 0, 0)));
        assert_eq!(r.ignores[0].0, "check-dongle-connection");
        let ansible = include_str!("../testdata/aion-ansible-unification-data-sweeper.yml");
        let r = parse(ansible, Path::new("a.yml")).unwrap();
        assert_eq!(r.schedule, None);
        assert_eq!(r.ignores[0].0, "", "null microservice matches every path");
    }

    #[test]
    fn errors_name_file_line_column() {
        let bad = "sweepTargets:\n  - name: x\n    interval: -5\n";
        let e = parse(bad, Path::new("ds.yml")).unwrap_err().to_string();
        assert!(e.starts_with("ds.yml:3:15: interval must be"), "{e}");
        let bad = "sweepSettings:\n  - sweepStartType: weekly\n";
        let e = parse(bad, Path::new("ds.yml")).unwrap_err().to_string();
        assert!(e.starts_with("ds.yml:2:21: invalid sweepStartType"), "{e}");
        let e = parse("sweepTargets: [ {interval: [1]} ]", Path::new("ds.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ds.yml:1:"), "{e}");
        let e = parse(
            "sweepSettings: [{sweepStartType: alarm, sweepCheckAlarm: '25:00:00'}]",
            Path::new("f"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not HH:MM:SS"), "{e}");
    }

    #[test]
    fn delete_rules() {
        let r = parse(SAMPLE, Path::new("s")).unwrap();
        let old = Duration::from_secs(601);
        assert!(should_delete(&r, "/d/a_1/x.jpg", old));
        assert!(!should_delete(&r, "/d/a_1/x.jpg", Duration::from_secs(10)));
        assert!(!should_delete(&r, "/d/a_1/x.bin", old), "no target → keep");
        assert!(
            should_delete(&r, "/d/a_1/xjpg", old),
            "suffix without dot, like upstream"
        );
        assert!(
            !should_delete(&r, "/d/check-dongle-connection_1/x.jpg", old),
            "ignored"
        );
        assert!(
            should_delete(&r, "/d/check-dongle-connection_1/x.txt", old),
            "ignore rule is per-ending"
        );
    }

    #[test]
    fn sweeps_inside_only_and_dry_run() {
        let rules = parse(
            "sweepTargets: [{fileExtention: [txt], interval: 0}]",
            Path::new("f"),
        )
        .unwrap();
        let top = tempfile::tempdir().unwrap();
        let data = top.path().join("Data");
        let outside = top.path().join("outside");
        std::fs::create_dir_all(data.join("a_1/deep")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(data.join("a_1/x.txt"), "x").unwrap();
        std::fs::write(data.join("a_1/deep/y.txt"), "y").unwrap();
        std::fs::write(data.join("a_1/keep.bin"), "k").unwrap();
        std::fs::write(outside.join("z.txt"), "z").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("z.txt"), data.join("link.txt")).unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);

        let dry = sweep(&data, &rules, later, true).unwrap();
        assert_eq!(dry.deleted.len(), 3, "{dry:?}");
        assert!(data.join("a_1/x.txt").exists());

        let done = sweep(&data, &rules, later, false).unwrap();
        assert_eq!(done.deleted.len(), 3);
        assert!(!data.join("a_1/x.txt").exists());
        assert!(!data.join("a_1/deep/y.txt").exists());
        assert!(data.join("a_1/keep.bin").exists());
        assert!(data.join("a_1/deep").is_dir(), "directories stay");
        assert!(
            outside.join("z.txt").exists(),
            "symlink target outside untouched"
        );
        assert!(
            !data.join("link.txt").exists(),
            "the link itself is removed"
        );
        assert!(data.join("link-dir").exists(), "symlinked dir not followed");
    }

    #[test]
    fn never_sweeps_the_broker_or_the_replicator_state() {
        let rules = parse(
            "sweepTargets: [{fileExtention: [db, idx, txt], interval: 0}]",
            Path::new("f"),
        )
        .unwrap();
        let top = tempfile::tempdir().unwrap();
        let data = top.path().join("Data");
        for d in ["rabbitmq/mnesia/q", "aion-kanban", "svc_1/rabbitmq"] {
            std::fs::create_dir_all(data.join(d)).unwrap();
        }
        std::fs::write(data.join("rabbitmq/mnesia/q/0.idx"), "q").unwrap();
        std::fs::write(data.join("aion-kanban/kanban.db"), "db").unwrap();
        // Only the top-level directories are AION's: a service's own `rabbitmq/` is swept.
        std::fs::write(data.join("svc_1/rabbitmq/old.txt"), "t").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        let done = sweep(&data, &rules, later, false).unwrap();
        assert_eq!(
            done.deleted,
            [data.canonicalize().unwrap().join("svc_1/rabbitmq/old.txt")]
        );
        assert!(data.join("rabbitmq/mnesia/q/0.idx").exists());
        assert!(data.join("aion-kanban/kanban.db").exists());
    }

    #[test]
    fn alarm_delay() {
        use chrono::TimeZone;
        let now = chrono::Local
            .with_ymd_and_hms(2026, 1, 1, 23, 0, 0)
            .unwrap();
        let d = next_delay(Schedule::DailyAt(0, 0, 0), now);
        assert_eq!(d, Duration::from_secs(3600));
        assert_eq!(
            next_delay(Schedule::Every(Duration::from_secs(7)), now),
            Duration::from_secs(7)
        );
    }
}
