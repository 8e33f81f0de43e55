#![no_main]
//! See `skald_server::fuzzing::append_body` for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| skald_server::fuzzing::append_body(data));
