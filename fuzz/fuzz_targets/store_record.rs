//! The relay store's record codec on what a damaged or tampered store file could hold. What
//! must hold is stated in `pigeon_store::fuzzing::codec`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pigeon_store::fuzzing::codec(data));
