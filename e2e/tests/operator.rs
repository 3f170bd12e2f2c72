//! The operator as the chart deploys it (two replicas), against the real API server.

use std::time::Duration;

use breakwater_e2e::{TestCluster, operator::Operator};

#[tokio::test]
async fn smoke() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    std::fs::write("/tmp/hold-kubeconfig", cluster.kubeconfig().display().to_string())?;
    let op = Operator::install(cluster, "bw", "breakwater-system", &["operator.logLevel=debug"]).await;
    eprintln!("{:?}", op.as_ref().err());
    while std::path::Path::new("/tmp/hold").exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
