//! A client of the API server, as every command that talks to one finds it:
//! a kubeconfig file when one is named, else in-cluster (the pod's service
//! account), then `KUBECONFIG`, then `~/.kube/config`.

use std::path::Path;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The client for `kubeconfig` (and its `context`, default the file's
/// current one), or the inferred one. The error names the file or says
/// what was tried.
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig (KUBECONFIG or ~/.kube/config): {e}"))?,
        None => kube::Config::infer().await.map_err(|e| {
            format!("no in-cluster service account and no kubeconfig (KUBECONFIG or ~/.kube/config): {e}")
        })?,
    };
    Client::try_from(config).map_err(|e| format!("the API server's client: {e}"))
}
