//! Image references in Docker's normalised form.

/// Docker's normalised form of an image reference, as containerd's CRI names images:
/// `redis:7` → `docker.io/library/redis:7`, `latonaio/x` → `docker.io/latonaio/x:latest`,
/// `aion.local/x:1` unchanged. Digest references keep their digest (and no default tag).
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let mut out = match rest {
        Some(_) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let last = out.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && digest.is_none() {
        out.push_str(":latest");
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}
