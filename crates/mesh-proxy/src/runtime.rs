//! What every long-running mode shares: the configuration store and its
//! watcher, and the drain on SIGTERM. Serving itself is the one server
//! module of `mesh-tower` ([`mesh_tower::server`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_core::store::{FileSource, FileWatcher, Store};
use mesh_tower::server::DrainController;

/// The body of every request the proxy serves.
pub(crate) type ProxyBody = mesh_tower::server::ServerBody;

/// Loads the configuration and starts watching it. An unreadable
/// configuration at start is fatal (there is no last good one to keep).
pub(crate) fn start_store(config: &Path) -> Result<(Arc<Store>, FileWatcher)> {
    let source = FileSource::new(config);
    let store = Arc::new(Store::from_source(&source).map_err(|e| anyhow::anyhow!("{e}"))?);
    let watcher = FileWatcher::spawn(store.clone(), source).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((store, watcher))
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn terminated() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Marks the proxy ready, waits for SIGTERM (or Ctrl-C), then drains for at
/// most `drain_timeout` seconds.
pub(crate) async fn ready_then_drain(
    admin: &crate::admin::AdminState,
    controller: DrainController,
    drain_timeout: u64,
) -> Result<()> {
    admin
        .listeners_up
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!("ready");
    terminated().await?;
    tracing::info!("SIGTERM: draining");
    controller.drain(Duration::from_secs(drain_timeout)).await;
    Ok(())
}
