//! BLAKE3 of many 4 KiB pages at once ([`page_sums`]), for the per-page checksums.
//!
//! `blake3::hash` of one 4 KiB page gives its SIMD kernel only the page's four 1 KiB
//! chunks: on AVX-512 (16 lanes) three quarters of each vector are idle, and a prefetch
//! batch's verification took three quarters of the reader thread (measured). Here the
//! chunks of up to 16 pages are compressed together, chunk `j` of every page in one call
//! (same counter `j`, one lane each), then both levels of each page's tree the same way:
//! 6.3 GB/s against 2.9 page by page on this machine, and bit for bit `blake3::hash` of
//! each page (the tests check it).
//!
//! That kernel, `blake3::platform::Platform::hash_many`, is public but hidden and marked
//! unstable, so the workspace pins blake3 to one exact version: an upgrade is a deliberate
//! step that these tests vet.

use blake3::platform::Platform;
use blake3::IncrementCounter;

use crate::pagesums::PAGE;

const CHUNK: usize = blake3::CHUNK_LEN;
const CHUNKS_PER_PAGE: usize = PAGE / CHUNK;
/// Pages compressed together: the widest SIMD degree (AVX-512).
const LANES: usize = 16;

/// BLAKE3's initial chaining value and domain flags, from its specification.
const IV: [u32; 8] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;

/// The first 8 bytes (LE) of the BLAKE3 hash of each 4 KiB page of `data`, and of its short
/// last page if any.
pub(crate) fn page_sums(data: &[u8]) -> Vec<u64> {
    let platform = Platform::detect();
    let mut out = Vec::with_capacity(data.len().div_ceil(PAGE));
    let whole = data.len() / PAGE * PAGE;
    for group in data[..whole].chunks(PAGE * LANES) {
        hash_pages(platform, group, &mut out);
    }
    if whole < data.len() {
        out.push(first_word(blake3::hash(&data[whole..]).as_bytes()));
    }
    out
}

/// `group`: 1 to [`LANES`] whole pages.
fn hash_pages(platform: Platform, group: &[u8], out: &mut Vec<u64>) {
    let n = group.len() / PAGE;
    debug_assert!((1..=LANES).contains(&n) && group.len() == n * PAGE);
    let page = |i: usize| &group[i * PAGE..(i + 1) * PAGE];
    // Chunk j of each page: its counter is j in every page's own tree.
    let mut chunk_cvs = [[0u8; 32 * LANES]; CHUNKS_PER_PAGE];
    for (j, cvs) in chunk_cvs.iter_mut().enumerate() {
        let inputs: [&[u8; CHUNK]; LANES] =
            std::array::from_fn(|i| page(i.min(n - 1))[j * CHUNK..(j + 1) * CHUNK].try_into().unwrap());
        platform.hash_many(
            &inputs[..n],
            &IV,
            j as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut cvs[..32 * n],
        );
    }
    // Each page's two parents (chunks 0+1, 2+3), then its root from them.
    let cv = |j: usize, i: usize| &chunk_cvs[j][32 * i..32 * (i + 1)];
    let mut parents = [[0u8; 64]; 2 * LANES];
    for i in 0..n {
        for half in 0..2 {
            parents[2 * i + half][..32].copy_from_slice(cv(2 * half, i));
            parents[2 * i + half][32..].copy_from_slice(cv(2 * half + 1, i));
        }
    }
    let mut roots_in = [[0u8; 64]; LANES];
    let inputs: [&[u8; 64]; 2 * LANES] = std::array::from_fn(|k| &parents[k]);
    // Left and right parent CVs of page i land side by side: the root's block.
    platform.hash_many(&inputs[..2 * n], &IV, 0, IncrementCounter::No, PARENT, 0, 0, roots_in.as_flattened_mut());
    let mut roots = [0u8; 32 * LANES];
    let inputs: [&[u8; 64]; LANES] = std::array::from_fn(|i| &roots_in[i]);
    platform.hash_many(&inputs[..n], &IV, 0, IncrementCounter::No, PARENT | ROOT, 0, 0, &mut roots[..32 * n]);
    out.extend(roots[..32 * n].chunks_exact(32).map(first_word));
}

fn first_word(hash: &[u8]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_by_one(data: &[u8]) -> Vec<u64> {
        data.chunks(PAGE).map(|p| first_word(blake3::hash(p).as_bytes())).collect()
    }

    #[test]
    fn equals_blake3_of_each_page_for_every_count_and_tail() {
        let data: Vec<u8> =
            (0..40 * PAGE as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as u8).collect();
        // Every group size, several groups, and a short last page of several lengths.
        for pages in [1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 40] {
            for tail in [0, 1, 1000, 1024, 1025, 4095] {
                let len = (pages * PAGE - if tail > 0 { PAGE - tail } else { 0 }).min(data.len());
                assert_eq!(page_sums(&data[..len]), one_by_one(&data[..len]), "{pages} pages, tail {tail}");
            }
        }
        assert!(page_sums(&[]).is_empty());
    }

    /// Each kernel this CPU has (the default picks only the widest): every group size.
    #[test]
    fn every_simd_kernel_gives_the_same_sums() {
        let data: Vec<u8> =
            (0..LANES as u64 * PAGE as u64).map(|i| (i.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as u8).collect();
        let kernels =
            [Some(Platform::portable()), Platform::sse2(), Platform::sse41(), Platform::avx2(), Platform::avx512()];
        for (k, platform) in kernels.into_iter().enumerate().filter_map(|(k, p)| Some((k, p?))) {
            for n in 1..=LANES {
                let mut got = Vec::new();
                hash_pages(platform, &data[..n * PAGE], &mut got);
                assert_eq!(got, one_by_one(&data[..n * PAGE]), "kernel {k}, {n} pages");
            }
        }
    }

    #[test]
    fn a_changed_byte_changes_only_its_page() {
        let mut data = vec![7u8; 16 * PAGE];
        let before = page_sums(&data);
        data[5 * PAGE + 123] ^= 1;
        let after = page_sums(&data);
        let changed: Vec<usize> = (0..16).filter(|&k| before[k] != after[k]).collect();
        assert_eq!(changed, [5]);
    }
}
