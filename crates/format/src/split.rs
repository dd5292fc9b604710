//! Splitting concatenated batches (a read's or fetch's bytes) into single batches, by each
//! header's `batchLength`. Checks only that each batch's header parses and that it fits in
//! the bytes; the CRC is the caller's to check (the log checks it on every read).

use crate::{BatchError, BatchHeader};

/// Iterates the batches of `bytes`, yielding each header with the batch's bytes. After the
/// first error it yields nothing more.
pub fn split_batches(bytes: &[u8]) -> SplitBatches<'_> {
    SplitBatches { rest: bytes }
}

/// The iterator [`split_batches`] returns.
#[derive(Debug, Clone)]
pub struct SplitBatches<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SplitBatches<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let split = BatchHeader::parse(self.rest).and_then(|header| {
            let total = usize::try_from(header.total_bytes()).unwrap_or(usize::MAX);
            match self.rest.get(..total) {
                Some(batch) => Ok((header, batch, total)),
                None => Err(BatchError::LengthMismatch {
                    declared: header.total_bytes(),
                    actual: self.rest.len() as u64,
                }),
            }
        });
        match split {
            Ok((header, batch, total)) => {
                self.rest = &self.rest[total..];
                Some(Ok((header, batch)))
            }
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample_batch;

    #[test]
    fn splits_whole_batches_and_stops_at_a_cut_one() {
        let (one, two) = (sample_batch(2), sample_batch(3));
        let joined = [one.clone(), two.clone()].concat();
        let batches: Vec<&[u8]> = split_batches(&joined).map(|split| split.unwrap().1).collect();
        assert_eq!(batches, [&one[..], &two[..]]);
        let cut = &joined[..joined.len() - 1];
        let results: Vec<_> = split_batches(cut).collect();
        assert_eq!(results.len(), 2);
        assert!(matches!(results[1], Err(BatchError::LengthMismatch { .. })));
        assert_eq!(split_batches(&[]).count(), 0);
    }
}
