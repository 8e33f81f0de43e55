#![no_main]
//! See `skald_server::fuzzing::metadata_body` for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| skald_server::fuzzing::metadata_body(data));
