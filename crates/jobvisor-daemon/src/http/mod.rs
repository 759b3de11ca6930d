//! The HTTP/JSON API (`[http] listen`): the control socket's requests for
//! any language, with bearer tokens and roles (see [`crate::access`]).
//!
//! One hyper HTTP/1.1 connection per accepted socket, each holding a slot of
//! `http.max_connections` (past it: `503` and close, before reading a byte).
//! A connection must send each request's head within `http.idle_timeout_ms`
//! of opening or of its last answer (hyper's header-read timer, which covers
//! an idle keep-alive and a slowloris head alike), the head within
//! `http.max_header_bytes`, and the body within `http.request_timeout_ms`
//! and `http.max_body_bytes` (`408`/`413`). Every request runs the same
//! handler as the socket's ([`crate::server::handle`]), so both transports
//! answer alike; the JSON is the public types of `docs/json.md`.
//!
//! With `[http.tls]` the listener speaks HTTPS only (rustls, TLS 1.2 and
//! 1.3): a plaintext request gets no answer, and with `client_ca` a client
//! must present a certificate that CA signed (mutual TLS). The handshake
//! must end within `http.idle_timeout_ms`.
//!
//! # Layout
//! - this module: the listener, connection slots and timeouts.
//! - [`api`]: the routes, authentication and the JSON errors.

mod api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::access::Tokens;
use crate::server::ServerCtx;

/// Binds `[http] listen` (already validated).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The TLS side of the listener, from `[http.tls]`'s PEM files.
///
/// # Errors
/// A file that cannot be read or holds no usable certificate or key.
pub(crate) fn tls_acceptor(
    t: &crate::config::TlsSettings,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", path.display()));
        }
        Ok(certs)
    };
    let chain = certs(&t.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&t.key).map_err(|e| format!("{}: {e}", t.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("cert and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the API until `stopping` turns true. Connections in progress end
/// with the daemon's runtime.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: ServerCtx,
    mut stopping: watch::Receiver<bool>,
) {
    let settings = ctx.cfg.http.clone();
    let tokens = Arc::new(Tokens::new(&settings.tokens));
    if tokens.is_empty() {
        tracing::warn!(
            "http: no [[http.tokens]] configured: every request but /healthz is refused (401); \
             jobvisor token new --role read prints one"
        );
    }
    let router = api::router(api::State {
        ctx,
        tokens,
        stopping: stopping.clone(),
    });
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    // Refusals are written by a few short-lived tasks, never unboundedly many.
    let refusals = Arc::new(Semaphore::new(16));
    let idle = Duration::from_millis(settings.idle_timeout_ms);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopping.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Ok(r) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_full(stream).await;
                    drop(r);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let max_header = settings.max_header_bytes;
        let stop = stopping.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, service, idle, max_header, stop, peer).await,
                Some(acceptor) => match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        connection(stream, service, idle, max_header, stop, peer).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "http: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                },
            }
            drop(permit);
        });
    }
}

/// One HTTP/1.1 connection over `io` (TCP, or TLS over TCP).
async fn connection<I>(
    io: I,
    service: hyper_util::service::TowerToHyperService<axum::Router>,
    idle: Duration,
    max_header: usize,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(max_header)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
        }
        _ = stop.changed() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answers a connection over `http.max_connections` with `503` and closes it.
async fn refuse_full(mut stream: TcpStream) {
    let body = api::error_body(
        "too_many_connections",
        "too many connections (http.max_connections); try again later",
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent meanwhile (a little of it), so closing
        // does not reset the connection before it has read the answer.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}
