//! Decoding a `moby.buildkit.trace` aux: base64 of a protobuf `moby.buildkit.v1.StatusResponse`
//! (BuildKit's `api/services/control/control.proto`). Only the fields the log shows are read;
//! every other field, and fields newer BuildKits add, are skipped by their wire type.
//!
//! Hand-written rather than bollard's `buildkit` feature: that feature refuses a BuildKit
//! build without a gRPC session and compiles tonic, axum, prost and rustls (see
//! `endpoint.rs`), while these four messages need a varint and a length prefix.

use crate::buildkit_progress::{StatusUpdate, Vertex, VertexLog, VertexStatus};

/// Why a trace message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable BuildKit progress message: {0}")]
pub(crate) struct StatusError(&'static str);

/// Decodes the aux of a `moby.buildkit.trace` message.
pub(crate) fn decode_trace(base64_text: &str) -> Result<StatusUpdate, StatusError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(base64_text).map_err(|_| StatusError("not base64"))?;
    let mut update = StatusUpdate::default();
    for field in Fields::new(&bytes) {
        match field? {
            (1, Value::Bytes(v)) => update.vertexes.push(vertex(v)?),
            (2, Value::Bytes(v)) => update.statuses.push(status(v)?),
            (3, Value::Bytes(v)) => update.logs.push(log(v)?),
            _ => {}
        }
    }
    Ok(update)
}

// message Vertex { string digest = 1; repeated string inputs = 2; string name = 3;
//   bool cached = 4; Timestamp started = 5; Timestamp completed = 6; string error = 7; … }
fn vertex(bytes: &[u8]) -> Result<Vertex, StatusError> {
    let mut vertex = Vertex::default();
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(v)) => vertex.digest = text(v),
            (3, Value::Bytes(v)) => vertex.name = text(v),
            (4, Value::Varint(v)) => vertex.cached = v != 0,
            (5, Value::Bytes(v)) => vertex.started = Some(timestamp(v)?),
            (6, Value::Bytes(v)) => vertex.completed = Some(timestamp(v)?),
            (7, Value::Bytes(v)) => vertex.error = text(v),
            _ => {}
        }
    }
    Ok(vertex)
}

// message VertexStatus { string ID = 1; string vertex = 2; string name = 3; int64 current = 4;
//   int64 total = 5; Timestamp timestamp = 6; Timestamp started = 7; Timestamp completed = 8; }
fn status(bytes: &[u8]) -> Result<VertexStatus, StatusError> {
    let mut status = VertexStatus::default();
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(v)) => status.id = text(v),
            (2, Value::Bytes(v)) => status.vertex = text(v),
            (8, Value::Bytes(_)) => status.completed = true,
            _ => {}
        }
    }
    Ok(status)
}

// message VertexLog { string vertex = 1; Timestamp timestamp = 2; int64 stream = 3; bytes msg = 4; }
fn log(bytes: &[u8]) -> Result<VertexLog, StatusError> {
    let mut log = VertexLog::default();
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(v)) => log.vertex = text(v),
            (4, Value::Bytes(v)) => log.msg = v.to_vec(),
            _ => {}
        }
    }
    Ok(log)
}

// google.protobuf.Timestamp { int64 seconds = 1; int32 nanos = 2; }
fn timestamp(bytes: &[u8]) -> Result<f64, StatusError> {
    let (mut seconds, mut nanos) = (0u64, 0u64);
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Varint(v)) => seconds = v,
            (2, Value::Varint(v)) => nanos = v,
            _ => {}
        }
    }
    Ok(seconds as f64 + nanos as f64 / 1e9)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The (field number, value) pairs of one message, in wire order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, StatusError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first().ok_or(StatusError("truncated varint"))?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(StatusError("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StatusError> {
        if self.rest.len() < n {
            return Err(StatusError("truncated field"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), StatusError> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.take(8).map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| StatusError("field too long"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Value::Fixed)?,
            _ => return Err(StatusError("unknown wire type")),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), StatusError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as dockerd 20.10 (BuildKit 0.8.4) sent them for `RUN echo "marker-hi" && echo
    /// second line` (captured from the engine's build stream).
    const STARTED: &str = "CtABCkdzaGEyNTY6NTM3NzhkMWE1NzQyOTNmOTA4Y2RkODE5NDg0ZjhjMzc0OWQ0MDU0MWU1N2JlZWU1ZDRkYzE2YWZjY2Q4ZTIxMRJHc2hhMjU2OmFhOWY4NTUzNzAxYWE1M2MxMTYwMjRiZTk1NTY5OWY0Yjc4NjgzMmVmN2Q2ZTJmYTU2NTU0OGU4OTE3MGUzZGEaLlszLzNdIFJVTiBlY2hvICJtYXJrZXItaGkiICYmIGVjaG8gc2Vjb25kIGxpbmUqDAjC6ZHYBhDm3sCaAQ==";
    const LOG: &str = "GnEKR3NoYTI1Njo1Mzc3OGQxYTU3NDI5M2Y5MDhjZGQ4MTk0ODRmOGMzNzQ5ZDQwNTQxZTU3YmVlZTVkNGRjMTZhZmNjZDhlMjExEgwIwumR2AYQ2PzthwIYASIWbWFya2VyLWhpCnNlY29uZCBsaW5lCg==";

    #[test]
    fn a_started_vertex_and_its_log() {
        let started = decode_trace(STARTED).unwrap();
        let vertex = &started.vertexes[0];
        assert_eq!(vertex.name, "[3/3] RUN echo \"marker-hi\" && echo second line");
        assert!(vertex.digest.starts_with("sha256:53778d1a5742"));
        assert!(vertex.started.is_some_and(|t| t > 1.7e9) && vertex.completed.is_none());
        let log = decode_trace(LOG).unwrap();
        assert_eq!(log.logs, [VertexLog { vertex: vertex.digest.clone(), msg: b"marker-hi\nsecond line\n".to_vec() }]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_trace("not base64!").is_err());
        assert!(decode_trace("CgI=").is_err()); // a vertex whose 2 bytes are missing
        assert!(decode_trace("/w==").is_err()); // a lone continuation byte
    }
}
