//! The body type every mesh service answers with, and helpers to buffer a
//! request body so it can be sent again (retries) or copied (mirroring).

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Full};

/// Errors of bodies and services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body, so that upstream answers and the mesh's own answers share
/// one type.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body with errors convertible to [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub fn empty() -> BoxBody {
    boxed(Full::new(Bytes::new()).map_err(|never| match never {}))
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    boxed(Full::new(bytes.into()).map_err(|never| match never {}))
}

/// A response with its body boxed: a named function, not a closure, so the
/// futures that hold it stay provably `Send` for the compiler.
pub fn box_response<B>(r: http::Response<B>) -> http::Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    r.map(boxed)
}
