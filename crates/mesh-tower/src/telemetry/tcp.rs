//! TCP metrics for the sidecar's L4 proxy: a handle per connection that
//! counts it opened at creation and closed on drop, and a stream wrapper
//! that counts bytes as they pass.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::labels::{DestinationInfo, Reporter, WorkloadInfo, security_policy};
use super::layer::Shared;
use super::metrics::TCP_LABELS;
use super::metrics::{TCP_LABEL_COUNT, UNKNOWN};
use super::registry::{Registry, Series, TcpData, metric_ids};
use super::settings::{ConnectionAttrs, TelemetrySettings, apply_tags};
use crate::tls::PeerIdentity;
use mesh_core::telemetry::{Side, WorkloadTelemetry};

/// Opens metered TCP connections for one workload and reporter side.
///
/// ```
/// use mesh_tower::telemetry::{DestinationInfo, Registry, TcpTelemetry, WorkloadInfo};
///
/// let registry = Registry::new();
/// let tcp = TcpTelemetry::outbound(registry.clone(), WorkloadInfo::new("wordpress-v1", "blog"));
/// let conn = tcp.connected(&DestinationInfo::new("mariadb.blog.svc.cluster.local", "blog").with_mtls(true));
/// conn.received(120); // from the downstream client
/// conn.sent(4096); // to it
/// drop(conn); // closed
/// assert!(registry.render().contains("istio_tcp_connections_closed_total{"));
/// ```
#[derive(Debug, Clone)]
pub struct TcpTelemetry {
    shared: Arc<Shared>,
}

impl TcpTelemetry {
    /// Records into `registry` as `reporter` for the local workload.
    pub fn new(registry: Registry, reporter: Reporter, local: WorkloadInfo) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry,
                reporter,
                local,
                settings: None,
            }),
        }
    }

    /// Applies what the Telemetry API says of the workload: TCP metrics
    /// disabled or with their tags changed (per connection, as the
    /// connection opens; request attributes are absent on a connection, so
    /// a tag reading them is `unknown`).
    pub fn with_settings(mut self, settings: Arc<TelemetrySettings>) -> Self {
        Arc::make_mut(&mut self.shared).settings = Some(settings);
        self
    }

    /// The server side: `reporter="destination"`.
    pub fn inbound(registry: Registry, local: WorkloadInfo) -> Self {
        Self::new(registry, Reporter::Destination, local)
    }

    /// The client side: `reporter="source"`.
    pub fn outbound(registry: Registry, local: WorkloadInfo) -> Self {
        Self::new(registry, Reporter::Source, local)
    }

    /// Inbound: a connection accepted from `peer` for `service` (when the
    /// listener knows which service the port serves).
    pub fn accepted(
        &self,
        peer: &PeerIdentity,
        service: Option<&DestinationInfo>,
    ) -> TcpConnection {
        self.accepted_from(peer, None, service)
    }

    /// Inbound, when more is known of the caller than its identity (the
    /// peer exchange, believed by
    /// [`source_from_peer`](super::source_from_peer)).
    pub fn accepted_from(
        &self,
        peer: &PeerIdentity,
        source: Option<&super::SourceInfo>,
        service: Option<&DestinationInfo>,
    ) -> TcpConnection {
        let source = match source {
            Some(s) => s.0.clone(),
            None => peer
                .labels()
                .unwrap_or_else(|| Arc::new(WorkloadInfo::unknown())),
        };
        self.open(&source, &self.shared.local, service, Some(peer.is_mtls()))
    }

    /// Outbound: a connection made to `destination`.
    pub fn connected(&self, destination: &DestinationInfo) -> TcpConnection {
        let unknown = WorkloadInfo::unknown();
        let peer = destination.workload.as_deref().unwrap_or(&unknown);
        // The caller's side reports no security policy, as Istio's.
        self.open(&self.shared.local, peer, Some(destination), None)
    }

    fn open(
        &self,
        source: &WorkloadInfo,
        destination: &WorkloadInfo,
        service: Option<&DestinationInfo>,
        mtls: Option<bool>,
    ) -> TcpConnection {
        let (svc, name, ns) = service.map_or((UNKNOWN, UNKNOWN, UNKNOWN), |s| {
            (&*s.service, &*s.service_name, &*s.service_namespace)
        });
        let labels: Vec<Arc<str>> = [
            self.shared.reporter.as_str(),
            &source.name,
            &source.namespace,
            &source.principal,
            &source.app,
            &source.version,
            &source.canonical_service,
            &source.canonical_revision,
            &source.cluster,
            &destination.name,
            &destination.namespace,
            &destination.principal,
            &destination.app,
            &destination.version,
            &destination.canonical_service,
            &destination.canonical_revision,
            &destination.cluster,
            svc,
            name,
            ns,
            "tcp",
            "-",
            security_policy(mtls),
        ]
        .into_iter()
        .map(Arc::from)
        .collect();
        let telemetry = self.shared.settings.as_ref().map(|s| s.current());
        let side = self.shared.side();
        if let Some(t) = telemetry.filter(|t| t.side(side).overrides_metrics()) {
            let custom = TcpCustom {
                principal: Arc::from(&*source.principal),
                mtls,
                telemetry: t,
                side,
            };
            let registry = &self.shared.registry;
            if let Some(opened) = custom.series(registry, &labels, metric_ids::TCP_OPENED, "-") {
                opened.data.add(1);
            }
            let sent = custom.series(registry, &labels, metric_ids::TCP_SENT_BYTES, "-");
            let received = custom.series(registry, &labels, metric_ids::TCP_RECEIVED_BYTES, "-");
            return TcpConnection {
                registry: self.shared.registry.clone(),
                labels,
                series: None,
                custom: Some(Box::new((custom, sent, received))),
                flags: "-",
            };
        }
        let series = self.shared.registry.tcp_series(label_refs(&labels, "-"));
        series.data.opened.fetch_add(1, Ordering::Relaxed);
        TcpConnection {
            registry: self.shared.registry.clone(),
            labels,
            series: Some(series),
            custom: None,
            flags: "-",
        }
    }
}

/// A connection whose metrics a Telemetry changed.
#[derive(Debug)]
struct TcpCustom {
    telemetry: Arc<WorkloadTelemetry>,
    side: Side,
    principal: Arc<str>,
    mtls: Option<bool>,
}

type CustomSeries = Option<Arc<super::custom::Series>>;

impl TcpCustom {
    /// The series of metric `id` for this connection; `None` when the
    /// metric is not reported.
    fn series(
        &self,
        registry: &Registry,
        labels: &[Arc<str>],
        id: usize,
        flags: &str,
    ) -> CustomSeries {
        let side = self.telemetry.side(self.side);
        let setting = &side.metric[id];
        if !side.metrics || setting.disabled {
            return None;
        }
        let attrs = ConnectionAttrs {
            principal: &self.principal,
            mtls: self.mtls,
        };
        let pairs = apply_tags(&TCP_LABELS, &label_refs(labels, flags), setting, &attrs);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        Some(registry.custom_series(id, &refs))
    }
}

/// `response_flags` in [`TCP_LABELS`](super::metrics::TCP_LABELS).
const FLAGS: usize = 21;

fn label_refs<'a>(labels: &'a [Arc<str>], flags: &'a str) -> [&'a str; TCP_LABEL_COUNT] {
    std::array::from_fn(|i| {
        if i == FLAGS {
            flags
        } else {
            labels.get(i).map_or(UNKNOWN, |l| &**l)
        }
    })
}

/// One metered TCP connection: counted opened when made, closed when
/// dropped. Bytes are counted from the proxy's side facing the downstream
/// client: `received` from it, `sent` to it.
#[derive(Debug)]
pub struct TcpConnection {
    registry: Registry,
    labels: Vec<Arc<str>>,
    /// The standard series; `None` where a Telemetry changed the metrics.
    series: Option<Arc<Series<TcpData>>>,
    /// Where a Telemetry changed them: the connection's settings, and its
    /// sent and received series.
    custom: Option<Box<(TcpCustom, CustomSeries, CustomSeries)>>,
    flags: &'static str,
}

impl TcpConnection {
    /// Counts bytes sent to the downstream side.
    pub fn sent(&self, n: u64) {
        if let Some(s) = &self.series {
            s.data.sent.fetch_add(n, Ordering::Relaxed);
        }
        if let Some((_, Some(s), _)) = self.custom.as_deref() {
            s.data.add(n);
        }
    }

    /// Counts bytes received from the downstream side.
    pub fn received(&self, n: u64) {
        if let Some(s) = &self.series {
            s.data.received.fetch_add(n, Ordering::Relaxed);
        }
        if let Some((_, _, Some(s))) = self.custom.as_deref() {
            s.data.add(n);
        }
    }

    /// Envoy's response flags for how the connection ended (`UF` when the
    /// upstream could not be reached, `UO` when the pool was full...): the
    /// closing is counted with them.
    pub fn set_response_flags(&mut self, flags: &'static str) {
        self.flags = flags;
    }

    /// Wraps `io` (the downstream side) so reads and writes are counted;
    /// the connection closes when the stream is dropped.
    pub fn wrap<IO>(self, io: IO) -> MeteredStream<IO> {
        MeteredStream { io, conn: self }
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        if let Some((custom, _, _)) = self.custom.as_deref() {
            let id = metric_ids::TCP_CLOSED;
            if let Some(s) = custom.series(&self.registry, &self.labels, id, self.flags) {
                s.data.add(1);
            }
            return;
        }
        if let (Some(series), "-") = (&self.series, self.flags) {
            series.data.closed.fetch_add(1, Ordering::Relaxed);
        } else {
            let series = self
                .registry
                .tcp_series(label_refs(&self.labels, self.flags));
            series.data.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A stream counting what is read (received) and written (sent).
#[derive(Debug)]
pub struct MeteredStream<IO> {
    io: IO,
    conn: TcpConnection,
}

impl<IO> MeteredStream<IO> {
    /// The connection handle.
    pub fn connection(&mut self) -> &mut TcpConnection {
        &mut self.conn
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for MeteredStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.conn
            .received((buf.filled().len().saturating_sub(before)) as u64);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for MeteredStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.conn.sent(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.conn.sent(n as u64);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
