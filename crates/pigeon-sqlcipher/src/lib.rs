//! SQLCipher for Pigeonpost profiles, with its cryptography done in Rust.
//!
//! SQLCipher encrypts each database page with AES-256-CBC, authenticates it with HMAC, derives
//! its key with PBKDF2 and draws salts and IVs from a random source, all through a *provider*
//! chosen when it is compiled. The usual provider is OpenSSL's libcrypto; but the `pigeon`
//! binary also links BoringSSL (for the `tls` transport's Chrome-identical TLS), and two
//! libcryptos cannot be linked into one binary: their symbols clash.
//!
//! So SQLCipher is compiled with its CommonCrypto provider (`-DSQLCIPHER_CRYPTO_CC`, set in the
//! workspace's `.cargo/config.toml`) against this crate's `include/` directory, whose headers
//! declare the nine CommonCrypto calls that provider makes and route them through a table of
//! function pointers. [`install`] fills the table with RustCrypto's AES, CBC, HMAC, SHA-1/2 and
//! PBKDF2 and the operating system's random source. The on-disk format is SQLCipher 4's
//! (PBKDF2-HMAC-SHA512 with 256,000 iterations, AES-256-CBC, HMAC-SHA512 per page), unchanged.
//!
//! Until [`install`] has run, every call fails and SQLCipher refuses to derive a key: it never
//! runs without cryptography. Call [`install`] before opening an encrypted database; it is
//! cheap after the first call.

use std::sync::Once;

/// The table the headers in `include/` call through; the C side defines it (in the SQLCipher
/// amalgamation, the only file that includes those headers) and this crate fills it.
#[repr(C)]
struct Table {
    random: Option<unsafe extern "C" fn(out: *mut u8, len: usize) -> i32>,
    hmac: Option<
        unsafe extern "C" fn(
            alg: u32,
            key: *const u8,
            key_len: usize,
            in1: *const u8,
            in1_len: usize,
            in2: *const u8,
            in2_len: usize,
            out: *mut u8,
        ) -> i32,
    >,
    pbkdf2: Option<
        unsafe extern "C" fn(
            prf: u32,
            pass: *const u8,
            pass_len: usize,
            salt: *const u8,
            salt_len: usize,
            rounds: u32,
            out: *mut u8,
            out_len: usize,
        ) -> i32,
    >,
    aes256_cbc: Option<
        unsafe extern "C" fn(
            encrypt: i32,
            key: *const u8,
            iv: *const u8,
            input: *const u8,
            len: usize,
            out: *mut u8,
        ) -> i32,
    >,
}

// The foreign interface to SQLCipher's C code needs unsafe: a C global written once, and
// callbacks that receive raw pointers and lengths from it.
#[allow(unsafe_code)]
mod ffi {
    use super::Table;

    unsafe extern "C" {
        /// Defined in `include/CommonCrypto/CommonCrypto.h`, compiled into the amalgamation.
        pub(super) static mut pigeon_sqlcipher_crypto: Table;
    }

    /// A byte slice from a pointer and length handed over by SQLCipher; empty for null.
    ///
    /// # Safety
    /// `ptr` must be null or valid for reads of `len` bytes for the returned lifetime.
    pub(super) unsafe fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
        if ptr.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr` is valid for `len` bytes.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        }
    }

    /// A mutable byte slice from a pointer and length handed over by SQLCipher.
    ///
    /// # Safety
    /// `ptr` must be null or valid for writes of `len` bytes, not aliased, for the returned
    /// lifetime.
    pub(super) unsafe fn slice_mut<'a>(ptr: *mut u8, len: usize) -> Option<&'a mut [u8]> {
        if ptr.is_null() {
            None
        } else {
            // SAFETY: the caller guarantees `ptr` is valid and exclusive for `len` bytes.
            Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
        }
    }

    pub(super) unsafe extern "C" fn random(out: *mut u8, len: usize) -> i32 {
        // SAFETY: SQLCipher passes a buffer of `len` bytes.
        let Some(out) = (unsafe { slice_mut(out, len) }) else {
            return -1;
        };
        super::random(out)
    }

    pub(super) unsafe extern "C" fn hmac(
        alg: u32,
        key: *const u8,
        key_len: usize,
        in1: *const u8,
        in1_len: usize,
        in2: *const u8,
        in2_len: usize,
        out: *mut u8,
    ) -> i32 {
        let Some(len) = super::digest_len(alg) else {
            return -1;
        };
        // SAFETY: SQLCipher passes its key and the page pieces with their lengths, and an
        // output buffer of the digest's length.
        let (key, in1, in2, out) = unsafe {
            (
                slice(key, key_len),
                slice(in1, in1_len),
                slice(in2, in2_len),
                slice_mut(out, len),
            )
        };
        match out {
            Some(out) => super::hmac(alg, key, in1, in2, out),
            None => -1,
        }
    }

    pub(super) unsafe extern "C" fn pbkdf2(
        prf: u32,
        pass: *const u8,
        pass_len: usize,
        salt: *const u8,
        salt_len: usize,
        rounds: u32,
        out: *mut u8,
        out_len: usize,
    ) -> i32 {
        // SAFETY: SQLCipher passes the passphrase, salt and key buffer with their lengths.
        let (pass, salt, out) = unsafe {
            (
                slice(pass, pass_len),
                slice(salt, salt_len),
                slice_mut(out, out_len),
            )
        };
        match out {
            Some(out) => super::pbkdf2(prf, pass, salt, rounds, out),
            None => -1,
        }
    }

    pub(super) unsafe extern "C" fn aes256_cbc(
        encrypt: i32,
        key: *const u8,
        iv: *const u8,
        input: *const u8,
        len: usize,
        out: *mut u8,
    ) -> i32 {
        // SAFETY: the cryptor holds a 32-byte key and a 16-byte IV; SQLCipher passes input and
        // output buffers of `len` bytes (distinct buffers).
        let (key, iv, input, out) = unsafe {
            (
                slice(key, 32),
                slice(iv, 16),
                slice(input, len),
                slice_mut(out, len),
            )
        };
        match out {
            Some(out) => super::aes256_cbc(encrypt != 0, key, iv, input, out),
            None => -1,
        }
    }

    /// Fills the table. Called once, under [`std::sync::Once`], before any database is opened.
    pub(super) fn fill() {
        let table = Table {
            random: Some(random),
            hmac: Some(hmac),
            pbkdf2: Some(pbkdf2),
            aes256_cbc: Some(aes256_cbc),
        };
        // SAFETY: written once, before any SQLCipher call in this process that could read it
        // (every caller runs `install` first, and `Once` orders the write before their reads).
        unsafe { std::ptr::addr_of_mut!(pigeon_sqlcipher_crypto).write(table) };
    }
}

/// The CommonCrypto algorithm numbers SQLCipher's provider passes (HMAC, then PBKDF2's PRF).
const HMAC_SHA1: u32 = 0;
const HMAC_SHA256: u32 = 2;
const HMAC_SHA512: u32 = 4;
const PRF_SHA1: u32 = 1;
const PRF_SHA256: u32 = 3;
const PRF_SHA512: u32 = 5;

fn digest_len(alg: u32) -> Option<usize> {
    match alg {
        HMAC_SHA1 => Some(20),
        HMAC_SHA256 => Some(32),
        HMAC_SHA512 => Some(64),
        _ => None,
    }
}

/// Makes SQLCipher's cryptography available to this process. Idempotent and cheap.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(ffi::fill);
}

fn random(out: &mut [u8]) -> i32 {
    match getrandom::fill(out) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

fn hmac(alg: u32, key: &[u8], in1: &[u8], in2: &[u8], out: &mut [u8]) -> i32 {
    use hmac::{Hmac, Mac};
    macro_rules! run {
        ($digest:ty) => {{
            let Ok(mut mac) = <Hmac<$digest> as Mac>::new_from_slice(key) else {
                return -1;
            };
            mac.update(in1);
            mac.update(in2);
            let tag = mac.finalize().into_bytes();
            if tag.len() != out.len() {
                return -1;
            }
            out.copy_from_slice(&tag);
            0
        }};
    }
    match alg {
        HMAC_SHA1 => run!(sha1::Sha1),
        HMAC_SHA256 => run!(sha2::Sha256),
        HMAC_SHA512 => run!(sha2::Sha512),
        _ => -1,
    }
}

fn pbkdf2(prf: u32, pass: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) -> i32 {
    use hmac::Hmac;
    if rounds == 0 {
        return -1;
    }
    let result = match prf {
        PRF_SHA1 => pbkdf2::pbkdf2::<Hmac<sha1::Sha1>>(pass, salt, rounds, out),
        PRF_SHA256 => pbkdf2::pbkdf2::<Hmac<sha2::Sha256>>(pass, salt, rounds, out),
        PRF_SHA512 => pbkdf2::pbkdf2::<Hmac<sha2::Sha512>>(pass, salt, rounds, out),
        _ => return -1,
    };
    if result.is_ok() { 0 } else { -1 }
}

fn aes256_cbc(encrypt: bool, key: &[u8], iv: &[u8], input: &[u8], out: &mut [u8]) -> i32 {
    use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
    if input.len() != out.len() || !input.len().is_multiple_of(16) {
        return -1;
    }
    let done = if encrypt {
        cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .ok()
            .and_then(|c| c.encrypt_padded_b2b_mut::<NoPadding>(input, out).ok())
            .is_some()
    } else {
        cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .ok()
            .and_then(|c| c.decrypt_padded_b2b_mut::<NoPadding>(input, out).ok())
            .is_some()
    };
    if done { 0 } else { -1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mut out = [0u8; 64];
        assert_eq!(
            hmac(
                HMAC_SHA512,
                b"Jefe",
                b"what do ya want ",
                b"for nothing?",
                &mut out
            ),
            0
        );
        assert_eq!(
            out.to_vec(),
            unhex(
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
            )
        );
        let mut short = [0u8; 32];
        assert_eq!(hmac(HMAC_SHA512, b"k", b"", b"", &mut short), -1);
        assert_eq!(hmac(99, b"k", b"", b"", &mut short), -1);
    }

    #[test]
    fn pbkdf2_matches_rfc_6070_and_refuses_zero_rounds() {
        let mut out = [0u8; 20];
        assert_eq!(pbkdf2(PRF_SHA1, b"password", b"salt", 2, &mut out), 0);
        assert_eq!(
            out.to_vec(),
            unhex("ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957")
        );
        assert_eq!(pbkdf2(PRF_SHA1, b"password", b"salt", 0, &mut out), -1);
        assert_eq!(pbkdf2(7, b"password", b"salt", 1, &mut out), -1);
    }

    #[test]
    fn aes_cbc_matches_sp800_38a_and_round_trips() {
        // NIST SP 800-38A F.2.5 (CBC-AES256.Encrypt), first two blocks.
        let key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = unhex("000102030405060708090a0b0c0d0e0f");
        let plain = unhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let mut cipher = vec![0u8; 32];
        assert_eq!(aes256_cbc(true, &key, &iv, &plain, &mut cipher), 0);
        assert_eq!(
            cipher,
            unhex("f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d")
        );
        let mut back = vec![0u8; 32];
        assert_eq!(aes256_cbc(false, &key, &iv, &cipher, &mut back), 0);
        assert_eq!(back, plain);
        assert_eq!(
            aes256_cbc(true, &key, &iv, &plain[..20], &mut back[..20]),
            -1
        );
    }
}
