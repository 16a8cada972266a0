//! Framing and the bincode configuration, kept behind this crate's API so the
//! codec can be replaced without touching either peer.

use std::io::{self, Read, Write};

use bincode::{Decode, Encode};

use crate::{GuestMessage, HostMessage, ProtocolError, MAX_FRAME_LEN};

/// Bincode 2 with fixed-width little-endian integers and a decode limit equal
/// to the frame bound, so no length inside a frame can make it allocate more.
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_FRAME_LEN as usize }>()
}

/// A message that may travel on the wire.
pub trait WireMessage: Encode + Decode<()> + Sized {
    /// Checks bounds beyond what decoding checks.
    fn validate(&self) -> Result<(), ProtocolError>;
}

impl WireMessage for GuestMessage {
    fn validate(&self) -> Result<(), ProtocolError> {
        GuestMessage::validate(self)
    }
}

impl WireMessage for HostMessage {
    fn validate(&self) -> Result<(), ProtocolError> {
        HostMessage::validate(self)
    }
}

/// Encodes `msg` as one complete frame (length prefix included), appending it
/// to `out`. On error `out` is left as it was.
///
/// The message is not validated here (see [`WireMessage::validate`]); only
/// the frame bound is enforced, so a message too large to send is an
/// [`ProtocolError::Encode`] error rather than a frame the peer would refuse.
pub fn encode_frame<M: WireMessage>(msg: &M, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_value_frame(msg, out)
}

/// Encodes `GuestMessage::Audio(pcm.to_vec())` as one frame, byte for byte,
/// without copying `pcm` into a vector first: the guest's real-time IO
/// thread sends audio this way and so allocates nothing per chunk (`out`
/// keeps its capacity between sends). Not validated, like [`encode_frame`].
pub fn encode_audio_frame(pcm: &[u8], out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_value_frame(&AudioRef(pcm), out)
}

/// A borrowed twin of [`GuestMessage::Audio`] with the same encoding: the
/// derived `Encode` of an enum writes the variant index as a `u32` and then
/// the fields, and a byte slice encodes exactly like a `Vec<u8>` (length,
/// then bytes). `audio_frame_matches_the_owned_encoding` holds it to that.
struct AudioRef<'a>(&'a [u8]);

/// Index of [`GuestMessage::Audio`] among the enum's variants.
const AUDIO_VARIANT: u32 = 1;

impl Encode for AudioRef<'_> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        AUDIO_VARIANT.encode(encoder)?;
        self.0.encode(encoder)
    }
}

/// Appends `value` as one frame; on error `out` is left as it was.
fn encode_value_frame<T: Encode>(value: &T, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = bincode::encode_into_std_write(value, out, config()) {
        out.truncate(start);
        return Err(ProtocolError::Encode(e.to_string()));
    }
    let len = out.len() - start - 4;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME_LEN)
        .ok_or_else(|| {
            out.truncate(start);
            ProtocolError::Encode(format!("{len} bytes exceeds the frame maximum"))
        })?;
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}

/// Checks a frame length read from the wire before anything is allocated.
fn check_len(len: u32) -> Result<usize, ProtocolError> {
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as usize)
}

/// Decodes and validates one frame payload (the length prefix excluded).
fn decode_payload<M: WireMessage>(payload: &[u8]) -> Result<M, ProtocolError> {
    let (msg, used): (M, usize) = bincode::decode_from_slice(payload, config())
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(ProtocolError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    msg.validate()?;
    Ok(msg)
}

/// Writes one message as a frame and flushes nothing: callers buffer.
pub fn write_frame<M: WireMessage, W: Write>(w: &mut W, msg: &M) -> Result<(), ProtocolError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Reads exactly one frame from a blocking reader. A clean end of stream
/// before the first byte is [`ProtocolError::Closed`]; one inside a frame is
/// [`ProtocolError::Truncated`].
pub fn read_frame<M: WireMessage, R: Read>(r: &mut R) -> Result<M, ProtocolError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = check_len(u32::from_le_bytes(prefix))?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtocolError::Truncated
        } else {
            e.into()
        }
    })?;
    decode_payload(&payload)
}

/// Incremental decoder for non-blocking sockets: feed it whatever arrived, and
/// take whole messages out. Its buffer never holds more than one maximal frame
/// plus what was fed at once.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// An empty reader, at the start of a frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes. Frames already taken out are discarded first,
    /// so the buffer does not grow with the history of the stream even if the
    /// caller takes only one message per feed.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed as a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes are useful before the next frame is complete; lets
    /// a reader bound its reads so the buffer stays within one frame.
    ///
    /// Never 0, so it can size a `read` directly (a 0-byte read would look
    /// like end of stream). It is 1 when a whole frame is already pending or
    /// the pending length prefix is invalid: call
    /// [`next_message`](Self::next_message) to take the message or the error.
    pub fn wanted(&self) -> usize {
        let pending = &self.buf[self.start..];
        if pending.len() < 4 {
            return 4 - pending.len();
        }
        let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]);
        match check_len(len) {
            Ok(len) => (len + 4).saturating_sub(pending.len()).max(1),
            Err(_) => 1,
        }
    }

    /// Takes the next complete message, if one has fully arrived. An error
    /// leaves the stream unusable: the caller must close the connection.
    pub fn next_message<M: WireMessage>(&mut self) -> Result<Option<M>, ProtocolError> {
        let pending = &self.buf[self.start..];
        if pending.len() < 4 {
            self.compact();
            return Ok(None);
        }
        let len = check_len(u32::from_le_bytes([
            pending[0], pending[1], pending[2], pending[3],
        ]))?;
        if pending.len() < 4 + len {
            self.compact();
            return Ok(None);
        }
        let msg = decode_payload(&pending[4..4 + len])?;
        self.start += 4 + len;
        Ok(Some(msg))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_AUDIO_CHUNK;

    #[test]
    fn audio_frame_matches_the_owned_encoding() {
        for len in [0, 1, 4, 959, 960, 4096, MAX_AUDIO_CHUNK] {
            let pcm: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut owned = vec![0xAA];
            encode_frame(&GuestMessage::Audio(pcm.clone()), &mut owned).unwrap();
            let mut borrowed = vec![0xAA];
            encode_audio_frame(&pcm, &mut borrowed).unwrap();
            assert_eq!(borrowed, owned, "{len} bytes");
            // And it decodes back to the same message (an empty chunk is
            // encodable but fails validation, as the owned one does).
            if len > 0 {
                let decoded: GuestMessage = read_frame(&mut &borrowed[1..]).unwrap();
                assert_eq!(decoded, GuestMessage::Audio(pcm));
            }
        }
    }

    #[test]
    fn oversized_audio_is_refused_and_leaves_out_untouched() {
        let pcm = vec![0u8; MAX_FRAME_LEN as usize];
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encode_audio_frame(&pcm, &mut out),
            Err(ProtocolError::Encode(_))
        ));
        assert_eq!(out, [1, 2, 3]);
    }
}
