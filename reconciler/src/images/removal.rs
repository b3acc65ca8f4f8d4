//! Old versions: what a version up leaves behind, and the script that removes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::facts::ContainerdFacts;
use crate::shell::sh_quote;

use super::sources::SourceImage;

/// An old version of an image a host no longer needs: `- image <ref>` in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRemoval {
    /// Normalised reference (the name containerd has).
    pub reference: String,
    /// The manifest digest it names on the host (removed only while it still does).
    pub digest: String,
    /// The other names of the same image (the CRI's `sha256:<id>` and `<repo>@sha256:…`
    /// names), removed with it: while any name is left, containerd keeps the content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The tag that named this content before this apply moved it to a rebuilt image (then
    /// `reference` is one of the CRI's names for the old content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retagged: Option<String>,
}

/// The repository of a tag reference (`aion.local/app:2` → `aion.local/app`); None for the
/// names that are not tags (`sha256:<id>`, `<repo>@sha256:…`): those are aliases.
pub fn repository(reference: &str) -> Option<&str> {
    if reference.contains('@') || reference.starts_with("sha256:") {
        return None;
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => Some(&reference[..slash + i]),
        None => Some(reference),
    }
}

/// The old versions a host can drop: images in its containerd of the same repository as an
/// image it runs (`images`), under another tag and at another digest, beyond the `keep` most
/// recently imported ones (by [`IMPORTED_LABEL`], newest first; unlabelled ones are the oldest,
/// then by reference, highest first). Whether a pod still uses one is checked by `apply` when
/// it removes them, after the new pods are ready ([`not_in_use`]).
pub fn plan_removals(
    images: &[SourceImage],
    have: Option<&ContainerdFacts>,
    keep: u32,
) -> Vec<ImageRemoval> {
    let Some(have) = have else {
        return Vec::new();
    };
    let wanted_refs: BTreeSet<&str> = images.iter().map(|i| i.reference.as_str()).collect();
    let wanted_digests: BTreeSet<&str> = images.iter().map(|i| i.digest.as_str()).collect();
    let repos: BTreeSet<&str> = images
        .iter()
        .filter_map(|i| repository(&i.reference))
        .collect();
    // repository → its old tags (reference, digest, imported at)
    let mut old: BTreeMap<&str, Vec<(&str, &str, u64)>> = BTreeMap::new();
    for (r, d) in &have.images {
        let Some(repo) = repository(r) else { continue };
        if repos.contains(repo)
            && !wanted_refs.contains(r.as_str())
            && !wanted_digests.contains(d.as_str())
        {
            let at = have.imported.get(r).copied().unwrap_or(0);
            old.entry(repo).or_default().push((r, d, at));
        }
    }
    let mut out = orphans(images, have, &repos, &wanted_digests);
    for (_, mut tags) in old {
        tags.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| b.0.cmp(a.0)));
        let (kept, gone) = tags.split_at(tags.len().min(keep as usize));
        for (r, d, _) in gone {
            // The image's other names go with it, unless a kept or wanted tag names it too.
            let shared =
                kept.iter().any(|k| k.1 == *d) || gone.iter().any(|g| g.1 == *d && g.0 < *r);
            let aliases = if shared {
                Vec::new()
            } else {
                have.images
                    .iter()
                    .filter(|(n, nd)| nd == d && repository(n).is_none())
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            out.push(ImageRemoval {
                reference: r.to_string(),
                digest: d.to_string(),
                aliases,
                retagged: None,
            });
        }
    }
    out
}

/// Content a re-tagged image leaves behind: a digest no tag names once this apply imported
/// (a wanted tag moves to the new content with the import), held then only by the names the
/// CRI added (`<repo>@sha256:…`, `sha256:<id>`), and known to be of a repository the host
/// runs (a moving tag or a `<repo>@` name says so). No tag can bring it back for a rollback (a
/// revision's tag now names the new content), so it is not counted against
/// `previousImages`; a pod still running it keeps it ([`not_in_use`]). Removed by those names
/// (a `<repo>@` one first). Content with no such name needs nothing: once no name holds it,
/// containerd collects it.
fn orphans(
    images: &[SourceImage],
    have: &ContainerdFacts,
    repos: &BTreeSet<&str>,
    wanted_digests: &BTreeSet<&str>,
) -> Vec<ImageRemoval> {
    let moving: BTreeMap<&str, &str> = images
        .iter()
        .map(|i| (i.reference.as_str(), i.digest.as_str()))
        .collect();
    // digest → (a tag stays on it, a repository it is known to be of, its alias names, the
    // tag that moves off it)
    type Names<'a> = (bool, bool, Vec<&'a str>, Option<&'a str>);
    let mut by_digest: BTreeMap<&str, Names> = BTreeMap::new();
    for (name, d) in &have.images {
        let e = by_digest.entry(d.as_str()).or_default();
        match repository(name) {
            Some(repo) => {
                if moving.get(name.as_str()).is_some_and(|w| w != d) {
                    e.1 |= repos.contains(repo);
                    e.3 = Some(name.as_str());
                } else {
                    e.0 = true;
                }
            }
            None => {
                if let Some((repo, _)) = name.split_once('@') {
                    e.1 |= repos.contains(repo);
                }
                e.2.push(name.as_str());
            }
        }
    }
    let mut out = Vec::new();
    for (d, (tag_stays, ours, mut names, tag)) in by_digest {
        if tag_stays || !ours || names.is_empty() || wanted_digests.contains(d) {
            continue;
        }
        // `<repo>@sha256:…` first (the plan line names the repository), then `sha256:<id>`.
        names.sort_by_key(|n| !n.contains('@'));
        out.push(ImageRemoval {
            reference: names[0].to_string(),
            digest: d.to_string(),
            aliases: names[1..].iter().map(|n| n.to_string()).collect(),
            retagged: tag.map(str::to_string),
        });
    }
    out
}

/// The removals no pod uses: `in_use` holds what the host's pods name (their images, as
/// normalised references, and their image IDs: digests and `<repo>@sha256:…`). Returns (to
/// remove, still in use).
pub fn not_in_use(
    removals: &[ImageRemoval],
    in_use: &BTreeSet<String>,
) -> (Vec<ImageRemoval>, Vec<ImageRemoval>) {
    removals.iter().cloned().partition(|r| {
        !in_use.contains(&r.reference)
            && !in_use.contains(&r.digest)
            && !r.aliases.iter().any(|a| in_use.contains(a))
    })
}

/// Marker line of [`remove_script`]: an image removed (reference).
pub const REMOVED: &str = "REMOVED";

/// The script that removes `removals` from the host's containerd (`k8s.io`), each only while
/// its reference still names the planned digest (someone may have re-tagged it since the
/// plan), with its aliases, synchronously (`--sync`: the content is gone when it reports).
pub fn remove_script(user: &str, removals: &[ImageRemoval]) -> String {
    let mut s = crate::shell::prelude(user);
    s.push_str("set -e\nhave=$(ctr -n k8s.io images ls | awk 'NR > 1 {print $1 \" \" $3}')\n");
    for r in removals {
        let want = format!("{} {}", r.reference, r.digest);
        let mut names = vec![sh_quote(&r.reference)];
        names.extend(r.aliases.iter().map(|a| sh_quote(a)));
        s.push_str(&format!(
            "if printf '%s\\n' \"$have\" | grep -qxF {w}; then ctr -n k8s.io images rm --sync {n} >&2; printf '{REMOVED}\\t%s\\n' {r}; fi\n",
            w = sh_quote(&want),
            n = names.join(" "),
            r = sh_quote(&r.reference),
        ));
    }
    s
}

/// The references [`remove_script`] reported removed.
pub fn parse_removed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(REMOVED)?.strip_prefix('\t'))
        .map(str::to_string)
        .collect()
}
