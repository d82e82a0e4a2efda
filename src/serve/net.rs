//! The accept loop: a bounded number of HTTP/1 connections, each with a header-read (and
//! keep-alive idle) timeout, which `axum::serve` does not set; SIGHUP reopens the indexes,
//! SIGTERM and SIGINT stop accepting and let requests in progress finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use super::State;

/// How long requests in progress get to finish once the server is told to stop.
const DRAIN: Duration = Duration::from_secs(10);

/// The connection a request came on, for the Host check and `/knn-service` URLs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    /// The server's address on this connection.
    pub(crate) local: SocketAddr,
}

/// Answers on `listener` until SIGTERM or SIGINT.
pub(super) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    state: Arc<State>,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let reopen = state.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            eprintln!("SIGHUP: reopening the indexes");
            for served in &reopen.indexes {
                served
                    .stale
                    .store(true, std::sync::atomic::Ordering::Release);
                let s = served.clone();
                let _ = tokio::task::spawn_blocking(move || s.fresh()).await;
            }
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let max = state.limits.max_connections;
    let open = Arc::new(Semaphore::new(max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(state.limits.header_timeout_secs))
        .keep_alive(true);
    loop {
        // A slot first, so that connections over the cap wait in the kernel's queue.
        let slot = tokio::select! {
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // wait a little instead of spinning.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let conn = Conn { local };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(conn);
            router.clone().oneshot(req)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    let _ = stop_tx.send(true);
    // Every connection's slot back: all have ended.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, open.acquire_many(all)).await;
    Ok(())
}
