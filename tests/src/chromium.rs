//! Headless Chromium for browser tests of the live page: load a URL, let its scripts run, dump
//! the DOM or take a screenshot.
//!
//! [`require`] finds the browser (`AION_CHROMIUM`, else `chromium` on `PATH`). Without one the
//! test prints `SKIPPED: …`; under `AION_REQUIRE_CHROMIUM=1` or `AION_REQUIRE_TESTBED=1` (CI) it
//! fails instead. Each call runs a fresh browser with its own profile directory (given by the
//! test, removed with it) and is killed after [`TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const REQUIRE_ENV: &str = "AION_REQUIRE_CHROMIUM";
/// Longest one browser run may take.
pub const TIMEOUT: Duration = Duration::from_secs(90);

fn required() -> bool {
    ["AION_REQUIRE_CHROMIUM", "AION_REQUIRE_TESTBED"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|x| x == "1"))
}

/// The browser, or `None` after `SKIPPED: …`.
///
/// # Panics
/// When there is none and it is required.
pub fn require() -> Option<PathBuf> {
    let bin = std::env::var_os("AION_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(bin);
    }
    let msg = format!(
        "headless Chromium not found ({}; scripts/install-deps installs it, AION_CHROMIUM names another)",
        bin.display()
    );
    if required() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn run(bin: &Path, profile: &Path, args: &[String]) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(TIMEOUT.as_secs().to_string())
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {}: {}\n{}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The DOM of `url` after its scripts ran for `budget` of virtual time (network requests
/// complete in real time inside it: a page polling an API gets its answers).
pub fn dump_dom(bin: &Path, profile: &Path, url: &str, budget: Duration) -> Result<String, String> {
    run(
        bin,
        profile,
        &[
            format!("--virtual-time-budget={}", budget.as_millis()),
            "--dump-dom".into(),
            url.into(),
        ],
    )
}

/// A PNG of `url` (after `budget`, as [`dump_dom`]) at `png`.
pub fn screenshot(
    bin: &Path,
    profile: &Path,
    url: &str,
    budget: Duration,
    png: &Path,
) -> Result<(), String> {
    run(
        bin,
        profile,
        &[
            format!("--virtual-time-budget={}", budget.as_millis()),
            "--window-size=1400,1800".into(),
            format!("--screenshot={}", png.display()),
            url.into(),
        ],
    )?;
    match std::fs::metadata(png) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(format!("no screenshot at {}", png.display())),
    }
}

/// The value of attribute `attr` in the first start tag of `dom` that contains `marker`
/// (e.g. `data-edge="e0"`).
pub fn attr_of(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    let len = tag[v..].find('"')?;
    Some(tag[v..v + len].to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn attributes_of_a_tag() {
        let dom = r#"<tr data-instance="a-001" data-state="running"><td>a</td></tr><text class="rate" data-edge="e0" data-rate="0.5">0.50/s</text>"#;
        assert_eq!(
            super::attr_of(dom, "data-instance=\"a-001\"", "data-state").as_deref(),
            Some("running")
        );
        assert_eq!(
            super::attr_of(dom, "data-edge=\"e0\"", "data-rate").as_deref(),
            Some("0.5")
        );
        assert_eq!(super::attr_of(dom, "data-edge=\"e1\"", "data-rate"), None);
    }
}
