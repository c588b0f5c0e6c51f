//! A length field inside a control message cannot make the decoder allocate more than the frame
//! holds: hostile frames that claim huge strings or lists are refused, and the largest allocation
//! made while decoding them is measured by a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use acms_protocol::{Control, ProtocolError, UserId};

/// The system allocator, recording the largest single allocation of the thread that measures.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Decodes `bytes` and returns the result with the largest allocation made meanwhile. Tests run
/// on several threads, so only this thread's allocations count, and one measurement runs at a time.
fn decode_measured(bytes: &[u8]) -> (Result<Control, ProtocolError>, usize) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    LARGEST.store(0, Ordering::Relaxed);
    MEASURING.with(|on| on.set(true));
    let decoded = Control::decode(bytes);
    MEASURING.with(|on| on.set(false));
    (decoded, LARGEST.load(Ordering::Relaxed))
}

/// A bincode varint length of `len` (the `fc` form, a little-endian `u32`).
fn claim(len: u32) -> Vec<u8> {
    let mut bytes = vec![0xfc];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// `prefix`, then `padding` bytes of filler: the frame is as large as an honest one may be, and
/// the claim inside it far larger.
fn frame(prefix: &[u8], padding: usize) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.resize(prefix.len() + padding, b'x');
    bytes
}

#[test]
fn a_string_claim_past_the_frame_allocates_nothing_of_its_size() {
    let claimed = 15 << 20;
    // Error { code: Malformed, message: <15 MiB> } in a 20 KiB body, past the small-input limit.
    let error = frame(&[&[2, 2][..], &claim(claimed)].concat(), 20 << 10);
    // Hello { version, server_id, client_addr: <15 MiB> } likewise.
    let hello = frame(&[&[0, 2, 7][..], &claim(claimed)].concat(), 20 << 10);
    for bytes in [error, hello] {
        let (decoded, largest) = decode_measured(&bytes);
        assert!(matches!(decoded, Err(ProtocolError::Decode(_))), "{decoded:?}");
        assert!(
            largest <= bytes.len(),
            "allocated {largest} bytes for a {} byte frame",
            bytes.len()
        );
    }
}

#[test]
fn a_list_claim_past_the_frame_allocates_nothing_of_its_size() {
    // Login { users: <a billion> } in 8 bytes; Servers likewise.
    for variant in [3, 4, 9] {
        let bytes = [&[variant][..], &claim(1_000_000_000)].concat();
        let (decoded, largest) = decode_measured(&bytes);
        assert!(decoded.is_err(), "{decoded:?}");
        assert!(largest <= 64, "allocated {largest} bytes for an {} byte frame", bytes.len());
    }
}

#[test]
fn an_over_long_user_id_is_refused_by_name_before_any_copy() {
    // Login { users: [<256 bytes>] }: one byte past the limit, present in full.
    let long = "u".repeat(UserId::MAX_LEN + 1);
    let bytes = [&[3, 1, 0xfb][..], &256u16.to_le_bytes(), long.as_bytes()].concat();
    let (decoded, largest) = decode_measured(&bytes);
    let err = decoded.unwrap_err();
    assert!(err.to_string().contains("user id is 256 bytes long, the limit is 255"), "{err}");
    assert!(largest < 256, "copied the id ({largest} bytes) before refusing it");
}

#[test]
fn honest_messages_still_decode() {
    let users: Vec<_> = (0..1000).map(|i| UserId::new(&format!("user-{i}")).unwrap()).collect();
    let login = Control::Login { users };
    let mut bytes = bytes::BytesMut::new();
    login.encode_into(&mut bytes).unwrap();
    let (decoded, largest) = decode_measured(&bytes);
    assert_eq!(decoded.unwrap(), login);
    // A list grows as it decodes: at most twice what its items take.
    assert!(largest <= 2 * 1000 * std::mem::size_of::<UserId>(), "{largest}");
}
