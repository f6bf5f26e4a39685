//! Reading a client's TLS ClientHello without answering it: for routing a
//! TLS connection by its SNI while passing it on unopened (a Gateway's
//! PASSTHROUGH servers, a VirtualService's `tls` routes at a sidecar).

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a ClientHello may take before the reader gives up on it.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Reads until a whole ClientHello has come: the bytes read (to replay to
/// wherever the connection goes) and the SNI it names, lowercase. rustls
/// parses it, so what is routed on is what a TLS server would read; bytes
/// that are no ClientHello, or a client that closes first, are an error.
/// The caller bounds the wait.
pub async fn read_client_hello<IO>(io: &mut IO) -> std::io::Result<(Vec<u8>, Option<String>)>
where
    IO: AsyncRead + Unpin,
{
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the client closed before its ClientHello",
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > MAX_CLIENT_HELLO {
            return Err(bad(format!(
                "a ClientHello of more than {MAX_CLIENT_HELLO} bytes"
            )));
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            acceptor.read_tls(&mut chunk)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok((seen, sni));
            }
            Ok(None) => {}
            Err((e, _alert)) => return Err(bad(e.to_string())),
        }
    }
}
