//! The `tls` transport's HTTP/2: a leg of either role reading any bytes, whole and in pieces,
//! header blocks, and frames, header blocks, data and pings written and read back. What must
//! hold is stated in `pigeon_transport_tls::fuzzing::h2`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_transport_tls::fuzzing::h2(data));
