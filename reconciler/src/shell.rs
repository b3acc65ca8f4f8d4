//! Shell text shared by every script the reconciler sends to a host: quoting, the path
//! expression under the scratch root, the prelude every script starts with, and the atomic
//! file write. Pure string building; a leaf module (it imports nothing of this crate).
//!
//! Every path is prefixed with `$R` (`$AION_ROOT`, empty on real hosts) so
//! [`crate::host::local::LocalHost`] can run the same scripts under a scratch root; `~/` is the
//! SSH user's home (`$UH`, looked up with `getent` by [`prelude`]).

use base64::Engine as _;

/// Quote `s` for a POSIX shell (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Shell expression for `path` on the host: `~/x` → the user's home, everything under `$R`.
pub fn path_expr(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$R$UH\"{}", sh_quote(&format!("/{rest}"))),
        None if path == "~" => "\"$R$UH\"".to_string(),
        None => format!("\"$R\"{}", sh_quote(path)),
    }
}

/// The first lines of every script: the scratch root, the user and their home.
pub fn prelude(user: &str) -> String {
    format!(
        "R=\"${{AION_ROOT:-}}\"\nU={}\nUH=$(getent passwd \"$U\" | cut -d: -f6)\n",
        sh_quote(user)
    )
}

/// Script that writes base64 `content` atomically (temp file in the same directory + rename).
pub fn write_file_script(path: &str, content: &[u8], mode: u32, chown: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    let mut wrapped = String::new();
    for chunk in b64.as_bytes().chunks(76) {
        wrapped.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        wrapped.push('\n');
    }
    format!(
        "p={p}\nd=$(dirname \"$p\")\nmkdir -p \"$d\"\nt=$(mktemp \"$d/.aion-tmp.XXXXXX\")\n\
         if base64 -d > \"$t\" <<'AION_EOF'\n{wrapped}AION_EOF\n\
         then chmod {mode:o} \"$t\" && chown {chown} \"$t\" && mv -f \"$t\" \"$p\"; else rm -f \"$t\"; exit 1; fi\n",
        p = path_expr(path),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_and_rooted() {
        assert_eq!(path_expr("/etc/x y"), "\"$R\"'/etc/x y'");
        assert_eq!(path_expr("~/a'b"), "\"$R$UH\"'/a'\\''b'");
    }
}
