//! Hostile lengths must be refused before memory is allocated for them.
//!
//! A counting global allocator records the largest single allocation. This
//! file holds one test only, so no other test thread disturbs the count.
#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use secure_tunnel_protocol::{
    encode_frame, read_frame, FrameReader, GuestMessage, ProtocolError, MAX_FRAME_LEN,
};

struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn largest_allocation_during(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::SeqCst);
    f();
    LARGEST.load(Ordering::SeqCst)
}

#[test]
fn hostile_lengths_do_not_allocate() {
    // Generous for error strings and the like, far below what is claimed.
    const SMALL: usize = 4096;

    for len in [MAX_FRAME_LEN + 1, u32::MAX] {
        let prefix = len.to_le_bytes();
        let largest = largest_allocation_during(|| {
            let mut reader = FrameReader::new();
            reader.feed(&prefix);
            assert!(matches!(
                reader.next_message::<GuestMessage>(),
                Err(ProtocolError::FrameTooLong { .. })
            ));
            assert!(matches!(
                read_frame::<GuestMessage, _>(&mut Cursor::new(prefix)),
                Err(ProtocolError::FrameTooLong { .. })
            ));
        });
        assert!(largest < SMALL, "prefix {len}: allocated {largest} bytes");
    }

    // Inner lengths far beyond the frame: an Audio vector and a Goodbye
    // string. Decoding may allocate the frame itself (small here) but not
    // the claimed length.
    for tag in [1u32, 7] {
        for claimed in [MAX_FRAME_LEN as u64 + 1, 1 << 30, u64::MAX] {
            let mut payload = tag.to_le_bytes().to_vec();
            payload.extend_from_slice(&claimed.to_le_bytes());
            payload.extend_from_slice(b"abcd");
            let mut bytes = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
            bytes.extend_from_slice(&payload);
            let largest = largest_allocation_during(|| {
                let mut reader = FrameReader::new();
                reader.feed(&bytes);
                assert!(matches!(
                    reader.next_message::<GuestMessage>(),
                    Err(ProtocolError::Decode(_))
                ));
                assert!(matches!(
                    read_frame::<GuestMessage, _>(&mut Cursor::new(&bytes)),
                    Err(ProtocolError::Decode(_))
                ));
            });
            assert!(
                largest < SMALL,
                "tag {tag}, claimed {claimed}: allocated {largest} bytes"
            );
        }
    }

    // A reader that takes one message per feed while the peer stays a frame
    // ahead must not keep the stream's history in its buffer.
    let mut frame = Vec::new();
    encode_frame(&GuestMessage::Audio(vec![1; 1000]), &mut frame).unwrap();
    let largest = largest_allocation_during(|| {
        let mut reader = FrameReader::new();
        reader.feed(&frame);
        for _ in 0..1000 {
            reader.feed(&frame);
            assert!(reader.next_message::<GuestMessage>().unwrap().is_some());
            assert_eq!(reader.pending(), frame.len());
        }
    });
    assert!(
        largest < 8 * frame.len(),
        "FrameReader buffer grew to {largest} bytes"
    );
}
