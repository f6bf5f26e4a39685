//! Peer metadata exchange for opaque TCP tunnels: Istio's
//! `istio-peer-exchange` in a simple form. HTTP carries the caller's
//! description in a header ([`PEER_HEADER`](super::PEER_HEADER)); a TCP
//! tunnel has no headers, so the caller's sidecar offers the ALPN protocol
//! [`PEER_EXCHANGE_ALPN`] and, when the server's sidecar selects it, writes
//! one preamble before the first byte of the application's stream: a
//! two-byte big-endian length and that many bytes, the same value as the
//! header (empty when it has nothing to say). The server reads it before it
//! opens the connection to its application, so server-first protocols
//! (MySQL's greeting) are unaffected, and believes it exactly as it
//! believes the header ([`source_from_peer`](super::source_from_peer)).
//!
//! Why ALPN: the offer and the answer ride on the handshake the tunnel makes
//! anyway (no round trip of its own), and the preamble is only sent to a
//! server that said it expects one. The caller also offers `http/1.1`, which
//! a server of an earlier version (that never heard of the exchange and
//! pipes TCP ports whatever ALPN says) selects, so mixed versions still
//! connect; the acceptor lists the exchange first, and HTTP clients never
//! offer it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN protocol of the exchange.
pub const PEER_EXCHANGE_ALPN: &[u8] = b"mesh-peer-exchange/1";

/// The longest description a preamble may carry.
pub const MAX_PEER_PREAMBLE: usize = 1024;

/// How long a server waits for the preamble (the caller writes it at once).
pub const PEER_PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes the caller's preamble: `header`, or nothing said.
pub async fn write_peer_preamble<W: AsyncWrite + Unpin>(
    io: &mut W,
    header: Option<&http::HeaderValue>,
) -> std::io::Result<()> {
    let bytes = header
        .map(http::HeaderValue::as_bytes)
        .filter(|b| b.len() <= MAX_PEER_PREAMBLE)
        .unwrap_or_default();
    let mut frame = Vec::with_capacity(2 + bytes.len());
    // Cannot truncate: bounded by MAX_PEER_PREAMBLE above.
    frame.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    frame.extend_from_slice(bytes);
    io.write_all(&frame).await?;
    io.flush().await
}

/// Reads the caller's preamble: its description, `None` when it said
/// nothing. An error when it is too long, not a header value, or late:
/// the stream cannot be trusted to be in step then, and is closed.
pub async fn read_peer_preamble<R: AsyncRead + Unpin>(
    io: &mut R,
) -> std::io::Result<Option<http::HeaderValue>> {
    let read = async {
        let mut len = [0u8; 2];
        io.read_exact(&mut len).await?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > MAX_PEER_PREAMBLE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a peer preamble of {len} bytes (at most {MAX_PEER_PREAMBLE})"),
            ));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        if buf.is_empty() {
            return Ok(None);
        }
        http::HeaderValue::from_bytes(&buf).map(Some).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a peer preamble that is not a header value",
            )
        })
    };
    tokio::time::timeout(PEER_PREAMBLE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no peer preamble in time",
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_preamble_reads_back_and_the_stream_stays_in_step() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let v = http::HeaderValue::from_static("default/web-v1;app=web;version=v1");
        write_peer_preamble(&mut a, Some(&v)).await.unwrap();
        a.write_all(b"app bytes").await.unwrap();
        assert_eq!(read_peer_preamble(&mut b).await.unwrap(), Some(v));
        let mut rest = [0u8; 9];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"app bytes");
        write_peer_preamble(&mut a, None).await.unwrap();
        assert_eq!(read_peer_preamble(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_garbled_and_late_preambles_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(8192);
        a.write_all(&2000u16.to_be_bytes()).await.unwrap();
        assert!(read_peer_preamble(&mut b).await.is_err());
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 2, b'\n', 0]).await.unwrap();
        assert!(read_peer_preamble(&mut b).await.is_err());
        tokio::time::pause();
        let (_a, mut b) = tokio::io::duplex(64);
        let e = read_peer_preamble(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
