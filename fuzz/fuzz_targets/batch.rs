//! Fuzz target for RecordBatch v2 decoding: every decoder in `sluice-format` on arbitrary bytes.
//!
//! The checks live in `sluice_format::fuzz_check` so `crates/format/tests/fuzz_corpus.rs` can replay
//! them deterministically on stable; this file only hands libFuzzer's input over.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_format::fuzz_check(data);
});
