//! Entry points for the fuzz targets in `fuzz/` (built only with the `fuzzing` feature, or in
//! tests). What they check is stated here, so a fuzzer finds broken promises, not only panics.

/// The store's record codec on arbitrary bytes (what a damaged or tampered store file hands
/// it): every decoder refuses or decodes without panicking, and whatever decodes encodes back
/// to exactly the same bytes.
pub fn codec(data: &[u8]) {
    crate::fjall_store::fuzz_codec(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_few_shapes_of_bytes_hold_the_promises() {
        for len in [0usize, 1, 8, 16, 24, 41, 89, 90, 130, 500] {
            for fill in [0u8, 1, 0xff] {
                super::codec(&vec![fill; len]);
            }
        }
    }
}
