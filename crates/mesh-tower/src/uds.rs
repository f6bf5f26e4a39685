//! Endpoints on Unix domain sockets (a WorkloadEntry or ServiceEntry
//! endpoint `address: unix:///path` or `unix://@abstract`, Istio's form):
//! dialled as plaintext streams, never as mesh mTLS (the peer of a socket
//! file is a process of this host, which no SPIFFE identity names here).
//!
//! HTTP requests travel through hyper-util's pool, which dials by URI
//! only: a socket's path rides in the authority as hex labels under
//! `uds.mesh.invalid` (a name no DNS resolves), one pool per socket.

use tokio::net::UnixStream;

/// The suffix of the authority that names a socket.
const SUFFIX: &str = ".uds.mesh.invalid";

/// The authority standing for `key` (`unix:///path`, `unix://@name`).
pub(crate) fn authority(key: &str) -> Option<String> {
    let path = mesh_core::plan::unix_socket(key)?;
    let hex: String = path.bytes().map(|b| format!("{b:02x}")).collect();
    let labels: Vec<&str> = hex
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    Some(format!("{}{SUFFIX}", labels.join(".")))
}

/// The socket a [`authority`] names, if it names one.
pub(crate) fn socket_of(host: &str) -> Option<String> {
    let hex: String = host.strip_suffix(SUFFIX)?.split('.').collect();
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Dials the socket `path` within `timeout`, as plaintext: `tls` (the
/// endpoint would need mesh mTLS or originated TLS) is refused, never sent
/// in the clear. The error says why, for the answer's reason.
pub(crate) async fn dial(
    path: &str,
    tls: bool,
    timeout: std::time::Duration,
) -> Result<UnixStream, String> {
    if tls {
        return Err(format!(
            "unix://{path}: mesh mTLS or TLS to a Unix socket endpoint is not supported (its DestinationRule must say tls: DISABLE, or the entry be MESH_EXTERNAL)"
        ));
    }
    tokio::time::timeout(timeout, connect(path))
        .await
        .map_err(|_| format!("connect timeout after {timeout:?}"))?
        .map_err(|e| format!("unix://{path}: {e}"))
}

/// Connects to `path` (`@name`: Linux's abstract namespace).
async fn connect(path: &str) -> std::io::Result<UnixStream> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            // A local connect: it completes or fails at once.
            let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            std.set_nonblocking(true)?;
            UnixStream::from_std(std)
        }
        None => UnixStream::connect(path).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_round_trips_through_an_authority() {
        for key in [
            "unix:///var/run/example/socket",
            "unix://@foo",
            "unix:///a/path/long/enough/to/need/more/than/one/label/of/sixty/hex/characters.sock",
        ] {
            let a = authority(key).unwrap();
            assert!(http::uri::Authority::try_from(a.as_str()).is_ok(), "{a}");
            assert!(a.split('.').all(|l| l.len() <= 63), "{a}");
            assert_eq!(
                socket_of(&a).as_deref(),
                mesh_core::plan::unix_socket(key),
                "{a}"
            );
        }
        assert_eq!(authority("10.0.0.1:80"), None);
        assert_eq!(socket_of("web.default.svc"), None);
        assert_eq!(socket_of("zz.uds.mesh.invalid"), None);
    }
}
