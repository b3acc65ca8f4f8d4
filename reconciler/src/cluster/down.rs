//! Tearing an inventory down: everything it owns, in reverse rank order.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};

use super::apply::delete_key;
use super::error::ClusterError;
use super::kinds::list_owned;
use super::options::{ClusterApplyOptions, emit};
use crate::manifest::{ObjectKey, kind_rank};

/// Delete everything this inventory owns (ownership labels), in reverse apply order.
/// Namespaces `default` and `kube-*` are never deleted. Returns the deleted objects.
pub async fn down(
    client: &kube::Client,
    inventory: &str,
    opts: &ClusterApplyOptions,
) -> Result<Vec<ObjectKey>, ClusterError> {
    let mut owned: Vec<ObjectKey> = list_owned(client, inventory)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !(k.kind == "Namespace" && (k.name == "default" || k.name.starts_with("kube-")))
        })
        .collect();
    owned.sort_by(|a, b| (kind_rank(&b.kind), a).cmp(&(kind_rank(&a.kind), b)));
    let mut by_rank: BTreeMap<std::cmp::Reverse<u8>, Vec<ObjectKey>> = BTreeMap::new();
    for k in owned {
        by_rank
            .entry(std::cmp::Reverse(kind_rank(&k.kind)))
            .or_default()
            .push(k);
    }
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    for (_, batch) in by_rank {
        let results: Vec<_> = stream::iter(batch.into_iter().map(|k| async move {
            let existed = delete_key(client, &k, None).await?;
            Ok::<_, ClusterError>((k, existed))
        }))
        .buffered(opts.concurrency.max(1))
        .collect()
        .await;
        for r in results {
            match r {
                Ok((k, existed)) => {
                    emit(opts, &k, if existed { "deleted" } else { "already gone" });
                    deleted.push(k);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    if failures.is_empty() {
        Ok(deleted)
    } else {
        Err(ClusterError::Failed {
            count: failures.len(),
            list: failures.join("\n"),
        })
    }
}
