//! Data patterns that differ per byte, per block and per seed, and a fast comparison.
//!
//! Comparison goes eight bytes at a time: `memcmp` in this kernel is a byte loop, which under TCG
//! would dominate the time of checking megabytes.

/// SplitMix64: a cheap, well-mixed function of its input.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `buffer` with the pattern of `seed`: byte `i` is a function of `seed` and `i / 8`.
pub fn fill(buffer: &mut [u8], seed: u64) {
    let mut chunks = buffer.chunks_exact_mut(8);
    let mut index = 0u64;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&mix(seed ^ index.wrapping_mul(0x1000_0000_01b3)).to_le_bytes());
        index += 1;
    }
    let tail = chunks.into_remainder();
    let last = mix(seed ^ index.wrapping_mul(0x1000_0000_01b3)).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// Index of the first byte where `a` and `b` differ (or where the shorter one ends).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let len = a.len().min(b.len());
    let words = len / 8;
    for word in 0..words {
        let at = word * 8;
        let x = u64::from_ne_bytes(a[at..at + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        if x != y {
            return (at..at + 8).find(|&i| a[i] != b[i]);
        }
    }
    if let Some(i) = (words * 8..len).find(|&i| a[i] != b[i]) {
        return Some(i);
    }
    (a.len() != b.len()).then_some(len)
}

/// Index of the first byte of `buffer` that differs from the pattern of `seed`, with no scratch
/// buffer: each 8-byte word of the pattern is computed where it is compared (no stack copy of the
/// buffer's length).
pub fn first_difference_from(buffer: &[u8], seed: u64) -> Option<usize> {
    buffer.chunks(8).enumerate().find_map(|(index, chunk)| {
        let word = mix(seed ^ (index as u64).wrapping_mul(0x1000_0000_01b3)).to_le_bytes();
        chunk.iter().zip(word).position(|(&a, b)| a != b).map(|i| index * 8 + i)
    })
}

/// Index of the first byte of `buffer` that differs from the pattern of `seed`, using `scratch`
/// (at least as long as `buffer`) for the expected bytes.
pub fn check(buffer: &[u8], seed: u64, scratch: &mut [u8]) -> Option<usize> {
    let expected = &mut scratch[..buffer.len()];
    fill(expected, seed);
    first_difference(buffer, expected)
}

/// Number of distinct byte values in `buffer`.
pub fn distinct_bytes(buffer: &[u8]) -> usize {
    let mut seen = [false; 256];
    for &byte in buffer {
        seen[usize::from(byte)] = true;
    }
    seen.iter().filter(|&&s| s).count()
}
