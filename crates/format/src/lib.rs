//! Kafka RecordBatch v2 (magic 2) encoding, validation and iteration for Sluice. No I/O.
//!
//! Sluice stores and serves batches exactly as producers sent them, so this crate's main jobs are to
//! decide whether a byte slice is a well-formed batch ([`validate`], [`validate_records`]), to read its
//! header and records ([`BatchHeader`], [`records`]), to rewrite the one field the log owns
//! ([`set_base_offset`]), and to write new batches ([`BatchBuilder`], used by compaction and tests).
//!
//! Invariants: no function here panics on untrusted bytes; every loop over untrusted input is bounded
//! by the input's length; nothing recurses. Only uncompressed batches are accepted: a compressed batch
//! is rejected with [`BatchError::CompressionUnsupported`] naming its codec, never misread.
//!
//! Not here: compression codecs, the older message formats (magic 0 and 1), UTF-8 checks of header
//! keys, producer idempotence state, and anything that reads or writes files or sockets.
//!
//! Files: `batch.rs` (header, `validate`, CRC, `set_base_offset`), `validate_records.rs`, `frame.rs`
//! (one record's framing), `record.rs` (iteration), `builder.rs`, `varint.rs`, `compression.rs`,
//! `error.rs`, `split.rs` (concatenated batches), `fuzz_check.rs` (the fuzz target's body).

#![warn(missing_docs)]

mod batch;
mod builder;
mod compression;
mod error;
mod frame;
mod fuzz_check;
mod record;
mod split;
#[cfg(test)]
mod test_support;
mod validate_records;
mod varint;

pub use batch::{
    compute_crc, set_base_offset, validate, BatchHeader, BATCH_HEADER_BYTES, BATCH_LENGTH_MIN,
    LOG_OVERHEAD_BYTES, MAGIC_V2,
};
pub use builder::{BatchBuilder, NewRecord};
pub use compression::Compression;
pub use error::BatchError;
#[doc(hidden)]
pub use fuzz_check::fuzz_check;
pub use record::{records, Header, Record, RecordIter};
pub use split::{split_batches, SplitBatches};
pub use validate_records::validate_records;
