//! Parsers fed arbitrary input never panic: the configuration file, protobuf
//! messages as they come off the wire, the framed transport's reader, and the
//! checks that turn messages into engine inputs. (Covered: decoding and checking.
//! Not covered here: the daemon's state machine around them, which the cluster
//! tests drive with malformed messages.)

use proptest::prelude::*;
use prost::Message;
use rgfs_dlm::cluster::config::Config;
use rgfs_dlm::proto::{self as pb, check_lvb, check_mode, check_name, op_lock_id, status_from_wire};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_parse_never_panics(text in ".{0,400}") {
        let _ = Config::parse(&text);
    }

    #[test]
    fn config_parse_never_panics_on_near_valid_toml(
        id in any::<u32>(), weight in any::<u32>(), name in "[a-z]{0,3}", address in "[0-9.:]{0,25}",
    ) {
        let text = format!("cluster_name = \"{name}\"\nkey_file = \"k\"\n[[node]]\nid = {id}\nname = \"{name}\"\naddress = \"{address}\"\nweight = {weight}\n");
        let _ = Config::parse(&text);
    }

    #[test]
    fn wire_messages_decode_and_check_without_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), lvb_len in 0u32..40) {
        if let Ok(message) = pb::ClientMessage::decode(bytes.as_slice()) {
            if let Some(pb::client_message::Kind::Ops(batch)) = message.kind {
                for op in &batch.ops {
                    let _ = op_lock_id(op);
                    match op.kind.as_ref() {
                        Some(pb::op::Kind::Request(r)) => { let _ = (check_name(&r.name), check_mode(r.mode)); }
                        Some(pb::op::Kind::Convert(c)) => { let _ = (check_mode(c.mode), check_lvb(&c.lvb, lvb_len)); }
                        Some(pb::op::Kind::Unlock(u)) => { let _ = check_lvb(&u.lvb, lvb_len); }
                        _ => {}
                    }
                }
            }
        }
        if let Ok(message) = pb::PeerMessage::decode(bytes.as_slice()) {
            if let Some(pb::peer_message::Kind::Batch(batch)) = message.kind {
                for event in batch.events {
                    if let Some(pb::event::Kind::Completion(c)) = event.event.and_then(|e| e.kind) {
                        let _ = status_from_wire(c.status);
                    }
                }
            }
        }
        let _ = pb::ServerMessage::decode(bytes.as_slice());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// The framed transport's reader, fed arbitrary bytes (frames of any length,
    /// truncated, oversize, garbage inside), ends with an error or the end of the
    /// input, never a panic.
    #[test]
    fn framed_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), valid_prefix in any::<bool>()) {
        let mut input = Vec::new();
        if valid_prefix {
            // One well-formed frame first, so the fuzzing also reaches a second frame.
            let message = pb::ClientMessage { kind: Some(pb::client_message::Kind::Ops(pb::OpBatch::default())) };
            let mut frame = bytes::BytesMut::new();
            rgfs_dlm::proto::framing::encode_frame(&mut rgfs_dlm::proto::framing::codec(), &message, &mut frame).unwrap();
            input.extend_from_slice(&frame);
        }
        input.extend_from_slice(&bytes);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut reader = rgfs_dlm::proto::framing::FrameReader::<_, pb::ClientMessage>::new(input.as_slice());
            for _ in 0..input.len() + 1 {
                match reader.next_message().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => { prop_assert!(e.is_malformed()); break; }
                    None => break,
                }
            }
            Ok(())
        })?;
    }
}
