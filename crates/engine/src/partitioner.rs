//! Which partition a record goes to when the producer did not say: Kafka's placement, so that a
//! Kafka client and Sluice put the same key on the same partition.
//!
//! - Keyed records: `to_positive(murmur2(key)) % partitions`, bit for bit what Kafka's
//!   `BuiltInPartitioner.partitionForKey` computes. Anything else would move every key the day a
//!   user switches a producer between Kafka's client and Sluice's front doors.
//! - Keyless records: [`StickyPartitioner`], one per topic, which keeps sending to one partition
//!   and moves on, round-robin, when told to.
//!
//! Invariant: every partition returned is `< partitions`. Asking for a partition of a topic with
//! zero partitions is a programmer error (topics always have at least one) and panics.
//!
//! Deliberately not here: explicit partitions chosen by the producer (the caller checks those
//! against the topic) and Kafka's adaptive, load-aware choice for keyless records.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 seed; part of the contract, changing it moves every key.
const MURMUR2_SEED: u32 = 0x9747_b28c;
/// murmur2's multiplication constant.
const MURMUR2_M: u32 = 0x5bd1_e995;
/// murmur2's shift.
const MURMUR2_R: u32 = 24;
/// Bytes mixed per round.
const MURMUR2_CHUNK_BYTES: usize = 4;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, as a Java `int`.
///
/// Java has no unsigned ints, so the hash is computed on `u32` with wrapping arithmetic (the
/// same bits as Java's overflowing `int` arithmetic, with `>>` on `u32` being Java's `>>>`) and
/// the bits are returned as `i32`, matching Kafka's value including its sign.
///
/// Kafka hashes a Java array, whose length is an `int`; keys are bounded far below `i32::MAX`
/// bytes by the record size limit, so the length fits.
pub fn murmur2(data: &[u8]) -> i32 {
    // Truncation cannot happen for any key the engine accepts (see above); Kafka mixes the
    // length in as a 32-bit value, so this is the value it would use.
    let length = data.len() as u32;
    let mut h = MURMUR2_SEED ^ length;

    let mut chunks = data.chunks_exact(MURMUR2_CHUNK_BYTES);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(MURMUR2_M);
        k ^= k >> MURMUR2_R;
        k = k.wrapping_mul(MURMUR2_M);
        h = h.wrapping_mul(MURMUR2_M);
        h ^= k;
    }

    // Kafka's `switch (length % 4)` falls through: with three trailing bytes all three are
    // mixed in, then one multiplication. Little-endian assembly of the tail gives the same bits.
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * index);
        }
        h = h.wrapping_mul(MURMUR2_M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(MURMUR2_M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit.
///
/// Not `abs`: `abs(i32::MIN)` overflows, and Kafka's placement depends on this exact mapping.
pub fn to_positive(value: i32) -> i32 {
    value & 0x7fff_ffff
}

/// The partition Kafka's client picks for `key` in a topic of `partitions` partitions.
///
/// The result is always `< partitions`.
///
/// # Panics
///
/// If `partitions` is zero: topics always have at least one, so that is a bug in the caller.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "partition_for_key called for a topic with no partitions");
    // `to_positive` leaves a value in 0..=i32::MAX, so the conversion is lossless.
    (to_positive(murmur2(key)) as u32) % partitions
}

/// Where a topic's keyless records go: one partition, until [`next_batch`](Self::next_batch)
/// moves it to the next, round-robin.
///
/// Sticking to one partition turns the keyless records of a request into one batch (one append,
/// one fsync) instead of one per partition; round-robin across requests still spreads the load.
///
/// Kafka's sticky partitioner switches when the producer's batch for a partition is complete.
/// Sluice is the broker and sees no client batches, so it switches once per produce request:
/// one request is one batch per partition, and the next request starts on the next partition.
///
/// Thread-safe without locks: the state is one counter, and the partition is the counter modulo
/// the current partition count, so a topic that gains partitions is picked up at once.
/// Concurrent requests that read the counter between the same two switches share a partition,
/// which is fine: the choice only needs to spread load, not be exact.
///
/// Once every 2^32 switches the counter wraps to zero; if the partition count does not divide
/// 2^32 that one switch may land on the same partition again, which costs nothing.
#[derive(Debug, Default)]
pub struct StickyPartitioner {
    /// Switches so far (plus the starting point); the partition is this modulo the count.
    counter: AtomicU32,
}

impl StickyPartitioner {
    /// A partitioner that starts at partition `start % partitions`.
    ///
    /// [`Default`] starts at partition 0; a caller that wants topics not to all start on
    /// partition 0 can seed it, for example from a hash of the topic name.
    pub fn new(start: u32) -> Self {
        Self { counter: AtomicU32::new(start) }
    }

    /// The current partition for keyless records, always `< partitions`.
    ///
    /// # Panics
    ///
    /// If `partitions` is zero: topics always have at least one, so that is a bug in the caller.
    pub fn partition(&self, partitions: u32) -> u32 {
        assert!(
            partitions > 0,
            "StickyPartitioner::partition called for a topic with no partitions"
        );
        // Relaxed: the counter guards no other memory; any recent value is a fine choice.
        self.counter.load(Ordering::Relaxed) % partitions
    }

    /// Moves on to the next partition (round-robin). Called once per produce request.
    pub fn next_batch(&self) {
        // fetch_add wraps on overflow, which is the wrap documented on the type.
        self.counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// Kafka's `UtilsTest.testMurmur2` vectors (apache/kafka, clients/.../utils/UtilsTest.java).
    const KAFKA_VECTORS: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        // Kafka writes this one as `new byte[] {'a', 'b', 'c'}`: the same bytes.
        (b"abc", 479_470_107),
    ];

    /// librdkafka's `unittest_murmur2` vectors (confluentinc/librdkafka, src/rdmurmur2.c), which
    /// it checks against Java's results. Kafka's own set has no 1-byte tail; these do ("kafka",
    /// "giberish123456789", "4"), plus the empty key. Written as the u32 bits librdkafka lists.
    const LIBRDKAFKA_VECTORS: [(&[u8], u32); 11] = [
        (b"kafka", 0xd067_cf64),
        (b"giberish123456789", 0x8f55_2b0c),
        (b"1234", 0x9fc9_7b14),
        (b"234", 0xe7c0_09ca),
        (b"34", 0x8739_30da),
        (b"4", 0x5a4b_5ca1),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
        (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
        (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
        (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
        (b"", 0x106e_08d9),
    ];

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // Goal: byte-for-byte agreement with Kafka's hash, on Kafka's own test inputs.
        for (input, expected) in KAFKA_VECTORS {
            assert_eq!(murmur2(input), expected, "murmur2({:?})", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn murmur2_matches_librdkafka_vectors() {
        // Goal: agreement on the tails Kafka's set misses (1 byte) and on the empty key.
        for (input, expected) in LIBRDKAFKA_VECTORS {
            assert_eq!(
                murmur2(input) as u32,
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn vectors_cover_every_tail_length() {
        // Goal: the known-answer tests exercise every arm of Kafka's fall-through switch, each
        // with and without whole 4-byte chunks before it. (Kafka's set alone misses 1.)
        let lengths = KAFKA_VECTORS
            .iter()
            .map(|(input, _)| input.len())
            .chain(LIBRDKAFKA_VECTORS.iter().map(|(input, _)| input.len()));
        let mut shapes: Vec<(bool, usize)> =
            lengths.map(|length| (length >= 4, length % 4)).collect();
        shapes.sort_unstable();
        shapes.dedup();
        let expected: Vec<(bool, usize)> = [false, true]
            .into_iter()
            .flat_map(|chunks| (0..4).map(move |tail| (chunks, tail)))
            .collect();
        assert_eq!(shapes, expected);
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        // Goal: Kafka's toPositive, including i32::MIN where abs() would overflow.
        assert_eq!(to_positive(0), 0);
        assert_eq!(to_positive(5), 5);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
    }

    #[test]
    fn partition_for_key_matches_kafka_placement() {
        // Goal: placement is to_positive(hash) % n, worked out by hand from Kafka's vectors:
        // to_positive(-973932308) = 1173551340, to_positive(-790332482) = 1357151166,
        // to_positive(-58897971) = 2088585677, 479470107 is already positive.
        let cases: [(&[u8], u32, u32); 8] = [
            (b"21", 3, 0),
            (b"21", 12, 0),
            (b"foobar", 3, 0),
            (b"foobar", 12, 6),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 3, 2),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 12, 5),
            (b"abc", 3, 0),
            (b"abc", 12, 3),
        ];
        for (key, partitions, expected) in cases {
            assert_eq!(
                partition_for_key(key, partitions),
                expected,
                "key {:?} over {partitions} partitions",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    #[should_panic(expected = "no partitions")]
    fn partition_for_key_refuses_zero_partitions() {
        // Goal: a zero-partition topic is a caller bug and must not divide by zero silently.
        partition_for_key(b"key", 0);
    }

    #[test]
    fn sticky_stays_until_next_batch_then_round_robins() {
        // Goal: one partition per batch, and each switch moves to the next partition in turn.
        let sticky = StickyPartitioner::default();
        let mut seen = Vec::new();
        for _ in 0..7 {
            let partition = sticky.partition(3);
            assert_eq!(sticky.partition(3), partition, "must not move without next_batch");
            seen.push(partition);
            sticky.next_batch();
        }
        assert_eq!(seen, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn sticky_with_one_partition_always_picks_it() {
        // Goal: the degenerate topic works; there is nowhere else to go.
        let sticky = StickyPartitioner::new(17);
        for _ in 0..3 {
            assert_eq!(sticky.partition(1), 0);
            sticky.next_batch();
        }
    }

    #[test]
    fn sticky_follows_a_growing_partition_count() {
        // Goal: a topic that gains partitions gets keyless records on the new ones too.
        let sticky = StickyPartitioner::new(4);
        assert_eq!(sticky.partition(2), 0);
        assert_eq!(sticky.partition(6), 4);
    }

    #[test]
    #[should_panic(expected = "no partitions")]
    fn sticky_refuses_zero_partitions() {
        // Goal: a zero-partition topic is a caller bug, as for keyed records.
        StickyPartitioner::default().partition(0);
    }

    #[test]
    fn sticky_counts_every_switch_across_threads() {
        // Goal: concurrent switches are not lost (lock-free but atomic).
        const THREADS: u32 = 8;
        const SWITCHES_PER_THREAD: u32 = 1_000;
        let sticky = Arc::new(StickyPartitioner::default());
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let sticky = Arc::clone(&sticky);
                std::thread::spawn(move || {
                    for _ in 0..SWITCHES_PER_THREAD {
                        sticky.next_batch();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        // 8000 switches from 0 over 7 partitions: 8000 % 7 = 6.
        assert_eq!(sticky.partition(7), (THREADS * SWITCHES_PER_THREAD) % 7);
        assert_eq!(sticky.partition(7), 6);
    }

    proptest! {
        #[test]
        fn partition_for_key_is_in_range_and_deterministic(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            partitions in 1u32..=10_000,
        ) {
            // Goal: every key lands on an existing partition, and always the same one.
            let partition = partition_for_key(&key, partitions);
            prop_assert!(partition < partitions);
            prop_assert_eq!(partition, partition_for_key(&key, partitions));
            prop_assert_eq!(partition, (to_positive(murmur2(&key)) as u32) % partitions);
        }
    }
}
