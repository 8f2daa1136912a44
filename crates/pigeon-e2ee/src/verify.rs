//! Safety numbers: what two people compare to know no one sits between them.

use blake2::{Blake2b512, Digest as _};

const DOMAIN: &[u8] = b"pigeonpost safety number v1";

/// A safety number for two devices' signature keys: 60 digits in 12 groups of 5, the same
/// whichever side computes it (the keys are sorted first). It changes when either key does.
pub fn safety_number(a: &[u8], b: &[u8]) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Blake2b512::new();
    h.update(DOMAIN);
    for key in [lo, hi] {
        h.update(u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(key);
    }
    let digest = h.finalize();
    digest
        .chunks_exact(5)
        .take(12)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_number_and_it_follows_the_keys() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_eq!(n.len(), 12 * 5 + 11);
        assert_ne!(n, safety_number(&a, &[3u8; 32]));
    }
}
