//! What the kubelet does to a container's `env` and `args` before the process starts, for tests
//! that run a rendered container's command here: `valueFrom` resolved (the pod's namespace; the
//! broker Secret's password, given by the test) and `$(VAR)` references expanded.

use serde_json::Value;

/// Kubernetes' dependent-variable expansion: `$(NAME)` becomes the value of `NAME` when it is
/// defined in `defined` (earlier variables of the same container), otherwise it stays as
/// written; `$$` is a literal `$`.
pub fn expand(text: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = defined.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's environment as the kubelet gives it: in order, `value`s expanded against the
/// variables before them, `fieldRef: metadata.namespace` as `namespace`, and any `secretKeyRef`
/// as `secret(name, key)`.
///
/// # Panics
/// On another kind of `valueFrom` (a test that meets one should learn to resolve it).
pub fn resolve(
    container: &Value,
    namespace: &str,
    secret: impl Fn(&str, &str) -> String,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            secret(
                r["name"].as_str().expect("secret name"),
                r["key"].as_str().expect("secret key"),
            )
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace.to_owned(),
                other => panic!("env {name}: unexpected valueFrom {other:?}"),
            }
        };
        env.push((name, value));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_the_kubelet() {
        let defined = vec![("P".to_owned(), "pw".to_owned()), ("Q".into(), "q".into())];
        assert_eq!(expand("amqp://u:$(P)@h/$(Q)", &defined), "amqp://u:pw@h/q");
        assert_eq!(
            expand("$(MISSING) $$(P) $ $(P", &defined),
            "$(MISSING) $(P) $ $(P"
        );
    }

    #[test]
    fn resolves_secrets_fields_and_references_in_order() {
        let c = serde_json::json!({"env": [
            {"name": "A", "value": "$(P)"},
            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "URL", "value": "x:$(P)@$(NS)"},
        ]});
        let env = resolve(&c, "ns-1", |n, k| format!("{n}/{k}"));
        assert_eq!(
            env,
            [
                ("A".to_owned(), "$(P)".to_owned()),
                ("P".into(), "s/k".into()),
                ("NS".into(), "ns-1".into()),
                ("URL".into(), "x:s/k@ns-1".into()),
            ]
        );
    }
}
