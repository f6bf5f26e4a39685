//! Request path normalisation, as Envoy does it for Istio's
//! AuthorizationPolicy with `pathNormalization: DECODE_AND_MERGE_SLASHES`,
//! and failing closed wherever Envoy would leave room for doubt.
//!
//! [`normalize_path`] is what authorization matches against, and what the
//! authorization layer forwards to the application, so the app serves
//! exactly the path the policy checked:
//!
//! - the query and fragment are cut off (the caller keeps the query);
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded, `%2F` and `%5C` become `/`, every other escape stays encoded
//!   with upper-case hex digits;
//! - `\` becomes `/`, runs of `/` merge into one;
//! - `.` segments go, `..` segments remove the segment before them and never
//!   climb above the root; a trailing `/` is kept;
//! - an invalid escape (`%zz`, a lone `%`), a NUL (raw or `%00`), a raw
//!   control character, a dot segment carrying parameters (`..;x`, which
//!   Java servers read as `..`) or a path that does not start with `/` is an
//!   error: the request cannot be checked safely and is refused (400).
//!
//! ```
//! use mesh_core::normalize::normalize_path;
//!
//! assert_eq!(normalize_path("/public/../%61dmin%2F?x=1").unwrap(), "/admin/");
//! assert_eq!(normalize_path("\\\\admin/./x").unwrap(), "/admin/x");
//! assert!(normalize_path("/admin%zz").is_err());
//! ```

use std::borrow::Cow;

/// Why a path cannot be normalised safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/` (after decoding).
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {0}")]
    InvalidEncoding(usize),
    /// A NUL byte, raw or encoded.
    #[error("the path contains a NUL byte")]
    Nul,
    /// A raw control character.
    #[error("the path contains a control character")]
    Control,
    /// A `.` or `..` segment with `;` parameters.
    #[error("the path has a dot segment with parameters")]
    DotSegmentParams,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a request path (see the [module docs](self)); anything from
/// the first `?` or `#` on is cut off. An empty path is `/`. Idempotent:
/// normalising a normalised path changes nothing.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = &raw[..raw.find(['?', '#']).unwrap_or(raw.len())];
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let v = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex_val(h[0])? << 4 | hex_val(h[1])?))
                    .ok_or(PathError::InvalidEncoding(i))?;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => decoded.push(b'/'),
                    v if is_unreserved(v) => decoded.push(v),
                    v => decoded.extend([b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]),
                }
                i += 3;
                continue;
            }
            0 => return Err(PathError::Nul),
            b'\\' => decoded.push(b'/'),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            b => decoded.push(b),
        }
        i += 1;
    }
    if decoded.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut ends_dir = false;
    for seg in decoded[1..].split(|b| *b == b'/') {
        ends_dir = true;
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => {
                let base = s.split(|b| *b == b';').next().unwrap_or(s);
                if base.len() < s.len() && matches!(base, b"." | b"..") {
                    return Err(PathError::DotSegmentParams);
                }
                segments.push(s);
                ends_dir = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || ends_dir {
        out.push(b'/');
    }
    // Only ASCII bytes were replaced by ASCII bytes, and multi-byte
    // characters were copied whole, so this cannot fail; fail closed anyway.
    let out = String::from_utf8(out).map_err(|_| PathError::InvalidEncoding(0))?;
    Ok(if out == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(out)
    })
}

/// Percent-decodes once, as an application reads the path; invalid escapes
/// stay as they are, bytes that are not UTF-8 become U+FFFD.
pub fn decode_once(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| Some(hex_val(h[0])? << 4 | hex_val(h[1])?))
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Merges runs of `/` and resolves `.` and `..` segments (never above the
/// root), without decoding anything: the second half of [`normalize_path`]
/// for a path that is already decoded. A trailing `/` is kept.
pub(crate) fn merge_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_dir = false;
    for seg in path.split('/').skip(1) {
        ends_dir = true;
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                segments.push(s);
                ends_dir = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || ends_dir {
        out.push('/');
    }
    out
}

/// The path with `;` parameters cut from every segment, as Java servers
/// and others route on it (`/admin;x/y` → `/admin/y`).
pub(crate) fn strip_params(path: &str) -> String {
    path.split('/')
        .map(|seg| seg.split(';').next().unwrap_or(seg))
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("", "/"),
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("//a///b//", "/a/b/"),
            ("/a/./b/.", "/a/b/"),
            ("/a/../../b", "/b"),
            ("/..", "/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/%61%2fb", "/a/b"),
            ("/a%2Fb%5cc", "/a/b/c"),
            ("/%2e%2e/a", "/a"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%252F", "/a%252F"),
            ("\\a\\b", "/a/b"),
            ("/a?x=/../b#f", "/a"),
            ("/a;x/b", "/a;x/b"),
            ("/é", "/é"),
        ];
        for (raw, want) in ok {
            let got = normalize_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(got, want, "{raw}");
            assert_eq!(normalize_path(&got).unwrap(), got, "idempotent: {raw}");
        }
        let bad = [
            ("/a%zz", PathError::InvalidEncoding(2)),
            ("/a%", PathError::InvalidEncoding(2)),
            ("/a%2", PathError::InvalidEncoding(2)),
            ("/a%00", PathError::Nul),
            ("/a\0", PathError::Nul),
            ("/a\r\n", PathError::Control),
            ("a", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/..;/admin", PathError::DotSegmentParams),
            ("/.;x/admin", PathError::DotSegmentParams),
        ];
        for (raw, want) in bad {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
        assert!(matches!(normalize_path("/a/b").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn decoding_and_params() {
        assert_eq!(decode_once("/a%3Bb%2"), "/a;b%2");
        assert_eq!(decode_once("/a%2561"), "/a%61");
        assert_eq!(strip_params("/a;x/b;y=1/c"), "/a/b/c");
        assert_eq!(merge_segments("//admin"), "/admin");
        assert_eq!(merge_segments("/a/../../b/./c/"), "/b/c/");
        assert_eq!(merge_segments("/"), "/");
    }
}
