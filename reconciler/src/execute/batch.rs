//! The batch protocol: consecutive script steps in one round trip, each between markers on
//! stdout and stderr, so each step's output and exit status come back apart.

use std::collections::BTreeMap;

use super::outcome::{StepFailure, StepResult};
use crate::change::{Action, Change};
use crate::host::{Host, HostError};
use crate::shell::prelude;

const MARK: &str = "@@AION-STEP";

/// Several script steps in one round trip: each in a `set -e` subshell between markers on
/// stdout and stderr; the first failing step ends the script. Returns one result per step
/// that ran (fewer than `batch` when the transport broke or a step failed).
/// Err: the transport broke (the script's fate on the host is unknown).
pub(super) async fn run_batch<H: Host>(
    user: &str,
    batch: &[&Change],
    host: &H,
) -> Result<Vec<StepResult>, HostError> {
    let mut script = prelude(user);
    for (n, c) in batch.iter().enumerate() {
        let Action::Script { script: body, .. } = &c.action else {
            continue;
        };
        script.push_str(&format!(
            "printf '\\n{MARK} {n}\\n'; printf '\\n{MARK} {n}\\n' >&2\n\
             ( set -e\n{body}\n)\nrc=$?\n\
             printf '\\n{MARK} {n} end %s\\n' \"$rc\"; printf '\\n{MARK} {n} end\\n' >&2\n\
             [ \"$rc\" -eq 0 ] || exit \"$rc\"\n"
        ));
    }
    let out = host.run(&script).await?;
    let stdout = split_marked(&out.stdout_str());
    let stderr = split_marked(&String::from_utf8_lossy(&out.stderr));
    let mut results = Vec::new();
    for n in 0..batch.len() {
        let Some((text, status)) = stdout.get(&n) else {
            break;
        };
        let mut text = text.clone();
        if let Some((err, _)) = stderr.get(&n)
            && !err.trim().is_empty()
        {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(err);
        }
        match status {
            Some(0) => results.push(Ok(text)),
            Some(rc) => {
                results.push(Err(StepFailure::with_output(
                    format!("exit status {rc}"),
                    text,
                )));
                break;
            }
            None => {
                results.push(Err(StepFailure::with_output(
                    format!("the step did not finish (exit status {})", out.status),
                    text,
                )));
                break;
            }
        }
    }
    Ok(results)
}

/// Split marked output into step number → (text, exit status if the end marker was seen).
pub(super) fn split_marked(text: &str) -> BTreeMap<usize, (String, Option<i32>)> {
    let mut map: BTreeMap<usize, (String, Option<i32>)> = BTreeMap::new();
    let mut current: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if let Some(rest) = bare.strip_prefix(MARK) {
            let mut words = rest.split_whitespace();
            if let Some(n) = words.next().and_then(|w| w.parse::<usize>().ok()) {
                if words.next() == Some("end") {
                    let status = words.next().and_then(|w| w.parse().ok());
                    if let Some(e) = map.get_mut(&n) {
                        e.1 = status;
                        // the marker's leading newline is not the step's output
                        if e.0.ends_with('\n') {
                            e.0.pop();
                        }
                    }
                    current = None;
                } else {
                    map.insert(n, (String::new(), None));
                    current = Some(n);
                }
                continue;
            }
        }
        if let Some(n) = current
            && let Some(e) = map.get_mut(&n)
        {
            e.0.push_str(line);
        }
    }
    map
}
