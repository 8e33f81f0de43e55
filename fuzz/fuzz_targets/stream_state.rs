#![no_main]
//! See `skald_server::fuzzing::stream_state` for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| skald_server::fuzzing::stream_state(data));
