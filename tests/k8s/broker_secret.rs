//! The broker password on the real kube-apiserver: `apply` generates it once into the Secret
//! `aion-broker` of every AION namespace; a second `plan` keeps it (no changes); a namespace
//! whose Secret went missing gets the same password back; neither the plan's text nor its JSON
//! nor any diff ever shows it.

use aion_integration_tests::k8s::{self, assert_hidden};
use aion_reconcile::cluster::{self, ClusterApplyOptions, ObjectAction};
use aion_reconcile::render::{self, broker};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};

/// The Secret's keys, decoded.
async fn secret_data(client: &kube::Client, ns: &str) -> (String, String) {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(broker::SECRET_NAME)
        .await
        .unwrap_or_else(|e| panic!("Secret {ns}/aion-broker: {e}"));
    let data = s.data.unwrap_or_default();
    let text = |k: &str| {
        String::from_utf8(
            data.get(k)
                .unwrap_or_else(|| panic!("{ns}/aion-broker has no key {k}"))
                .0
                .clone(),
        )
        .unwrap()
    };
    (
        text(broker::SECRET_PASSWORD_KEY),
        text(broker::SECRET_USER_FILE),
    )
}

#[tokio::test]
async fn broker_password_is_generated_once_kept_and_never_shown() {
    let Some(tc) = k8s::require() else { return };
    aion_reconcile::kubeclient::install_crypto_provider();
    let client = tc.client().await;
    let (ns_m, ns_w) = (tc.fresh_namespace().await, tc.fresh_namespace().await);
    let inv = k8s::cluster_inventory(&ns_m, &ns_m, &ns_w, "");
    let m = render::render(&inv, &[]).unwrap();
    let opts = ClusterApplyOptions::default();

    // 1. First plan: a Secret to create in each namespace, without data (made at apply).
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    for ns in [&ns_m, &ns_w] {
        let key = format!("Secret/{ns}/aion-broker");
        let c = plan
            .changes
            .iter()
            .find(|c| c.key.to_string() == key)
            .unwrap_or_else(|| panic!("no {key} in\n{}", plan.render_text(false, true)));
        assert_eq!(c.action, ObjectAction::Create, "{key}");
    }
    let first_texts = [
        plan.render_text(false, true),
        serde_json::to_string(&plan).unwrap(),
    ];
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();

    // 2. One password, in both namespaces, with the broker's user file beside it.
    let (password, user_file) = secret_data(&client, &ns_m).await;
    assert_eq!(password.len(), 32, "{password:?}");
    assert!(password.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(user_file, broker::user_json(&password));
    assert_eq!(
        secret_data(&client, &ns_w).await,
        (password.clone(), user_file.clone())
    );
    for t in &first_texts {
        assert_hidden(t, &password, "the first plan");
    }

    // 3. A second plan keeps it: nothing to do.
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));

    // 4. The worker namespace's Secret goes missing: planned as a create (its diff masked),
    //    applied with the installation's password, not a new one.
    Api::<Secret>::namespaced(client.clone(), &ns_w)
        .delete(broker::SECRET_NAME, &DeleteParams::default())
        .await
        .unwrap();
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    let changed = k8s::changed(&plan);
    assert_eq!(changed, [format!("+ Secret/{ns_w}/aion-broker")]);
    let text = plan.render_text(false, true);
    assert!(text.contains("(hidden: "), "{text}");
    assert_hidden(&text, &password, "the plan after a Secret went missing");
    assert_hidden(
        &serde_json::to_string(&plan).unwrap(),
        &password,
        "plan -o json",
    );
    cluster::apply_plan(&client, &plan, &opts).await.unwrap();
    assert_eq!(secret_data(&client, &ns_w).await.0, password);
    let plan = cluster::plan(&client, &m, &inv).await.unwrap();
    assert!(!plan.has_changes(), "{}", plan.render_text(false, true));

    // 5. `down` removes them with everything else of the inventory.
    cluster::down(&client, &inv.name, &opts).await.unwrap();
    for ns in [&ns_m, &ns_w] {
        let left = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(broker::SECRET_NAME)
            .await
            .unwrap();
        assert!(
            left.is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
            "{ns}"
        );
        tc.delete_namespace(ns).await;
    }
}
