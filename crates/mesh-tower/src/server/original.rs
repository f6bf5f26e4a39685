//! The original destination of a connection the capture rules redirected
//! (`mesh-proxy init`): `SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST`
//! for IPv6, read through socket2's safe wrapper (the workspace forbids
//! `unsafe`).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// Where a connection accepted by a capture listener was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Original {
    /// Redirected: it was going here.
    Redirected(SocketAddr),
    /// Not redirected: the client connected to the capture listener
    /// itself. Serving it would loop (the proxy would route the connection
    /// to its own listener), so a capture listener refuses it.
    Direct,
}

/// The original destination of `stream`, accepted on a capture listener.
///
/// The kernel answers the listener's own address for a connection that was
/// not redirected (or `ENOENT` without connection tracking); both are
/// [`Original::Direct`].
pub fn original_destination(stream: &TcpStream) -> io::Result<Original> {
    let local = stream.local_addr()?;
    let sock = socket2::SockRef::from(stream);
    // A dual-stack socket sees IPv4 clients as IPv4-mapped addresses; the
    // IPv4 option holds their original destination.
    let v4 = match local.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let got = if v4 {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let addr = match got {
        Ok(a) => a,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Original::Direct),
        Err(e) => return Err(e),
    };
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))?;
    let same = |a: SocketAddr, b: SocketAddr| canonical(a) == canonical(b);
    Ok(if same(addr, local) {
        Original::Direct
    } else {
        Original::Redirected(canonical(addr))
    })
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A connection that no rule redirected is direct, whether or not the
    /// kernel tracks connections: a capture listener must refuse it.
    #[tokio::test]
    async fn a_connection_not_redirected_is_direct() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_destination(&server).unwrap(), Original::Direct);
        drop(client.await.unwrap().unwrap());
    }

    #[test]
    fn mapped_addresses_are_their_ipv4() {
        let m: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(m), "10.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
