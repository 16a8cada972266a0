//! Every message variant survives both codec paths, however the bytes arrive.
#![allow(clippy::unwrap_used)] // tests panic on purpose

mod common;

use std::io::{self, Cursor, Read};

use common::{all_guest, all_host};
use secure_tunnel_protocol::{
    encode_frame, read_frame, write_frame, FrameReader, GuestMessage, HostMessage, ProtocolError,
    WireMessage, MAX_AUDIO_CHUNK, MAX_FRAME_LEN,
};

fn roundtrip_frame_reader<M: WireMessage + PartialEq + std::fmt::Debug>(msg: &M) {
    let mut bytes = Vec::new();
    encode_frame(msg, &mut bytes).unwrap();
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    assert_eq!(len as usize, bytes.len() - 4, "length prefix of {msg:?}");

    let mut reader = FrameReader::new();
    reader.feed(&bytes);
    assert_eq!(reader.next_message::<M>().unwrap().as_ref(), Some(msg));
    assert_eq!(reader.next_message::<M>().unwrap(), None);
    assert_eq!(reader.pending(), 0);
}

fn roundtrip_stream<M: WireMessage + PartialEq + std::fmt::Debug>(msg: &M) {
    let mut wire = Vec::new();
    write_frame(&mut wire, msg).unwrap();
    let mut encoded = Vec::new();
    encode_frame(msg, &mut encoded).unwrap();
    assert_eq!(wire, encoded, "write_frame and encode_frame disagree");

    let mut cursor = Cursor::new(wire);
    assert_eq!(&read_frame::<M, _>(&mut cursor).unwrap(), msg);
    assert!(matches!(
        read_frame::<M, _>(&mut cursor),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn every_guest_variant_round_trips() {
    for msg in all_guest() {
        roundtrip_frame_reader(&msg);
        roundtrip_stream(&msg);
    }
}

#[test]
fn every_host_variant_round_trips() {
    for msg in all_host() {
        roundtrip_frame_reader(&msg);
        roundtrip_stream(&msg);
    }
}

#[test]
fn largest_audio_chunk_fits_in_a_frame() {
    let msg = GuestMessage::Audio(vec![0xa5; MAX_AUDIO_CHUNK]);
    let mut bytes = Vec::new();
    encode_frame(&msg, &mut bytes).unwrap();
    assert!(bytes.len() - 4 <= MAX_FRAME_LEN as usize);
    // tag (4) + vector length (8) + data
    assert_eq!(bytes.len() - 4, 12 + MAX_AUDIO_CHUNK);
    roundtrip_frame_reader(&msg);
    roundtrip_stream(&msg);
}

fn all_guest_bytes() -> Vec<u8> {
    let mut bytes = Vec::new();
    for msg in all_guest() {
        encode_frame(&msg, &mut bytes).unwrap();
    }
    bytes
}

fn drain<M: WireMessage>(reader: &mut FrameReader, out: &mut Vec<M>) {
    while let Some(msg) = reader.next_message().unwrap() {
        out.push(msg);
    }
}

#[test]
fn several_frames_in_one_feed() {
    let mut reader = FrameReader::new();
    reader.feed(&all_guest_bytes());
    let mut got = Vec::new();
    drain::<GuestMessage>(&mut reader, &mut got);
    assert_eq!(got, all_guest());
    assert_eq!(reader.pending(), 0);
}

#[test]
fn byte_by_byte_feed_yields_the_same_messages() {
    let bytes = all_guest_bytes();
    let mut reader = FrameReader::new();
    let mut got = Vec::new();
    for &b in &bytes {
        reader.feed(&[b]);
        drain::<GuestMessage>(&mut reader, &mut got);
    }
    assert_eq!(got, all_guest());
    assert_eq!(reader.pending(), 0);
}

#[test]
fn host_messages_byte_by_byte() {
    let mut bytes = Vec::new();
    for msg in all_host() {
        encode_frame(&msg, &mut bytes).unwrap();
    }
    let mut reader = FrameReader::new();
    let mut got = Vec::new();
    for &b in &bytes {
        reader.feed(&[b]);
        drain::<HostMessage>(&mut reader, &mut got);
    }
    assert_eq!(got, all_host());
}

#[test]
fn wanted_counts_down_to_a_whole_frame() {
    let mut bytes = Vec::new();
    encode_frame(&GuestMessage::Audio(vec![7; 100]), &mut bytes).unwrap();
    let mut reader = FrameReader::new();
    assert_eq!(reader.wanted(), 4);
    reader.feed(&bytes[..3]);
    assert_eq!(reader.wanted(), 1);
    reader.feed(&bytes[3..10]);
    assert_eq!(reader.wanted(), bytes.len() - 10);
    // Feeding exactly what is wanted completes the frame.
    let want = reader.wanted();
    reader.feed(&bytes[10..10 + want]);
    assert_eq!(reader.pending(), bytes.len());
    assert!(reader.next_message::<GuestMessage>().unwrap().is_some());
    assert_eq!(reader.wanted(), 4);
}

#[test]
fn encode_frame_appends_to_existing_bytes() {
    let mut out = b"xyz".to_vec();
    encode_frame(&GuestMessage::Cork, &mut out).unwrap();
    assert_eq!(&out[..3], b"xyz");
    assert_eq!(out[3..], [4, 0, 0, 0, 2, 0, 0, 0]);
}

#[test]
fn encode_frame_refuses_oversized_message_and_leaves_output_alone() {
    let mut out = b"keep".to_vec();
    let too_big = GuestMessage::Audio(vec![0; MAX_FRAME_LEN as usize]);
    assert!(matches!(
        encode_frame(&too_big, &mut out),
        Err(ProtocolError::Encode(_))
    ));
    assert_eq!(out, b"keep");
    let mut sink = Vec::new();
    assert!(matches!(
        write_frame(&mut sink, &too_big),
        Err(ProtocolError::Encode(_))
    ));
    assert!(sink.is_empty(), "nothing may reach the wire");
}

/// Hands out at most one byte per read, with an `Interrupted` before each.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    interrupt: bool,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.pos == self.data.len() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.data[self.pos];
        self.pos += 1;
        Ok(1)
    }
}

#[test]
fn read_frame_copes_with_short_and_interrupted_reads() {
    let mut r = Trickle {
        data: all_guest_bytes(),
        pos: 0,
        interrupt: false,
    };
    let mut got = Vec::new();
    loop {
        match read_frame::<GuestMessage, _>(&mut r) {
            Ok(msg) => got.push(msg),
            Err(ProtocolError::Closed) => break,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(got, all_guest());
}

#[test]
fn read_frame_passes_io_errors_through() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }
    match read_frame::<GuestMessage, _>(&mut Broken) {
        Err(ProtocolError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected Io error, got {other:?}"),
    }
}
