//! Every protobuf the relay or a client decodes from the network must decode without panicking,
//! and what decodes must survive a re-encode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon_wire::msg;
use prost::Message;

fn round_trips<M: Message + PartialEq + Default + std::fmt::Debug>(decoded: &M) {
    let again = M::decode(decoded.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(&again, decoded, "re-encoding changed the message");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = msg::decode_request(data) {
        round_trips(&m);
    }
    if let Ok(m) = msg::decode_server_message(data) {
        round_trips(&m);
    }
    if let Ok(m) = msg::decode_client_hello(data) {
        round_trips(&m);
    }
    if let Ok(m) = msg::decode_server_hello(data) {
        round_trips(&m);
    }
});
