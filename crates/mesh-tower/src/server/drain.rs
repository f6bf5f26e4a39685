//! The one drain primitive: a signal every accept loop and connection
//! watches, and a count of the connections still open.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::ServerSettings;

/// The drain signal, the count of connections still open, and the settings
/// every connection is served with (carried here because every connection
/// handler already holds a `Drain`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    rx: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
    settings: ServerSettings,
}

/// Starts a drain when asked.
#[derive(Debug)]
pub struct DrainController {
    tx: watch::Sender<bool>,
    active: Arc<AtomicUsize>,
}

/// Held by each open connection; dropping it marks the connection done.
#[derive(Debug)]
pub struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A drain signal and its controller, for connections served with
/// `settings`.
pub fn drain_pair(settings: ServerSettings) -> (DrainController, Drain) {
    let (tx, rx) = watch::channel(false);
    let active = Arc::new(AtomicUsize::new(0));
    (
        DrainController {
            tx,
            active: active.clone(),
        },
        Drain {
            rx,
            active,
            settings,
        },
    )
}

impl Drain {
    /// Resolves once draining has begun.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Has draining begun?
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Counts a connection until the guard drops.
    pub fn guard(&self) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.active.clone())
    }

    /// What connections are served with.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }
}

impl DrainController {
    /// Stops accepting, asks connections to finish, and waits for them up to
    /// `deadline`.
    pub async fn drain(self, deadline: Duration) {
        let _ = self.tx.send(true);
        let until = tokio::time::Instant::now() + deadline;
        while self.active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.active.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline reached; closing what is left"
            );
        }
    }

    /// Connections still open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}
