//! A namespace per test.

use std::{sync::atomic::Ordering, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
};

use super::{TestCluster, background};
use crate::{Error, Result, wait};

impl TestCluster {
    /// Creates a namespace `<prefix>-<n>` for one test, waits for its `default` ServiceAccount
    /// (Pods are refused without it) and `kube-root-ca.crt` ConfigMap (their token volume
    /// projects it), and deletes it when the returned guard is dropped.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        let client = self.client()?;
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("breakwater.dev/e2e".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(Error::kube(format!("creating namespace {name}")))?;
        let guard = TestNamespace { name: name.clone(), config: self.config.clone() };
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        wait::until(format!("ServiceAccount {name}/default"), Duration::from_secs(60), || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.map(|sa| sa.map(drop)) }
        })
        .await?;
        // What every pod's token volume projects; published by the controller-manager too.
        let configmaps = Api::<ConfigMap>::namespaced(client, &name);
        wait::until(format!("ConfigMap {name}/kube-root-ca.crt"), Duration::from_secs(60), || {
            let configmaps = configmaps.clone();
            async move { configmaps.get_opt("kube-root-ca.crt").await.map(|cm| cm.map(drop)) }
        })
        .await?;
        Ok(guard)
    }
}

/// A namespace for one test, deleted (in the background) when dropped.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    config: Config,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, config) = (self.name.clone(), self.config.clone());
        // Not awaited: the namespace controller and the pod runner finish the job; the reaper
        // removes whatever is left when the binary exits.
        background().spawn(async move {
            if let Ok(client) = Client::try_from(config) {
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
            }
        });
    }
}
