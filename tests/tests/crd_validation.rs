//! The committed CRD on a real API server, and the client-side validator agreeing with it: every
//! example is accepted by both, and every `examples/invalid/` fixture is rejected by both with
//! the message its `# expect:` line names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use streamjob_crds::parse_manifest;
use streamjob_e2e::{api_server, eventually, fresh_namespace, repo_root};

const CRD_NAME: &str = "streamjobs.streamjob.io";

/// Applies `crds/streamjob.yaml` exactly as a user would (`kubectl apply --server-side`).
async fn install_committed_crd(client: &Client) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_root().join("crds/streamjob.yaml"))?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(CRD_NAME, &PatchParams::apply("streamjob-e2e").force(), &Patch::Apply(&crd))
        .await
        .map_err(|e| anyhow::anyhow!("the API server refuses crds/streamjob.yaml: {e}"))?;
    eventually(Duration::from_secs(30), "the CRD to be Established", || async {
        let crd = crds.get(CRD_NAME).await.ok()?;
        let conditions = crd.status?.conditions?;
        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// What the API server says of a manifest sent as `kubectl create --dry-run=server
/// --validate=strict` would: `Ok` or the rejection's message.
async fn server_verdict(client: &Client, namespace: &str, manifest: &str) -> anyhow::Result<Result<(), String>> {
    let value: Value = serde_yaml::from_str(manifest)?;
    let request = http::Request::post(format!(
        "/apis/streamjob.io/v1alpha1/namespaces/{namespace}/streamjobs?dryRun=All&fieldValidation=Strict"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&value)?)?;
    match client.request::<Value>(request).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) => Ok(Err(status.message)),
        Err(other) => Err(other.into()),
    }
}

#[tokio::test]
async fn the_api_server_and_parse_manifest_agree_on_every_example_and_fixture() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    install_committed_crd(&env.client).await?;
    let namespace = fresh_namespace(&env.client, "sj-validate").await?;
    let mut disagreements = Vec::new();
    let mut checked = 0;

    for path in yaml_files(&repo_root().join("examples"))? {
        let text = std::fs::read_to_string(&path)?;
        let server = server_verdict(&env.client, &namespace, &text).await?;
        let client_side = parse_manifest(&text).map(|_| ()).map_err(|e| e.to_string());
        if server.is_err() || client_side.is_err() {
            disagreements
                .push(format!("{}: an example, server {server:?}, parse_manifest {client_side:?}", path.display()));
        }
        checked += 1;
    }

    let fixtures = yaml_files(&repo_root().join("examples/invalid"))?;
    anyhow::ensure!(fixtures.len() >= 20, "expected the invalid fixtures, found {}", fixtures.len());
    for path in fixtures {
        let text = std::fs::read_to_string(&path)?;
        let expected = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect: "))
            .ok_or_else(|| anyhow::anyhow!("{} has no `# expect:` line", path.display()))?;
        let server = server_verdict(&env.client, &namespace, &text).await?;
        let client_side = parse_manifest(&text).map(|_| ()).map_err(|e| e.to_string());
        let says_it = |verdict: &Result<(), String>| verdict.as_ref().is_err_and(|message| message.contains(expected));
        if !says_it(&server) || !says_it(&client_side) {
            disagreements.push(format!(
                "{}: expected {expected:?}\n    server: {server:?}\n    parse_manifest: {client_side:?}",
                path.display()
            ));
        }
        checked += 1;
    }
    eprintln!("real API server: {checked} manifests checked against parse_manifest");
    assert!(disagreements.is_empty(), "the API server and parse_manifest disagree:\n  {}", disagreements.join("\n  "));
    Ok(())
}
