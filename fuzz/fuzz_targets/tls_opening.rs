//! A `tls` front reading a connection's first bytes: the ClientHello check, the first HTTP/2
//! request, and the answer to plain HTTP. What must hold is stated in
//! `pigeon_transport_tls::fuzzing::opening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_transport_tls::fuzzing::opening(data));
