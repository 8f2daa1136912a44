//! Tunnel tokens under a fixed key, the replay filter, and the parameters of `tls://` routes.
//! What must hold is stated in `pigeon_transport_tls::fuzzing::token`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_transport_tls::fuzzing::token(data));
