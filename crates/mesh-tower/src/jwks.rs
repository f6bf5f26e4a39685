//! The issuers' key sets behind RequestAuthentication `jwksUri`: fetched
//! over HTTP or HTTPS, kept per URI, shared by every authorization layer
//! of the process ([`JwksCache::global`]).
//!
//! - **First use.** A request whose token needs a key set not fetched yet
//!   waits for the fetch (bounded by the rule's `timeout`, 5 s by default),
//!   as Envoy's remote JWKS does; it is never let through unchecked. A
//!   fetch that fails leaves the token unverifiable: 401.
//! - **Refresh.** A key set older than [`JwksSettings::refresh`] (20 min,
//!   Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`) is fetched again in the
//!   background while the old one keeps serving; a failed refresh keeps
//!   the last good set (and is logged at WARN).
//! - **Rotation.** A token whose `kid` the set lacks triggers a fetch at
//!   once (at most once per [`JwksSettings::min_refetch`] per URI, so
//!   tokens with made-up key ids cannot make the proxy hammer the issuer);
//!   the request waits for it, so a rotated key works on its first token.
//! - Responses are capped at [`MAX_JWKS_BYTES`]; a body that is no key set
//!   with a usable key is a failed fetch.
//!
//! HTTPS is verified against the system's roots (which honour
//! `SSL_CERT_FILE`), or the roots given in [`JwksSettings::roots`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use mesh_core::jwt::JwtKeys;

/// How many verified tokens are kept ([`mesh_core::jwt::TokenCache`]):
/// a signature check is tens of microseconds, a lookup well under one.
pub const TOKEN_CACHE_CAPACITY: usize = 512;

/// The largest key-set response read.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// How the cache behaves.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Key sets older than this are fetched again (in the background).
    pub refresh: Duration,
    /// At most one fetch per URI this often for unknown key ids, and after
    /// a failure.
    pub min_refetch: Duration,
    /// Roots for `https` key-set URIs; `None`: the system's.
    pub roots: Option<Arc<rustls::RootCertStore>>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(20 * 60),
            min_refetch: Duration::from_secs(5),
            roots: None,
        }
    }
}

/// Key sets by URI; see the [module docs](self).
#[derive(Debug)]
pub struct JwksCache {
    settings: JwksSettings,
    entries: Mutex<HashMap<String, Entry>>,
    /// Built on the first HTTPS fetch that can build it (a failure is
    /// tried again next time).
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// Tokens verified already (by any rule of the process).
    tokens: mesh_core::jwt::TokenCache,
}

#[derive(Debug, Default)]
struct Entry {
    keys: Option<(Arc<JwtKeys>, Instant)>,
    last_error: Option<String>,
    last_attempt: Option<Instant>,
    /// When the last fetch ended (either way).
    completed: Option<Instant>,
    /// A background refresh is running.
    refreshing: bool,
    /// Held by the fetch in flight: requests that need the keys queue
    /// behind one fetch rather than each starting their own.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn in_flight(&self) -> bool {
        self.lock.try_lock().is_err()
    }
}

/// What the request path makes of a URI's entry.
#[derive(Debug, Clone)]
pub enum Cached {
    /// Keys to verify with.
    Keys(Arc<JwtKeys>),
    /// None yet, and a fetch may be tried now: wait for it.
    Fetch,
    /// None, and the last fetch failed too recently to try again.
    Failed(String),
}

impl JwksCache {
    /// A cache with its own settings (tests, or roots for a private
    /// identity provider).
    pub fn new(settings: JwksSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            entries: Mutex::new(HashMap::new()),
            tls: OnceLock::new(),
            tokens: mesh_core::jwt::TokenCache::new(TOKEN_CACHE_CAPACITY),
        })
    }

    /// The tokens verified already.
    pub fn tokens(&self) -> &mesh_core::jwt::TokenCache {
        &self.tokens
    }

    /// The process-wide cache, with the default settings.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<JwksCache>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Self::new(JwksSettings::default()))
            .clone()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half
        // written (every update is one assignment), so a poisoned map is
        // still sound.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The keys of `uri` for the request path, without waiting. A stale
    /// set is returned and refreshed in the background (when a runtime is
    /// there to run it).
    pub fn cached(self: &Arc<Self>, uri: &str, timeout: Duration) -> Cached {
        let now = Instant::now();
        let mut entries = self.entries();
        let e = entries.entry(uri.to_owned()).or_default();
        match &e.keys {
            Some((keys, at)) => {
                let keys = keys.clone();
                if now.duration_since(*at) >= self.settings.refresh
                    && !e.refreshing
                    && self.may_try(e, now)
                {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        e.refreshing = true;
                        let this = self.clone();
                        let uri = uri.to_owned();
                        rt.spawn(async move {
                            let _ = this.wait_for(&uri, timeout, Instant::now()).await;
                        });
                    }
                }
                Cached::Keys(keys)
            }
            None if e.in_flight() || self.may_try(e, now) => Cached::Fetch,
            None => Cached::Failed(
                e.last_error
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".to_owned()),
            ),
        }
    }

    /// May a fetch of the entry start now?
    fn may_try(&self, e: &Entry, now: Instant) -> bool {
        e.last_attempt
            .is_none_or(|t| now.duration_since(t) >= self.settings.min_refetch)
    }

    /// Should a token with an unknown `kid` make the request wait for a
    /// fetch? Yes unless one was tried within `min_refetch`.
    pub fn refetch_for_unknown_kid(&self, uri: &str) -> bool {
        let mut entries = self.entries();
        let e = entries.entry(uri.to_owned()).or_default();
        e.in_flight() || self.may_try(e, Instant::now())
    }

    /// Why the last fetch of `uri` failed, if it did.
    pub fn last_error(&self, uri: &str) -> Option<String> {
        self.entries().get(uri).and_then(|e| e.last_error.clone())
    }

    /// Waits for keys fetched since `since` (when the request found them
    /// missing): the result of a fetch that ended since, or is in flight,
    /// else of one started here. A request that needs keys (none yet, or a
    /// `kid` the set lacks) waits here. The fetch runs in a task of its own
    /// holding the URI's lock, so a waiter that goes away (its client hung
    /// up) cancels nothing the others wait for.
    pub async fn wait_for(
        self: &Arc<Self>,
        uri: &str,
        timeout: Duration,
        since: Instant,
    ) -> Result<Arc<JwtKeys>, String> {
        let lock = self
            .entries()
            .entry(uri.to_owned())
            .or_default()
            .lock
            .clone();
        let this = self.clone();
        let owned = uri.to_owned();
        let task = tokio::spawn(async move {
            let _held = lock.lock_owned().await;
            {
                let entries = this.entries();
                if let Some(e) = entries.get(&owned)
                    && e.completed.is_some_and(|t| t >= since)
                {
                    return match (&e.keys, &e.last_error) {
                        (Some((k, _)), _) => Ok(k.clone()),
                        (None, Some(why)) => Err(why.clone()),
                        (None, None) => Err(format!("{owned}: not fetched")),
                    };
                }
            }
            this.fetch(&owned, timeout).await
        });
        // One fetch ahead in the queue, then this one: each bounded by
        // `timeout`.
        match tokio::time::timeout(timeout.saturating_mul(2), task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("{uri}: the fetch task ended: {e}")),
            Err(_) => Err(format!("{uri}: no key set within {timeout:?}")),
        }
    }

    /// Fetches `uri` now and keeps the result: the new keys, or on failure
    /// the last good ones (and the error, for the 401's reason).
    async fn fetch(&self, uri: &str, timeout: Duration) -> Result<Arc<JwtKeys>, String> {
        {
            let mut entries = self.entries();
            let e = entries.entry(uri.to_owned()).or_default();
            e.last_attempt = Some(Instant::now());
        }
        let got = match tokio::time::timeout(timeout, self.get(uri)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let mut entries = self.entries();
        let e = entries.entry(uri.to_owned()).or_default();
        e.refreshing = false;
        e.completed = Some(Instant::now());
        match got {
            Ok(keys) => {
                let keys = Arc::new(keys);
                tracing::info!(target: "mesh::jwt", uri, keys = keys.len(), "key set fetched");
                e.keys = Some((keys.clone(), Instant::now()));
                e.last_error = None;
                Ok(keys)
            }
            Err(why) => {
                let why = format!("{uri}: {why}");
                tracing::warn!(target: "mesh::jwt", error = %why, kept = e.keys.is_some(), "key set fetch failed");
                e.last_error = Some(why.clone());
                match &e.keys {
                    // The last good set stays in force.
                    Some((keys, _)) => Ok(keys.clone()),
                    None => Err(why),
                }
            }
        }
    }

    async fn get_body(&self, uri: &str) -> Result<bytes::Bytes, String> {
        let u: http::Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match u.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http or https URL".to_owned()),
        };
        let host = u
            .host()
            .ok_or("no host")?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = u.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let authority = u
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path = u.path_and_query().map_or("/", |p| p.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = if https {
            let config = match self.tls.get() {
                Some(c) => c.clone(),
                None => {
                    let c = self.client_config()?;
                    self.tls.get_or_init(|| c).clone()
                }
            };
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(tls, req).await?
        } else {
            send(tcp, req).await?
        };
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(body)
    }

    /// The key set at `uri`; for an OpenID discovery document (a rule with
    /// neither `jwks` nor `jwksUri`), the one its `jwks_uri` names.
    async fn get(&self, uri: &str) -> Result<JwtKeys, String> {
        if !uri.ends_with(mesh_core::jwt::DISCOVERY_PATH) {
            return self.get_keys(uri).await;
        }
        let doc = self.get_body(uri).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&doc).map_err(|e| format!("discovery document: {e}"))?;
        // OpenID Connect Discovery 4.3: the document must be the issuer's
        // own.
        let want = uri
            .strip_suffix(mesh_core::jwt::DISCOVERY_PATH)
            .unwrap_or(uri);
        let said = v
            .get("issuer")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if said.trim_end_matches('/') != want.trim_end_matches('/') {
            return Err(format!(
                "the discovery document names issuer `{said}`, not `{want}`"
            ));
        }
        let jwks = v
            .get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .ok_or("the discovery document names no jwks_uri")?;
        mesh_core::jwt::jwks_uri(jwks).map_err(|why| format!("jwks_uri `{jwks}`: {why}"))?;
        self.get_keys(jwks).await
    }

    async fn get_keys(&self, uri: &str) -> Result<JwtKeys, String> {
        let body = self.get_body(uri).await?;
        let text = std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8")?;
        JwtKeys::parse(text)
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let roots = match &self.settings.roots {
            Some(r) => r.clone(),
            None => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(
                        "no root certificates to verify the key set's server with".to_owned()
                    );
                }
                Arc::new(roots)
            }
        };
        let mut config =
            rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

async fn send<T>(
    io: T,
    req: http::Request<Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}
