//! ApiVersions (key 18): which requests and versions this door answers. Clients ask first and
//! then use the highest version both sides know.

use crate::codec::{DecodeError, Reader, Writer};
use crate::errors::{NONE, UNSUPPORTED_VERSION};

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const LIST_OFFSETS: i16 = 2;
pub const METADATA: i16 = 3;
pub const API_VERSIONS: i16 = 18;
pub const INIT_PRODUCER_ID: i16 = 22;
pub const OFFSET_COMMIT: i16 = 8;
pub const OFFSET_FETCH: i16 = 9;
pub const FIND_COORDINATOR: i16 = 10;
pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;

/// Every request this door answers, with its lowest and highest version. Produce starts at 3
/// (RecordBatch v2, the format on disk); the others start where their fields are the ones a
/// current client sends. Apart from ApiVersions v3, none is a "flexible" version: clients use
/// the highest version listed here.
pub const SUPPORTED: [(i16, i16, i16); 13] = [
    (PRODUCE, 3, 8),
    (FETCH, 4, 11),
    (LIST_OFFSETS, 1, 5),
    (METADATA, 1, 8),
    (OFFSET_COMMIT, 2, 7),
    (OFFSET_FETCH, 1, 5),
    (FIND_COORDINATOR, 0, 2),
    (JOIN_GROUP, 0, 5),
    (HEARTBEAT, 0, 3),
    (LEAVE_GROUP, 0, 3),
    (SYNC_GROUP, 0, 3),
    (API_VERSIONS, 0, 3),
    (INIT_PRODUCER_ID, 0, 1),
];

/// The version range of an API key, if this door answers it.
pub fn range(api_key: i16) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(key, _, _)| *key == api_key).map(|&(_, min, max)| (min, max))
}

/// Answers ApiVersions at `version`; a version past 3 gets UNSUPPORTED_VERSION in the v0
/// layout, as the protocol asks, so the client retries with one listed.
pub fn handle(version: i16, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut writer = Writer::new();
    if version > 3 {
        writer.i16(UNSUPPORTED_VERSION);
        write_keys(&mut writer, false);
        return Ok(writer.bytes);
    }
    if version >= 3 {
        let mut reader = Reader::new(body);
        reader.compact_nullable_string("client_software_name")?;
        reader.compact_nullable_string("client_software_version")?;
        reader.tagged_fields("tagged fields")?;
    }
    writer.i16(NONE);
    write_keys(&mut writer, version >= 3);
    if version >= 1 {
        writer.i32(0); // throttle_time_ms
    }
    if version >= 3 {
        writer.empty_tagged_fields();
    }
    Ok(writer.bytes)
}

fn write_keys(writer: &mut Writer, compact: bool) {
    if compact {
        writer.compact_array_length(SUPPORTED.len());
    } else {
        writer.array_length(SUPPORTED.len());
    }
    for (key, min, max) in SUPPORTED {
        writer.i16(key).i16(min).i16(max);
        if compact {
            writer.empty_tagged_fields();
        }
    }
}
