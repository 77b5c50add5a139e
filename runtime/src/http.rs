//! The admin endpoints the operator and each worker serve: `/healthz` (the process is alive),
//! `/readyz` (it can do its work), `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// Metrics that can be written out in the OpenMetrics text format.
pub trait Exposition: Send + Sync + 'static {
    fn registry(&self) -> &Registry;

    fn encode(&self) -> String {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, self.registry()) {
            Ok(()) => text,
            Err(error) => format!("# encoding failed: {error}\n"),
        }
    }

    /// Why the process cannot do its work now even while it counts as ready: `/readyz` fails
    /// with this text.
    fn not_ready_reason(&self) -> Option<String> {
        None
    }
}

/// What the endpoints report.
pub struct Health<M> {
    pub metrics: Arc<M>,
    pub ready: Arc<AtomicBool>,
    /// The `/readyz` body while not ready, for example `not consuming`.
    pub not_ready: &'static str,
}

impl<M> Clone for Health<M> {
    fn clone(&self) -> Self {
        Self { metrics: self.metrics.clone(), ready: self.ready.clone(), not_ready: self.not_ready }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz<M: Exposition>(State(health): State<Health<M>>) -> axum::response::Response {
    if let Some(reason) = health.metrics.not_ready_reason() {
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    } else if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, health.not_ready).into_response()
    }
}

async fn metrics<M: Exposition>(State(health): State<Health<M>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.encode())
}

/// Serves the endpoints until `shutdown` resolves.
pub async fn serve<M: Exposition>(
    listener: tokio::net::TcpListener,
    health: Health<M>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<M>))
        .route("/metrics", get(metrics::<M>))
        .with_state(health);
    tracing::info!(?address, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct OneCounter(Registry);

    impl Exposition for OneCounter {
        fn registry(&self) -> &Registry {
            &self.0
        }
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response
    }

    #[tokio::test]
    async fn probes_follow_readiness_and_metrics_are_openmetrics_text() {
        let mut registry = Registry::with_prefix("test");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things counted", counter.clone());
        counter.inc_by(3);
        let ready = Arc::new(AtomicBool::new(false));
        let health = Health { metrics: Arc::new(OneCounter(registry)), ready: ready.clone(), not_ready: "warming up" };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, health, async {
            let _ = stopped.await;
        }));

        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(address, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.ends_with("warming up"), "{not_ready}");
        ready.store(true, Ordering::Relaxed);
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(address, "/metrics").await;
        assert!(metrics.contains("application/openmetrics-text"), "{metrics}");
        assert!(metrics.contains("test_things_total 3"), "{metrics}");

        let _ = stop.send(());
        server.await.expect("joins").expect("stops cleanly");
    }

    struct Refusing(Registry, std::sync::Mutex<Option<String>>);

    impl Exposition for Refusing {
        fn registry(&self) -> &Registry {
            &self.0
        }

        fn not_ready_reason(&self) -> Option<String> {
            self.1.lock().ok()?.clone()
        }
    }

    #[tokio::test]
    async fn a_reason_not_to_be_ready_fails_readyz_with_it_while_it_lasts() {
        let metrics = Arc::new(Refusing(Registry::default(), std::sync::Mutex::new(None)));
        let ready = Arc::new(AtomicBool::new(true));
        let health = Health { metrics: metrics.clone(), ready, not_ready: "not consuming" };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, health, async {
            let _ = stopped.await;
        }));
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        *metrics.1.lock().expect("not poisoned") = Some("sink refused: topic deleted".into());
        let refused = get(address, "/readyz").await;
        assert!(refused.starts_with("HTTP/1.1 503") && refused.ends_with("sink refused: topic deleted"), "{refused}");
        *metrics.1.lock().expect("not poisoned") = None;
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        let _ = stop.send(());
        server.await.expect("joins").expect("stops cleanly");
    }
}
