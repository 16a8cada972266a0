use bincode::{Decode, Encode};

use crate::ProtocolError;

/// Sample formats the tunnel carries. All are little-endian and interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SampleFormat {
    /// Signed 16-bit integer.
    S16Le,
    /// Signed 32-bit integer.
    S32Le,
    /// IEEE-754 32-bit float, nominal range -1.0..=1.0.
    F32Le,
}

impl SampleFormat {
    /// Bytes in one sample of one channel.
    pub const fn sample_size(self) -> u32 {
        match self {
            SampleFormat::S16Le => 2,
            SampleFormat::S32Le | SampleFormat::F32Le => 4,
        }
    }

    /// The name PulseAudio uses for this format (`pa_sample_format_to_string`).
    pub const fn pulse_name(self) -> &'static str {
        match self {
            SampleFormat::S16Le => "s16le",
            SampleFormat::S32Le => "s32le",
            SampleFormat::F32Le => "float32le",
        }
    }
}

/// Channel position codes are PulseAudio's `pa_channel_position_t` values
/// (0 = mono, 1 = front-left, 2 = front-right, ...); anything at or above
/// this is rejected.
pub const CHANNEL_POSITION_LIMIT: u8 = 51;

/// Lowest and highest sample rates accepted, in Hz.
pub const MIN_RATE: u32 = 8_000;
/// See [`MIN_RATE`].
pub const MAX_RATE: u32 = 192_000;
/// Most channels in one stream.
pub const MAX_CHANNELS: u8 = 8;

/// The shape of the audio a guest sends: format, rate and channel layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct StreamSpec {
    /// Sample encoding.
    pub format: SampleFormat,
    /// Frames per second.
    pub rate: u32,
    /// One position code per channel; its length is the channel count.
    pub channel_map: Vec<u8>,
}

impl StreamSpec {
    /// Checks every field against the protocol's bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if !(MIN_RATE..=MAX_RATE).contains(&self.rate) {
            return Err(ProtocolError::invalid(
                "rate",
                format!("{} Hz is outside {MIN_RATE}..={MAX_RATE}", self.rate),
            ));
        }
        let channels = self.channel_map.len();
        if channels == 0 || channels > usize::from(MAX_CHANNELS) {
            return Err(ProtocolError::invalid(
                "channel_map",
                format!("{channels} channels is outside 1..={MAX_CHANNELS}"),
            ));
        }
        if let Some(bad) = self
            .channel_map
            .iter()
            .find(|&&p| p >= CHANNEL_POSITION_LIMIT)
        {
            return Err(ProtocolError::invalid(
                "channel_map",
                format!("unknown channel position {bad}"),
            ));
        }
        Ok(())
    }

    /// Number of channels.
    pub fn channels(&self) -> u8 {
        // validate() bounds the length to MAX_CHANNELS; saturate for unvalidated specs.
        u8::try_from(self.channel_map.len()).unwrap_or(u8::MAX)
    }

    /// Bytes in one frame (one sample of every channel).
    pub fn frame_size(&self) -> u32 {
        self.format.sample_size() * u32::from(self.channels())
    }

    /// Bytes per second of audio.
    pub fn bytes_per_second(&self) -> u64 {
        u64::from(self.frame_size()) * u64::from(self.rate)
    }

    /// Duration of `bytes` of audio, in microseconds (rounded down; saturates
    /// at `u64::MAX`). A spec with no channels or a zero rate counts as one
    /// byte per second rather than dividing by zero.
    pub fn bytes_to_usec(&self, bytes: u64) -> u64 {
        let bps = self.bytes_per_second().max(1);
        let usec = u128::from(bytes) * 1_000_000 / u128::from(bps);
        u64::try_from(usec).unwrap_or(u64::MAX)
    }

    /// Bytes in `usec` microseconds of audio, rounded down to whole frames
    /// (saturates at `u64::MAX`).
    pub fn usec_to_bytes(&self, usec: u64) -> u64 {
        let frames = u128::from(usec) * u128::from(self.rate) / 1_000_000;
        u64::try_from(frames)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.frame_size()))
    }
}
