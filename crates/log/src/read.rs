//! Reading: whole batches from an offset up to a byte budget, and the first offset at or after
//! a timestamp.
//!
//! The state lock is held only to pick the segment, its handle and the index position; the
//! bytes are read after it is released. Bytes below a segment's visible end never change while
//! a handle to them is held (appends only add past it; compaction and retention replace or
//! unlink files, which open handles outlive), so a read needs no lock while it copies.
//!
//! Every batch is checked (length, magic, CRC32C) before it is returned: a corrupt batch is an
//! error, never data.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_format::{records, validate, BatchHeader, BATCH_HEADER_BYTES};

use crate::error::ReadError;
use crate::partition::{lock, Inner, Partition};
use crate::segment::{load_closed, write_index_files, ClosedSegment, LoadedSegment, SegmentFile};
use crate::storage::FileHandle;

/// Whole batches read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated RecordBatch v2 batches, exactly as stored (possibly empty).
    pub batches: Vec<u8>,
    /// The high watermark when the read started.
    pub high_watermark: u64,
    /// The log start offset when the read started.
    pub log_start_offset: u64,
}

/// A segment picked for a read: everything needed without the lock.
struct SegmentView {
    next_offset: u64,
    data: FileHandle,
    /// Where to start scanning for the wanted offset (from the index).
    start_position: u64,
    /// Bytes readers may see.
    end_position: u64,
    path: PathBuf,
}

impl Partition {
    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes` (at
    /// least one whole batch is returned, however large, so a reader always makes progress).
    /// Reading at the high watermark returns no batches. Offsets removed by compaction are
    /// skipped: the read starts at the next batch that holds a later offset.
    ///
    /// # Errors
    /// [`ReadError::OffsetOutOfRange`] before the log start or past the high watermark;
    /// [`ReadError::Corrupt`] if a stored batch does not check out; [`ReadError::Io`].
    pub fn read(&self, offset: u64, max_bytes: u32) -> Result<ReadResult, ReadError> {
        let (high_watermark, log_start_offset) = self.bounds();
        let mut result = ReadResult { batches: Vec::new(), high_watermark, log_start_offset };
        if offset < log_start_offset || offset > high_watermark {
            return Err(ReadError::OffsetOutOfRange { offset, log_start_offset, high_watermark });
        }
        let mut segment_offset = offset;
        while segment_offset < high_watermark {
            let Some(view) = self.inner.view(segment_offset, high_watermark)? else {
                // Retention deleted the segment after the bounds were taken.
                let (high_watermark, log_start_offset) = self.bounds();
                if offset < log_start_offset {
                    return Err(ReadError::OffsetOutOfRange {
                        offset,
                        log_start_offset,
                        high_watermark,
                    });
                }
                continue;
            };
            if let Some(position) = find_batch(&view, offset)? {
                result.batches = read_batches(&view, position, max_bytes)?;
                break;
            }
            segment_offset = view.next_offset;
        }
        Ok(result)
    }

    /// The offset of the first record whose timestamp is at or after `timestamp_ms`, or `None`
    /// if no visible record is that recent.
    ///
    /// # Errors
    /// [`ReadError::Corrupt`] or [`ReadError::Io`].
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>, ReadError> {
        let (high_watermark, mut offset) = self.bounds();
        while offset < high_watermark {
            let skip = {
                let state = lock(&self.inner.state);
                let holding = state.closed.range(..=offset).next_back();
                holding.filter(|(_, segment)| segment.next_offset > offset).and_then(
                    |(_, segment)| {
                        let older = segment.max_timestamp.is_some_and(|max| max < timestamp_ms);
                        older.then_some(segment.next_offset)
                    },
                )
            };
            if let Some(next) = skip {
                offset = next;
                continue;
            }
            let Some(view) = self.inner.view_for_time(offset, high_watermark, timestamp_ms)? else {
                // Retention deleted the segment: carry on from the new start.
                let (_, log_start_offset) = self.bounds();
                if log_start_offset <= offset {
                    break;
                }
                offset = log_start_offset;
                continue;
            };
            if let Some(found) = find_time(&view, timestamp_ms)? {
                return Ok(Some(found));
            }
            offset = view.next_offset;
        }
        Ok(None)
    }

    /// The high watermark and the log start offset, taken together.
    pub(crate) fn bounds(&self) -> (u64, u64) {
        let state = lock(&self.inner.state);
        let durable = lock(&self.inner.durable);
        let start = state.closed.keys().next().copied().unwrap_or(state.active.base_offset);
        (self.inner.visible(&durable).next_offset, start)
    }
}

impl Inner {
    /// The segment holding `offset`, with the index's start position for it.
    fn view(&self, offset: u64, high_watermark: u64) -> Result<Option<SegmentView>, ReadError> {
        self.view_with(offset, high_watermark, |index, base| {
            index.position_for(offset.saturating_sub(base))
        })
    }

    /// The segment holding `offset`, with the index's start position for `timestamp_ms`.
    fn view_for_time(
        &self,
        offset: u64,
        high_watermark: u64,
        timestamp_ms: i64,
    ) -> Result<Option<SegmentView>, ReadError> {
        self.view_with(offset, high_watermark, |index, _| {
            index.position_for(index.relative_offset_for_time(timestamp_ms))
        })
    }

    fn view_with(
        &self,
        offset: u64,
        high_watermark: u64,
        start: impl Fn(&crate::index::SegmentIndex, u64) -> u64,
    ) -> Result<Option<SegmentView>, ReadError> {
        loop {
            let closed = {
                let mut state = lock(&self.state);
                let active = &state.active;
                if offset >= active.base_offset {
                    let durable = lock(&self.durable);
                    let visible = self.visible(&durable);
                    let end = if visible.segment_base == active.base_offset {
                        visible.position
                    } else {
                        0
                    };
                    return Ok(Some(SegmentView {
                        next_offset: high_watermark,
                        data: Arc::clone(&active.data),
                        start_position: start(&active.index, active.base_offset).min(end),
                        end_position: end,
                        path: SegmentFile::Data.path(&self.dir, active.base_offset),
                    }));
                }
                let Some((_, segment)) = state.closed.range(..=offset).next_back() else {
                    return Ok(None); // deleted by retention since the bounds were taken
                };
                let segment = segment.clone();
                match state.cache.get(segment.base_offset) {
                    Some(loaded) => return Ok(Some(closed_view(self, &segment, &loaded, &start))),
                    None => segment,
                }
            };
            if !self.load_into_cache(&closed)? {
                return Ok(None); // deleted by retention while loading
            }
        }
    }

    /// The closed segment at `base_offset` as known now, with its loaded files (loading them if
    /// needed); `None` if it was deleted.
    pub(crate) fn loaded_closed(
        &self,
        base_offset: u64,
    ) -> Result<Option<(ClosedSegment, Arc<LoadedSegment>)>, ReadError> {
        loop {
            let closed = {
                let mut state = lock(&self.state);
                let Some(segment) = state.closed.get(&base_offset).cloned() else {
                    return Ok(None);
                };
                match state.cache.get(base_offset) {
                    Some(loaded) => return Ok(Some((segment, loaded))),
                    None => segment,
                }
            };
            if !self.load_into_cache(&closed)? {
                return Ok(None);
            }
        }
    }

    /// Loads a closed segment's files outside the lock (reading index files must not stall
    /// appends) and caches them unless the segment changed meanwhile (the caller then looks
    /// again). Returns `false` if the segment was deleted.
    fn load_into_cache(&self, closed: &ClosedSegment) -> Result<bool, ReadError> {
        let path = SegmentFile::Data.path(&self.dir, closed.base_offset);
        let interval = self.config.index_interval_bytes;
        let loaded = match load_closed(self.storage.as_ref(), &self.dir, closed, interval) {
            Ok(loaded) => loaded,
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                let gone = !lock(&self.state).closed.contains_key(&closed.base_offset);
                if gone {
                    return Ok(false); // deleted by retention while loading
                }
                return Err(ReadError::Io { path, source });
            }
            Err(source) => return Err(ReadError::Io { path, source }),
        };
        let mut state = lock(&self.state);
        let unchanged = state.closed.get(&closed.base_offset).is_some_and(|known| {
            known.rewrites == closed.rewrites && known.size_bytes == closed.size_bytes
        });
        if !unchanged {
            return Ok(true); // compacted or deleted while loading: look again
        }
        if loaded.rebuilt {
            let saved = write_index_files(
                self.storage.as_ref(),
                &self.dir,
                closed.base_offset,
                &loaded.index,
            );
            if let Err(error) = saved {
                tracing::warn!(dir = %self.dir.display(), %error, "could not save a rebuilt index");
            }
        }
        if let Some(known) = state.closed.get_mut(&closed.base_offset) {
            known.max_timestamp = known.max_timestamp.or(loaded.index.max_timestamp());
        }
        state.cache.insert(closed.base_offset, Arc::new(loaded));
        Ok(true)
    }
}

fn closed_view(
    inner: &Inner,
    segment: &crate::segment::ClosedSegment,
    loaded: &LoadedSegment,
    start: &impl Fn(&crate::index::SegmentIndex, u64) -> u64,
) -> SegmentView {
    SegmentView {
        next_offset: segment.next_offset,
        data: Arc::clone(&loaded.data),
        start_position: start(&loaded.index, segment.base_offset),
        end_position: segment.size_bytes,
        path: SegmentFile::Data.path(&inner.dir, segment.base_offset),
    }
}

fn io_error(view: &SegmentView) -> impl Fn(std::io::Error) -> ReadError + '_ {
    move |source| ReadError::Io { path: view.path.clone(), source }
}

/// Reads and parses the batch header at `position`.
fn header_at(view: &SegmentView, position: u64) -> Result<BatchHeader, ReadError> {
    let mut bytes = [0u8; BATCH_HEADER_BYTES];
    let corrupt = |source| ReadError::Corrupt { path: view.path.clone(), position, source };
    if position + BATCH_HEADER_BYTES as u64 > view.end_position {
        let len = view.end_position - position;
        return Err(corrupt(sluice_format::BatchError::TooShort {
            len,
            min: BATCH_HEADER_BYTES as u64,
        }));
    }
    view.data.read_exact_at(&mut bytes, position).map_err(io_error(view))?;
    let header = BatchHeader::parse(&bytes).map_err(corrupt)?;
    if position + header.total_bytes() > view.end_position {
        let actual = view.end_position - position;
        return Err(corrupt(sluice_format::BatchError::LengthMismatch {
            declared: header.total_bytes(),
            actual,
        }));
    }
    Ok(header)
}

/// The position of the first batch in the view whose last offset is at or after `offset`.
fn find_batch(view: &SegmentView, offset: u64) -> Result<Option<u64>, ReadError> {
    let mut position = view.start_position;
    while position < view.end_position {
        let header = header_at(view, position)?;
        if header.last_offset() as u64 >= offset {
            return Ok(Some(position));
        }
        position += header.total_bytes();
    }
    Ok(None)
}

/// Whole, checked batches from `position`, up to `max_bytes` but at least one.
fn read_batches(view: &SegmentView, position: u64, max_bytes: u32) -> Result<Vec<u8>, ReadError> {
    let first = header_at(view, position)?;
    let want = u64::from(max_bytes).max(first.total_bytes());
    let end = (position + want).min(view.end_position);
    let mut bytes = vec![0u8; usize::try_from(end - position).expect("read fits in memory")];
    view.data.read_exact_at(&mut bytes, position).map_err(io_error(view))?;
    let mut kept = 0usize;
    while kept < bytes.len() {
        let Ok(total) = BatchHeader::peek_total_bytes(&bytes[kept..]) else { break };
        let Ok(total) = usize::try_from(total) else { break };
        if kept + total > bytes.len() {
            break;
        }
        validate(&bytes[kept..kept + total]).map_err(|source| ReadError::Corrupt {
            path: view.path.clone(),
            position: position + kept as u64,
            source,
        })?;
        kept += total;
    }
    assert!(kept > 0, "the first batch always fits: its header was checked against the end");
    bytes.truncate(kept);
    Ok(bytes)
}

/// The first record in the view at or after `timestamp_ms`.
fn find_time(view: &SegmentView, timestamp_ms: i64) -> Result<Option<u64>, ReadError> {
    let mut position = view.start_position;
    while position < view.end_position {
        let header = header_at(view, position)?;
        if header.max_timestamp >= timestamp_ms {
            let bytes = read_batches(view, position, 0)?;
            let corrupt = |source| ReadError::Corrupt { path: view.path.clone(), position, source };
            for record in records(&bytes).map_err(corrupt)? {
                let record = record.map_err(corrupt)?;
                if record.timestamp_ms >= timestamp_ms {
                    return Ok(Some(record.offset as u64));
                }
            }
        }
        position += header.total_bytes();
    }
    Ok(None)
}
