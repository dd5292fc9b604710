//! InitProducerId (key 22): a producer id for an idempotent producer. Transactions are not
//! supported: a transactional id is refused.

use sluice_engine::Engine;

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{INVALID_REQUEST, NONE};

pub fn handle(engine: &Engine, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut reader = Reader::new(body);
    let transactional_id = reader.nullable_string("transactional_id")?;
    reader.i32("transaction_timeout_ms")?;
    let mut writer = Writer::new();
    writer.i32(0); // throttle_time_ms
    if transactional_id.is_some() {
        writer.i16(INVALID_REQUEST).i64(-1).i16(-1);
    } else {
        writer.i16(NONE).i64(engine.allocate_producer_id()).i16(0);
    }
    Ok(writer.bytes)
}
