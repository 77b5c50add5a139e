//! The operator when its API server restarts, as control planes do on every upgrade: while the
//! server is down `/readyz` says not ready and the leader steps down once it cannot renew its
//! lease within the renew deadline (10 s of a 15 s lease), so no replica acts without a lease;
//! once the server serves again a replica leads again and reconciles a spec change within 15 s.
//! Two replicas run, and their `leader` gauges, sampled every 50 ms throughout, are never both 1.
//! The operators run with nothing but a token of the chart's ServiceAccount (the chart installed
//! with the Helm SDK for the test's namespace, [`ChartRbac`]), on the release's Lease, and the API
//! server refuses none of their requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use streamjob_crds::StreamJob;
use streamjob_e2e::{control_plane, eventually, free_port, fresh_namespace, install_crd, ChartRbac, ControlPlane};
use streamjob_operator::run::{run_with_client, RunOptions};
use streamjob_testkit::fixtures::{example, JobFixture};

/// `GET path` on the operator's health port: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// The status code of `GET /readyz` on the operator's health port.
fn readyz(port: u16) -> Option<u16> {
    get(port, "/readyz").map(|(code, _)| code)
}

/// Whether the operator on `port` says it leads (its `streamjob_operator_leader` gauge).
fn leads(port: u16) -> Option<bool> {
    let (_, body) = get(port, "/metrics")?;
    let line = body.lines().find(|l| l.starts_with("streamjob_operator_leader "))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

/// Samples both replicas' gauges until `stop`: counts samples where both lead, and where
/// neither does.
struct LeaderSampler {
    both: AtomicU32,
    samples: AtomicU32,
    stop: AtomicBool,
}

fn sample_leaders(ports: [u16; 2]) -> (Arc<LeaderSampler>, std::thread::JoinHandle<()>) {
    let sampler =
        Arc::new(LeaderSampler { both: AtomicU32::new(0), samples: AtomicU32::new(0), stop: AtomicBool::new(false) });
    let shared = sampler.clone();
    let thread = std::thread::spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) {
            let states = ports.map(leads);
            if states == [Some(true), Some(true)] {
                shared.both.fetch_add(1, Ordering::Relaxed);
            }
            shared.samples.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (sampler, thread)
}

async fn replicas(sets: &Api<StatefulSet>) -> Option<i32> {
    sets.get_opt("wordcount").await.ok().flatten()?.spec?.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_steps_down_without_the_api_server_and_a_replica_reconciles_within_15_seconds_after(
) -> anyhow::Result<()> {
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
    let ports = [free_port()?, free_port()?];
    let mut operators = Vec::new();
    for (port, identity) in ports.iter().zip(["e2e-restart", "e2e-standby"]) {
        let options = RunOptions {
            namespaces: vec![namespace.clone()],
            worker_image: "example.com/streamjob-worker:e2e".to_owned(),
            metrics_addr: format!("127.0.0.1:{port}").parse()?,
            leader_election: true,
            lease_name: lease_name.clone(),
            lease_namespace: lease_namespace.clone(),
            lease_duration_seconds: 15,
            identity: identity.to_owned(),
        };
        operators.push(tokio::spawn(run_with_client(rbac.client().await?, options)));
    }
    let (sampler, sampling) = sample_leaders(ports);

    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let job = example("wordcount.yaml").fixed(2);
    jobs.create(&PostParams::default(), &job).await?;
    eventually(Duration::from_secs(30), "the StatefulSet with 2 replicas", || async {
        (replicas(&sets).await == Some(2)).then_some(())
    })
    .await?;
    let leader = eventually(Duration::from_secs(30), "one replica to lead", || async {
        ports.iter().position(|port| leads(*port) == Some(true))
    })
    .await?;
    let port = ports[leader];
    assert_eq!(readyz(port), Some(200), "ready while the API server serves");

    plane.kill_apiserver();
    let killed = Instant::now();
    let not_ready = eventually(Duration::from_secs(30), "/readyz to say not ready", || async {
        (readyz(port) == Some(503)).then_some(())
    })
    .await;
    let stepped_down = eventually(Duration::from_secs(30), "the leader to step down", || async {
        ports.iter().all(|port| leads(*port) == Some(false)).then_some(())
    })
    .await;
    let step_down_after = killed.elapsed();
    eprintln!(
        "real API server down: the leader stepped down {step_down_after:.1?} after the kill (renew deadline 10 s)"
    );
    // Down long enough for the lease to expire and the watches to fail and back off.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(killed.elapsed())).await;
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
    for operator in &operators {
        if operator.is_finished() {
            anyhow::bail!("an operator stopped while the API server was down");
        }
    }
    not_ready?;
    stepped_down?;
    reconciled?;
    assert!(step_down_after <= Duration::from_secs(15), "the leader acted {step_down_after:?} without renewing");
    assert!(after <= Duration::from_secs(15), "reconciled {after:?} after the API server was ready again");
    eventually(Duration::from_secs(30), "/readyz to say ready again", || async {
        (readyz(port) == Some(200)).then_some(())
    })
    .await?;
    sampler.stop.store(true, Ordering::Relaxed);
    let _ = sampling.join();
    let (both, samples) = (sampler.both.load(Ordering::Relaxed), sampler.samples.load(Ordering::Relaxed));
    eprintln!("leader gauges sampled {samples} times: both replicas leading in {both}");
    assert!(samples > 100, "the sampler ran ({samples} samples)");
    assert_eq!(both, 0, "two replicas led at once in {both} of {samples} samples");
    for operator in operators {
        operator.abort();
    }
    rbac.assert_nothing_refused()
}
