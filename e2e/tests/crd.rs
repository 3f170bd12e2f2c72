//! The CommunicationPolicy CRD as the API server serves it, installed by `helm install`: its
//! OpenAPI document carries the Rust doc comments, every example in `examples/` is accepted and
//! every file in `examples/invalid/` is rejected by the API server itself — schema and CEL rules —
//! with the field path its `# expect:` header names.

use std::{path::PathBuf, time::Duration};

use breakwater_e2e::{Helm, TestCluster, bins::workspace_root, helm::chart_dir, objects, wait};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, api::DynamicObject};
use serde_json::Value;
use tokio::sync::OnceCell;

/// Installs the chart once for every test of this binary; the CRD is what they test.
async fn cluster_with_crd() -> anyhow::Result<&'static TestCluster> {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let cluster = TestCluster::shared().await?;
    INSTALLED
        .get_or_try_init(|| async {
            let helm = Helm::for_cluster(cluster)?;
            let chart = chart_dir().display().to_string();
            helm.run(["install", "bw", &chart, "--namespace", "breakwater-system", "--create-namespace"])
                .await?;
            let crds = Api::<CustomResourceDefinition>::all(cluster.client()?);
            wait::until_ok("the CRD to be Established", Duration::from_secs(60), || {
                let crds = crds.clone();
                async move {
                    let crd =
                        crds.get("communicationpolicies.breakwater.dev").await.map_err(|e| e.to_string())?;
                    let ok = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if ok { Ok(()) } else { Err("not established".to_owned()) }
                }
            })
            .await?;
            anyhow::Ok(())
        })
        .await?;
    Ok(cluster)
}

fn yaml_files(dir: PathBuf) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no YAML files in {}", dir.display());
    Ok(files)
}

/// Creates `object` the way `kubectl apply` creates a new object: a POST with strict field
/// validation, so unknown fields are errors rather than silently pruned.
async fn apply(client: &Client, mut object: Value, namespace: &str) -> kube::Result<DynamicObject> {
    object["metadata"]["namespace"] = Value::from(namespace);
    let url = format!(
        "/apis/breakwater.dev/v1alpha1/namespaces/{namespace}/communicationpolicies?fieldValidation=Strict"
    );
    let body = serde_json::to_vec(&object).map_err(kube::Error::SerdeError)?;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request(request).await
}

/// Whether everything in `written` is in `stored` (the API server may add defaults, never drop).
fn contains(stored: &Value, written: &Value) -> bool {
    match (stored, written) {
        (Value::Object(s), Value::Object(w)) => {
            w.iter().all(|(k, v)| s.get(k).is_some_and(|sv| contains(sv, v)))
        }
        (Value::Array(s), Value::Array(w)) => {
            s.len() == w.len() && s.iter().zip(w).all(|(s, w)| contains(s, w))
        }
        (Value::Number(s), Value::Number(w)) => s.as_f64() == w.as_f64(),
        (s, w) => s == w,
    }
}

#[tokio::test]
async fn every_valid_example_is_accepted_as_written() -> anyhow::Result<()> {
    let cluster = cluster_with_crd().await?;
    let ns = cluster.namespace("examples").await?;
    let client = cluster.client()?;
    let mut applied = 0;
    for file in yaml_files(workspace_root().join("examples"))? {
        for doc in objects::manifests(&std::fs::read_to_string(&file)?)? {
            let stored = apply(&client, doc.clone(), &ns)
                .await
                .map_err(|e| anyhow::anyhow!("{} was rejected: {e}", file.display()))?;
            // Nothing pruned or rewritten (defaults may be added): the spec written is stored.
            let (stored, written) = (&stored.data["spec"], &doc["spec"]);
            assert!(contains(stored, written), "{}: wrote {written}, stored {stored}", file.display());
            applied += 1;
        }
    }
    assert!(applied >= 4, "applied {applied} policies");
    Ok(())
}

/// Invalid examples the API server is known to accept, with why. Each entry is asserted to still be
/// accepted, so fixing the CRD makes this test fail until the entry is removed.
const KNOWN_GAPS: &[(&str, &str)] = &[];

#[tokio::test]
async fn every_invalid_example_is_rejected_by_the_api_server_at_its_field() -> anyhow::Result<()> {
    let cluster = cluster_with_crd().await?;
    let ns = cluster.namespace("invalid").await?;
    let client = cluster.client()?;
    let mut wrong = Vec::new();
    let files = yaml_files(workspace_root().join("examples").join("invalid"))?;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let expect =
            text.lines().find_map(|l| l.strip_prefix("# expect:")).map(str::trim).ok_or_else(|| {
                anyhow::anyhow!("{} has no `# expect: <field path>` header", file.display())
            })?;
        let doc = objects::manifests(&text)?.into_iter().next().expect("one document");
        let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let gap = KNOWN_GAPS.iter().find(|(name, _)| *name == file_name);
        match (apply(&client, doc, &ns).await, gap) {
            (Ok(_), Some((_, why))) => eprintln!("known gap, accepted: {file_name}: {why}"),
            (Err(e), Some(_)) => {
                wrong.push(format!("{file_name} is now rejected ({e}): remove it from KNOWN_GAPS"))
            }
            (Ok(_), None) => wrong.push(format!("{}: accepted", file.display())),
            (Err(kube::Error::Api(status)), None) if status.code == 422 || status.code == 400 => {
                if !status.message.contains(expect) {
                    wrong.push(format!(
                        "{}: message does not name {expect}: {}",
                        file.display(),
                        status.message
                    ));
                }
            }
            (Err(e), None) => wrong.push(format!("{}: unexpected error {e}", file.display())),
        }
    }
    assert!(wrong.is_empty(), "{} of {} invalid examples:\n{}", wrong.len(), files.len(), wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn openapi_document_carries_every_description_of_the_crd() -> anyhow::Result<()> {
    let cluster = cluster_with_crd().await?;
    let client = cluster.client()?;
    let request = http::Request::get("/openapi/v3/apis/breakwater.dev/v1alpha1").body(Vec::new())?;
    let document: Value = client.request(request).await?;
    let served = &document["components"]["schemas"]["dev.breakwater.v1alpha1.CommunicationPolicy"];
    assert!(served.is_object(), "CommunicationPolicy in the OpenAPI v3 document");

    let crd = serde_json::to_value(breakwater_crds::crd())?;
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut expected = Vec::new();
    descriptions(schema, String::new(), &mut expected);
    assert!(expected.len() > 50, "the CRD documents its fields ({} descriptions)", expected.len());
    let mut missing = Vec::new();
    for (path, description) in &expected {
        let at = path.split('.').filter(|s| !s.is_empty()).try_fold(served, |node, step| match step {
            "[]" => node.get("items"),
            field => node.get("properties").and_then(|p| p.get(field)),
        });
        let got = at.and_then(|n| n.get("description")).and_then(Value::as_str);
        if got != Some(description.as_str()) {
            missing.push(format!("{path}: {got:?}"));
        }
    }
    assert!(missing.is_empty(), "descriptions not served as written:\n{}", missing.join("\n"));
    let spec = served["properties"]["spec"]["properties"]["retries"]["properties"]["budget"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(!spec.is_empty(), "kubectl explain communicationpolicy.spec.retries.budget has text");
    Ok(())
}

/// Every `(path, description)` in a schema, paths like `.spec.retries.[].name`.
fn descriptions(node: &Value, path: String, out: &mut Vec<(String, String)>) {
    if let Some(d) = node.get("description").and_then(Value::as_str)
        && !path.is_empty()
    {
        out.push((path.clone(), d.to_owned()));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            if path.is_empty() && name == "metadata" {
                continue; // replaced by the API server's ObjectMeta
            }
            descriptions(child, format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        descriptions(items, format!("{path}.[]"), out);
    }
}
