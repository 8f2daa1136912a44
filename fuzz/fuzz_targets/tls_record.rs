//! TLS 1.3 record protection on `tls` server legs, with fixed keys for each AEAD: any bytes
//! opened as records, records sealed and read back, changed, or sealed around any inner
//! plaintext. What must hold is stated in `pigeon_transport_tls::fuzzing::record`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_transport_tls::fuzzing::record(data));
