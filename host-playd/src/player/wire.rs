//! The internal protocol between the guest-facing process and the player:
//! one message per `SOCK_SEQPACKET` packet, fixed little-endian layouts, a
//! tag byte first. Pure encoding and decoding; every length is checked
//! before anything is allocated, and a packet with bytes left over is an
//! error, so each side can treat any malformed packet as a broken peer.
//!
//! Requests (guest-facing → player) carry only what a guest's stream may
//! ask for; the player validates them again ([`super::serve`]). Reports
//! (player → guest-facing) carry stream events and status snapshots.
#![forbid(unsafe_code)]

use secure_tunnel_protocol::{SampleFormat, StreamSpec, MAX_AUDIO_CHUNK};
use thiserror::Error;

use crate::backend::{StreamId, StreamStatus};

/// Longest stream name carried (bytes of UTF-8); the guest protocol's own
/// bound is smaller, the player sanitises again.
pub const MAX_NAME: usize = 512;
/// Longest failure reason carried (bytes of UTF-8).
pub const MAX_REASON: usize = 512;
/// Most streams one status packet describes.
pub const MAX_STATUS_ENTRIES: usize = 1024;
/// Bytes of one status entry.
pub const STATUS_ENTRY_LEN: usize = 8 * 5 + 4 + 4 + 1;
/// Largest packet either side sends or accepts: a write of the largest
/// audio chunk a guest may send.
pub const MAX_PACKET: usize = 1 + 8 + MAX_AUDIO_CHUNK;
/// No volume cap in an [`Request::Open`].
pub const NO_VOLUME_CAP: u8 = u8::MAX;

const _: () = assert!(MAX_PACKET >= 1 + 2 + MAX_STATUS_ENTRIES * STATUS_ENTRY_LEN);

/// What the guest-facing process asks of the player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Open {
        id: StreamId,
        spec: StreamSpec,
        tlength_bytes: u32,
        /// Percent of normal volume, or [`NO_VOLUME_CAP`].
        volume_cap: u8,
        name: String,
    },
    Write {
        id: StreamId,
        data: Vec<u8>,
    },
    Cork {
        id: StreamId,
        corked: bool,
    },
    Flush {
        id: StreamId,
    },
    SetBuffer {
        id: StreamId,
        tlength_bytes: u32,
    },
    Close {
        id: StreamId,
    },
    /// Withdraw the last `bytes` written (the guest protocol's `Rewind`).
    Rewind {
        id: StreamId,
        bytes: u64,
    },
    /// Record from the player's own configured source (the request cannot
    /// name one).
    OpenCapture {
        id: StreamId,
        spec: StreamSpec,
        fragment_bytes: u32,
        name: String,
    },
}

/// One stream's snapshot, as the player sampled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusEntry {
    pub id: StreamId,
    /// Bytes of the stream the player had received when it sampled, so the
    /// other side can deduct what it sent since from `writable_bytes`.
    pub received_bytes: u64,
    pub status: StreamStatus,
}

/// What the player tells the guest-facing process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Whether the player is connected to the sound server (sent at start
    /// and on every change).
    Server {
        connected: bool,
    },
    Opened {
        id: StreamId,
        buffer_bytes: u32,
    },
    Failed {
        id: StreamId,
        reason: String,
    },
    Status(Vec<StatusEntry>),
    /// Audio recorded for a capture stream (see [`crate::backend::Captured`]).
    Captured {
        id: StreamId,
        host_time_usec: u64,
        delay_usec: u32,
        data: Vec<u8>,
    },
}

/// Bytes of a [`Report::Captured`] before its audio.
pub const CAPTURED_HEADER_LEN: usize = 1 + 8 + 8 + 4;
/// Most audio one [`Report::Captured`] carries.
pub const MAX_CAPTURED_CHUNK: usize = MAX_PACKET - CAPTURED_HEADER_LEN;

/// A packet that is not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("empty packet")]
    Empty,
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("packet ends inside {0}")]
    Truncated(&'static str),
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

mod tag {
    pub const OPEN: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const CORK: u8 = 3;
    pub const FLUSH: u8 = 4;
    pub const SET_BUFFER: u8 = 5;
    pub const CLOSE: u8 = 6;
    pub const OPEN_CAPTURE: u8 = 7;
    pub const REWIND: u8 = 8;

    pub const SERVER: u8 = 101;
    pub const OPENED: u8 = 102;
    pub const FAILED: u8 = 103;
    pub const STATUS: u8 = 104;
    pub const CAPTURED: u8 = 105;
}

fn format_code(format: SampleFormat) -> u8 {
    match format {
        SampleFormat::S16Le => 0,
        SampleFormat::S32Le => 1,
        SampleFormat::F32Le => 2,
    }
}

fn format_from(code: u8) -> Result<SampleFormat, WireError> {
    Ok(match code {
        0 => SampleFormat::S16Le,
        1 => SampleFormat::S32Le,
        2 => SampleFormat::F32Le,
        _ => {
            return Err(WireError::Invalid {
                field: "format",
                why: format!("code {code}"),
            })
        }
    })
}

/// Appends little-endian fields to a packet.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Format code, rate, channel count and map.
    fn spec(&mut self, spec: &StreamSpec) -> &mut Self {
        self.u8(format_code(spec.format))
            .u32(spec.rate)
            .u8(u8::try_from(spec.channel_map.len()).unwrap_or(u8::MAX));
        for &position in &spec.channel_map {
            self.u8(position);
        }
        self
    }
    /// A u16 length and the bytes of `text`, cut at a character boundary.
    fn text(&mut self, text: &str, max: usize) -> &mut Self {
        let mut end = text.len().min(max);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let len = u16::try_from(end).unwrap_or(u16::MAX);
        self.u16(len);
        self.0
            .extend_from_slice(&text.as_bytes()[..usize::from(len)]);
        self
    }
}

/// Takes little-endian fields off a packet.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::Invalid {
                field: what,
                why: format!("{v} is not a boolean"),
            }),
        }
    }
    fn text(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(WireError::Invalid {
                field: what,
                why: format!("{len} bytes, at most {max}"),
            });
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid {
            field: what,
            why: "not UTF-8".to_owned(),
        })
    }
    /// See [`Writer::spec`]; the values are checked by the player.
    fn spec(&mut self) -> Result<StreamSpec, WireError> {
        let format = format_from(self.u8("format")?)?;
        let rate = self.u32("rate")?;
        let channels = usize::from(self.u8("channels")?);
        let channel_map = self.take(channels, "channel map")?.to_vec();
        Ok(StreamSpec {
            format,
            rate,
            channel_map,
        })
    }
    /// The rest of the packet as audio of at most `max` bytes.
    fn audio(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let data = self.rest();
        if data.len() > max {
            return Err(WireError::Invalid {
                field: "audio",
                why: format!("{} bytes, at most {max}", data.len()),
            });
        }
        Ok(data.to_vec())
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.rest.len()))
        }
    }
}

impl Request {
    /// Appends the packet for this request to `out` (which it clears).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut w = Writer(out);
        match self {
            Request::Open {
                id,
                spec,
                tlength_bytes,
                volume_cap,
                name,
            } => {
                w.u8(tag::OPEN)
                    .u64(*id)
                    .spec(spec)
                    .u32(*tlength_bytes)
                    .u8(*volume_cap)
                    .text(name, MAX_NAME);
            }
            Request::Write { id, data } => {
                w.u8(tag::WRITE).u64(*id);
                w.0.extend_from_slice(data);
            }
            Request::Cork { id, corked } => {
                w.u8(tag::CORK).u64(*id).u8(u8::from(*corked));
            }
            Request::Flush { id } => {
                w.u8(tag::FLUSH).u64(*id);
            }
            Request::Rewind { id, bytes } => {
                w.u8(tag::REWIND).u64(*id).u64(*bytes);
            }
            Request::SetBuffer { id, tlength_bytes } => {
                w.u8(tag::SET_BUFFER).u64(*id).u32(*tlength_bytes);
            }
            Request::Close { id } => {
                w.u8(tag::CLOSE).u64(*id);
            }
            Request::OpenCapture {
                id,
                spec,
                fragment_bytes,
                name,
            } => {
                w.u8(tag::OPEN_CAPTURE)
                    .u64(*id)
                    .spec(spec)
                    .u32(*fragment_bytes)
                    .text(name, MAX_NAME);
            }
        }
    }

    /// Encodes a [`Request::Write`] without copying `data` into a request.
    pub fn encode_write(id: StreamId, data: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(1 + 8 + data.len());
        Writer(out).u8(tag::WRITE).u64(id);
        out.extend_from_slice(data);
    }

    /// Decodes one packet. The stream spec is only decoded here; whether
    /// its values are acceptable is the player's check.
    pub fn decode(packet: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader { rest: packet };
        let tag = r.u8("tag").map_err(|_| WireError::Empty)?;
        let request = match tag {
            tag::OPEN => Request::Open {
                id: r.u64("stream id")?,
                spec: r.spec()?,
                tlength_bytes: r.u32("tlength")?,
                volume_cap: r.u8("volume cap")?,
                name: r.text("name", MAX_NAME)?,
            },
            tag::OPEN_CAPTURE => Request::OpenCapture {
                id: r.u64("stream id")?,
                spec: r.spec()?,
                fragment_bytes: r.u32("fragment")?,
                name: r.text("name", MAX_NAME)?,
            },
            tag::WRITE => Request::Write {
                id: r.u64("stream id")?,
                data: r.audio(MAX_AUDIO_CHUNK)?,
            },
            tag::CORK => Request::Cork {
                id: r.u64("stream id")?,
                corked: r.bool("corked")?,
            },
            tag::FLUSH => Request::Flush {
                id: r.u64("stream id")?,
            },
            tag::REWIND => Request::Rewind {
                id: r.u64("stream id")?,
                bytes: r.u64("rewind bytes")?,
            },
            tag::SET_BUFFER => Request::SetBuffer {
                id: r.u64("stream id")?,
                tlength_bytes: r.u32("tlength")?,
            },
            tag::CLOSE => Request::Close {
                id: r.u64("stream id")?,
            },
            other => return Err(WireError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Report {
    /// Appends the packet for this report to `out` (which it clears).
    /// A status with more than [`MAX_STATUS_ENTRIES`] entries is cut there
    /// (the player never has that many streams).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut w = Writer(out);
        match self {
            Report::Server { connected } => {
                w.u8(tag::SERVER).u8(u8::from(*connected));
            }
            Report::Opened { id, buffer_bytes } => {
                w.u8(tag::OPENED).u64(*id).u32(*buffer_bytes);
            }
            Report::Failed { id, reason } => {
                w.u8(tag::FAILED).u64(*id).text(reason, MAX_REASON);
            }
            Report::Status(entries) => {
                let entries = &entries[..entries.len().min(MAX_STATUS_ENTRIES)];
                w.u8(tag::STATUS)
                    .u16(u16::try_from(entries.len()).unwrap_or(u16::MAX));
                for e in entries {
                    let s = &e.status;
                    w.u64(e.id)
                        .u64(e.received_bytes)
                        .u64(s.host_time_usec)
                        .u64(s.writable_bytes)
                        .u64(s.played_bytes)
                        .u32(s.device_latency_usec)
                        .u32(s.underruns)
                        .u8(u8::from(s.playing));
                }
            }
            Report::Captured {
                id,
                host_time_usec,
                delay_usec,
                data,
            } => {
                w.u8(tag::CAPTURED)
                    .u64(*id)
                    .u64(*host_time_usec)
                    .u32(*delay_usec);
                let data = &data[..data.len().min(MAX_CAPTURED_CHUNK)];
                w.0.extend_from_slice(data);
            }
        }
    }

    pub fn decode(packet: &[u8]) -> Result<Report, WireError> {
        let mut r = Reader { rest: packet };
        let tag = r.u8("tag").map_err(|_| WireError::Empty)?;
        let report = match tag {
            tag::SERVER => Report::Server {
                connected: r.bool("connected")?,
            },
            tag::OPENED => Report::Opened {
                id: r.u64("stream id")?,
                buffer_bytes: r.u32("buffer")?,
            },
            tag::FAILED => Report::Failed {
                id: r.u64("stream id")?,
                reason: r.text("reason", MAX_REASON)?,
            },
            tag::STATUS => {
                let count = usize::from(r.u16("status count")?);
                if count > MAX_STATUS_ENTRIES {
                    return Err(WireError::Invalid {
                        field: "status count",
                        why: format!("{count}, at most {MAX_STATUS_ENTRIES}"),
                    });
                }
                if r.rest.len() != count * STATUS_ENTRY_LEN {
                    return Err(WireError::Truncated("status entries"));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = r.u64("stream id")?;
                    let received_bytes = r.u64("received")?;
                    let status = StreamStatus {
                        host_time_usec: r.u64("host time")?,
                        writable_bytes: r.u64("writable")?,
                        played_bytes: r.u64("played")?,
                        device_latency_usec: r.u32("device latency")?,
                        underruns: r.u32("underruns")?,
                        playing: r.bool("playing")?,
                    };
                    entries.push(StatusEntry {
                        id,
                        received_bytes,
                        status,
                    });
                }
                Report::Status(entries)
            }
            tag::CAPTURED => Report::Captured {
                id: r.u64("stream id")?,
                host_time_usec: r.u64("host time")?,
                delay_usec: r.u32("delay")?,
                data: r.audio(MAX_CAPTURED_CHUNK)?,
            },
            other => return Err(WireError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec {
            format: SampleFormat::S32Le,
            rate: 44_100,
            channel_map: vec![1, 2],
        }
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Open {
                id: 7,
                spec: spec(),
                tlength_bytes: 17_640,
                volume_cap: 80,
                name: "Flöte".to_owned(),
            },
            Request::Write {
                id: u64::MAX,
                data: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
            Request::Write {
                id: 1,
                data: vec![0; MAX_AUDIO_CHUNK],
            },
            Request::Cork {
                id: 3,
                corked: true,
            },
            Request::Flush { id: 4 },
            Request::SetBuffer {
                id: 5,
                tlength_bytes: 999,
            },
            Request::Close { id: 6 },
            Request::Rewind {
                id: 8,
                bytes: 11_520,
            },
            Request::OpenCapture {
                id: 8,
                spec: spec(),
                fragment_bytes: 1_764,
                name: "Mic".to_owned(),
            },
        ]
    }

    fn reports() -> Vec<Report> {
        let status = StreamStatus {
            host_time_usec: 1,
            writable_bytes: 2,
            played_bytes: 3,
            device_latency_usec: 4,
            underruns: 5,
            playing: true,
        };
        vec![
            Report::Server { connected: true },
            Report::Opened {
                id: 9,
                buffer_bytes: 1234,
            },
            Report::Failed {
                id: 9,
                reason: "gone".to_owned(),
            },
            Report::Status(vec![]),
            Report::Captured {
                id: 8,
                host_time_usec: 77,
                delay_usec: 12_000,
                data: vec![1; 8],
            },
            Report::Captured {
                id: 8,
                host_time_usec: 77,
                delay_usec: 12_000,
                data: vec![2; MAX_CAPTURED_CHUNK],
            },
            Report::Status(vec![
                StatusEntry {
                    id: 1,
                    received_bytes: 10,
                    status,
                };
                MAX_STATUS_ENTRIES
            ]),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut buf = Vec::new();
        for request in requests() {
            request.encode(&mut buf);
            assert!(buf.len() <= MAX_PACKET);
            assert_eq!(Request::decode(&buf).unwrap(), request);
        }
        for report in reports() {
            report.encode(&mut buf);
            assert!(buf.len() <= MAX_PACKET, "{}", buf.len());
            assert_eq!(Report::decode(&buf).unwrap(), report);
        }
        Request::encode_write(5, &[9, 9], &mut buf);
        assert_eq!(
            Request::decode(&buf).unwrap(),
            Request::Write {
                id: 5,
                data: vec![9, 9]
            }
        );
    }

    #[test]
    fn every_truncation_and_every_extension_is_an_error() {
        let mut buf = Vec::new();
        for request in requests() {
            request.encode(&mut buf);
            // A write's audio is the rest of the packet: any cut after the
            // id is still a (shorter) write.
            let min = if matches!(request, Request::Write { .. }) {
                9
            } else {
                buf.len()
            };
            for cut in 0..min {
                assert!(
                    Request::decode(&buf[..cut]).is_err(),
                    "{request:?} cut {cut}"
                );
            }
            if !matches!(request, Request::Write { .. }) {
                buf.push(0);
                assert!(matches!(Request::decode(&buf), Err(WireError::Trailing(1))));
            }
        }
        for report in reports() {
            report.encode(&mut buf);
            // Captured audio is the rest of the packet, like a write's.
            let captured = matches!(report, Report::Captured { .. });
            let min = if captured {
                CAPTURED_HEADER_LEN
            } else {
                buf.len()
            };
            for cut in 0..min {
                assert!(Report::decode(&buf[..cut]).is_err(), "{report:?} cut {cut}");
            }
            let full = buf.len() == MAX_PACKET;
            buf.push(0);
            if !captured || full {
                assert!(Report::decode(&buf).is_err(), "{report:?} extended");
            }
        }
    }

    #[test]
    fn bad_fields_are_refused() {
        assert_eq!(Request::decode(&[]), Err(WireError::Empty));
        assert_eq!(Request::decode(&[0]), Err(WireError::UnknownTag(0)));
        assert_eq!(Report::decode(&[1]), Err(WireError::UnknownTag(1)));
        let mut cork = vec![tag::CORK];
        cork.extend_from_slice(&1u64.to_le_bytes());
        cork.push(2);
        assert!(matches!(
            Request::decode(&cork),
            Err(WireError::Invalid {
                field: "corked",
                ..
            })
        ));
        let mut write = vec![tag::WRITE];
        write.extend_from_slice(&1u64.to_le_bytes());
        write.resize(9 + MAX_AUDIO_CHUNK + 1, 0);
        assert!(Request::decode(&write).is_err());
        let mut open = Vec::new();
        requests()[0].encode(&mut open);
        open[9] = 3; // format code
        assert!(Request::decode(&open).is_err());
        let mut status = vec![tag::STATUS];
        status.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(Report::decode(&status).is_err());
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let name = "é".repeat(MAX_NAME);
        let mut buf = Vec::new();
        Request::Open {
            id: 1,
            spec: spec(),
            tlength_bytes: 8,
            volume_cap: NO_VOLUME_CAP,
            name,
        }
        .encode(&mut buf);
        match Request::decode(&buf).unwrap() {
            Request::Open { name, .. } => {
                assert!(name.len() <= MAX_NAME && name.len() >= MAX_NAME - 1);
                assert!(name.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }
}
