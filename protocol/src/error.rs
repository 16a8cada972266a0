use thiserror::Error;

/// Everything that can be wrong with bytes received from a peer.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// A length prefix above [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN); nothing
    /// was allocated for it.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLong { len: u32, max: u32 },
    /// A length prefix of 0: no message is empty on the wire.
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// The payload is not a valid encoding (unknown tag, bad UTF-8, a length
    /// beyond the frame, ...).
    #[error("malformed message: {0}")]
    Decode(String),
    /// The payload holds a whole message followed by `extra` more bytes.
    #[error("message has {extra} trailing bytes after its end")]
    TrailingBytes { extra: usize },
    /// A message could not be encoded, e.g. it would exceed the frame bound.
    #[error("could not encode message: {0}")]
    Encode(String),
    /// The message decoded but a field is out of the protocol's bounds.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// End of stream at a frame boundary.
    #[error("connection closed by peer")]
    Closed,
    /// End of stream inside a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The underlying reader or writer failed.
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
