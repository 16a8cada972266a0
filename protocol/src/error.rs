use thiserror::Error;

/// Everything that can be wrong with bytes received from a peer.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLong { len: u32, max: u32 },
    #[error("empty frame (length 0)")]
    EmptyFrame,
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("message has {extra} trailing bytes after its end")]
    TrailingBytes { extra: usize },
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
