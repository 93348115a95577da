//! The server's parser driven from memory with random input: random bytes
//! from the first byte, and random request frames after a valid handshake.
//! It must never panic and always end; every reply it sends is a
//! well-formed simple reply to a request that was sent, and nothing outside
//! the writes it acknowledged changes on the device.

use std::io::{self, Cursor, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rgfs_block::{BlockDevice, MemDevice};
use rgfs_nbd::proto::*;
use rgfs_nbd::session::{serve, Conn, Export, Limits};

const SIZE: usize = 256 * 1024;
const MAX_REQUEST: u32 = 64 * 1024;

/// Input from a buffer, output into one; EOF ends the session.
struct Mem {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.input.read(b)
    }
}

impl Write for Mem {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for Mem {
    fn set_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

fn run(input: Vec<u8>) -> (Arc<MemDevice>, Vec<u8>) {
    let dev = Arc::new(MemDevice::from_bytes(vec![0x5a; SIZE]));
    let exports = [Export { name: "disk".into(), device: dev.clone(), read_only: false }];
    let limits = Limits { max_request: MAX_REQUEST, ..Limits::default() };
    let mut conn = Mem { input: Cursor::new(input), output: Vec::new() };
    let _ = serve(&mut conn, &exports, &limits);
    (dev, conn.output)
}

/// A valid client handshake, up to the start of transmission.
fn handshake() -> Vec<u8> {
    let mut h = 3u32.to_be_bytes().to_vec();
    h.extend(option_request(OPT_GO, &encode_info_request("disk", &[])));
    h
}

#[derive(Debug, Clone)]
struct Frame {
    good_magic: bool,
    kind: u16,
    flags: u16,
    offset: u64,
    len: u32,
    /// How much payload actually follows (may be less or more than `len`).
    payload: usize,
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        prop::bool::weighted(0.97),
        prop_oneof![Just(CMD_READ), Just(CMD_WRITE), Just(CMD_FLUSH), Just(CMD_TRIM), Just(CMD_WRITE_ZEROES), Just(CMD_DISC), any::<u16>()],
        prop_oneof![Just(0u16), Just(CMD_FLAG_FUA), Just(CMD_FLAG_NO_HOLE), any::<u16>()],
        prop_oneof![0..SIZE as u64, (SIZE as u64 - 8192)..(SIZE as u64 + 8192), any::<u64>()],
        prop_oneof![0..8192u32, (MAX_REQUEST - 2)..(MAX_REQUEST + 2), any::<u32>()],
        0..9000usize,
    )
        .prop_map(|(good_magic, kind, flags, offset, len, payload)| Frame { good_magic, kind, flags, offset, len, payload })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_and_end(bytes in prop::collection::vec(any::<u8>(), 0..2048), prefix in any::<bool>()) {
        // With or without a valid handshake first; `run` returning at all
        // (input exhausted) is the property, with no panic on the way.
        let input = if prefix { [handshake(), bytes].concat() } else { bytes };
        let (dev, _) = run(input);
        prop_assert_eq!(dev.size(), SIZE as u64);
    }

    #[test]
    fn random_frames_get_well_formed_replies(frames in prop::collection::vec(frame(), 1..12)) {
        let mut input = handshake();
        for (i, f) in frames.iter().enumerate() {
            let magic = if f.good_magic { REQUEST_MAGIC } else { 0xdead_beef };
            input.extend_from_slice(&magic.to_be_bytes());
            input.extend_from_slice(&f.flags.to_be_bytes());
            input.extend_from_slice(&f.kind.to_be_bytes());
            input.extend_from_slice(&(i as u64).to_be_bytes());
            input.extend_from_slice(&f.offset.to_be_bytes());
            input.extend_from_slice(&f.len.to_be_bytes());
            input.extend(std::iter::repeat_n(0xa0 | i as u8, f.payload));
        }
        let (dev, out) = run(input);
        // Skip the handshake's replies: greeting (18 bytes), then option
        // replies up to the ACK.
        let mut pos = 18;
        loop {
            prop_assert!(out.len() >= pos + 20, "handshake replies cut short");
            let kind = be32(&out[pos + 12..pos + 16]);
            pos += 20 + be32(&out[pos + 16..pos + 20]) as usize;
            if kind == REP_ACK { break; }
        }
        // Then simple replies, each to a frame that was sent, in order.
        let mut next = 0usize;
        let mut allowed = vec![false; SIZE];
        while pos < out.len() {
            prop_assert!(out.len() >= pos + REPLY_LEN, "a reply was cut short");
            prop_assert_eq!(be32(&out[pos..pos + 4]), SIMPLE_REPLY_MAGIC);
            let error = be32(&out[pos + 4..pos + 8]);
            let cookie = be64(&out[pos + 8..pos + 16]) as usize;
            prop_assert!(cookie >= next && cookie < frames.len(), "reply to cookie {} out of order", cookie);
            next = cookie + 1;
            pos += REPLY_LEN;
            let f = &frames[cookie];
            if error == 0 {
                prop_assert!(f.good_magic && f.kind != CMD_DISC);
                let end = f.offset.checked_add(u64::from(f.len));
                if matches!(f.kind, CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM) {
                    prop_assert!(end.is_some_and(|e| e <= SIZE as u64), "success out of range: {:?}", f);
                }
                if f.kind == CMD_READ {
                    pos += f.len as usize;
                } else if f.kind == CMD_WRITE || f.kind == CMD_WRITE_ZEROES {
                    allowed[f.offset as usize..end.unwrap() as usize].fill(true);
                }
            }
        }
        prop_assert!(pos == out.len());
        // Bytes no acknowledged write covered are as they were.
        let snap = dev.snapshot();
        for (i, b) in snap.iter().enumerate() {
            prop_assert!(allowed[i] || *b == 0x5a, "byte {} changed without an acknowledged write", i);
        }
    }
}

#[test]
fn a_valid_session_through_the_same_harness() {
    let mut input = handshake();
    let mut req = Vec::new();
    Request { flags: CMD_FLAG_FUA, kind: CMD_WRITE, cookie: 7, offset: 100, len: 3 }.encode(&mut req);
    input.extend(req);
    input.extend_from_slice(b"abc");
    let (dev, out) = run(input);
    let mut got = [0u8; 5];
    dev.read_at(99, &mut got).unwrap();
    assert_eq!(&got, b"\x5aabc\x5a");
    assert_eq!(dev.flush_count(), 1, "FUA flushes");
    let reply = &out[out.len() - REPLY_LEN..];
    assert_eq!((be32(&reply[0..4]), be32(&reply[4..8]), be64(&reply[8..16])), (SIMPLE_REPLY_MAGIC, 0, 7));
}
