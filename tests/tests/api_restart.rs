//! The operator when its API server restarts, as control planes do on every upgrade: while the
//! server is down `/readyz` says not ready, and once it serves again the operator reconciles a
//! spec change within 15 s. The operator runs with nothing but a token of the chart's
//! ServiceAccount (the chart installed with the Helm SDK for the test's namespace, [`ChartRbac`]),
//! on the release's Lease, and the API server refuses none of its requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use streamjob_crds::StreamJob;
use streamjob_e2e::{control_plane, eventually, free_port, fresh_namespace, install_crd, ChartRbac, ControlPlane};
use streamjob_operator::run::{run_with_client, RunOptions};
use streamjob_testkit::fixtures::{example, JobFixture};

/// The status code of `GET /readyz` on the operator's health port.
fn readyz(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

async fn replicas(sets: &Api<StatefulSet>) -> Option<i32> {
    sets.get_opt("wordcount").await.ok().flatten()?.spec?.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_api_server_restart_the_operator_reconciles_within_15_seconds() -> anyhow::Result<()> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let Some(assets) = control_plane::assets()? else { return Ok(()) };
    // Its own control plane: this test kills the API server.
    let mut plane = ControlPlane::start(&assets)?;
    let client = plane.client().await?;
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-restart").await?;
    let rbac = ChartRbac::on_control_plane(&plane, std::slice::from_ref(&namespace)).await?;
    let (lease_name, lease_namespace) = rbac.lease()?;
    let port = free_port()?;
    let options = RunOptions {
        namespaces: vec![namespace.clone()],
        worker_image: "example.com/streamjob-worker:e2e".to_owned(),
        metrics_addr: format!("127.0.0.1:{port}").parse()?,
        leader_election: true,
        lease_name,
        lease_namespace,
        lease_duration_seconds: 15,
        identity: "e2e-restart".to_owned(),
    };
    let operator = tokio::spawn(run_with_client(rbac.client().await?, options));

    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let job = example("wordcount.yaml").fixed(2);
    jobs.create(&PostParams::default(), &job).await?;
    eventually(Duration::from_secs(30), "the StatefulSet with 2 replicas", || async {
        (replicas(&sets).await == Some(2)).then_some(())
    })
    .await?;
    assert_eq!(readyz(port), Some(200), "ready while the API server serves");

    plane.kill_apiserver();
    let not_ready = eventually(Duration::from_secs(30), "/readyz to say not ready", || async {
        (readyz(port) == Some(503)).then_some(())
    })
    .await;
    // Down long enough for the watches to fail and back off.
    tokio::time::sleep(Duration::from_secs(20)).await;
    plane.restart_apiserver()?;
    let serving_again = Instant::now();
    tracing::info!("the API server serves again");
    let client = plane.client().await?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await?;
    let reconciled = eventually(Duration::from_secs(60), "the suspend to be reconciled", || async {
        (replicas(&sets).await == Some(0)).then_some(())
    })
    .await;
    let after = serving_again.elapsed();
    eprintln!("real API server restarted: a spec change made once it served again was reconciled after {after:.1?}");
    if operator.is_finished() {
        eprintln!("the operator stopped: {:?}", operator.await);
        anyhow::bail!("the operator stopped while the API server was down");
    }
    not_ready?;
    reconciled?;
    assert!(after <= Duration::from_secs(15), "reconciled {after:?} after the API server was ready again");
    eventually(Duration::from_secs(30), "/readyz to say ready again", || async {
        (readyz(port) == Some(200)).then_some(())
    })
    .await?;
    operator.abort();
    rbac.assert_nothing_refused()
}
