//! The crypto provider openmls runs on: libcrux for signatures, ML-KEM, decapsulation and key
//! derivation; RustCrypto's `sha2` for the SHA-2 family (hashes, HMAC, HKDF — also inside HPKE)
//! and `chacha20poly1305` for that AEAD; the operating system for randomness.
//!
//! Why: a profile of `pigeon bench group --members 1000 --steady` spent more than half its time
//! in libcrux's portable SHA-256, most of it inside HPKE: each HPKE encryption of a commit's
//! path secrets (one per node of the resolution, about log2 of the group at steady state) and
//! of a Welcome's group secrets hashes its whole `info`, which carries the group context —
//! with the roster extension, tens of kilobytes at 1,000 devices — or the encrypted GroupInfo
//! with its ratchet tree (about 1.5 MB). `sha2` picks the CPU's SHA extensions at run time (x86
//! SHA-NI, ARMv8 SHA2) and falls back to portable code, with the same results (the tests below
//! check it against libcrux and against the FIPS 180-4 and RFC 5869 vectors, and HPKE both
//! ways between the two providers). HPKE runs on `hpke-rs` as in libcrux's provider, with the
//! same algorithm mapping (X-Wing is code point 0x647a, as there), its KDF `sha2`'s and its
//! ChaCha20-Poly1305 RustCrypto's; X-Wing *seals* run HPKE's key schedule here instead.
//! X-Wing's encapsulation takes its X25519 half from `curve25519-dalek`
//! ([`xwing_encaps_derand`]), and the provider keeps recipients' keys prepared for it
//! ([`Recipient`]: ML-KEM's matrix expanded, the X25519 point on the Edwards curve), since a
//! group's commits encrypt to the same leaf keys one commit after another; an X-Wing seal runs
//! HPKE's key schedule here ([`CryptoProvider::xwing_seal`]), hashing the group context once
//! per commit instead of once per device.
//!
//! A later profile (fresh tree, 1,000 devices) found two more costs that were not the
//! cryptography's own: libcrux's ChaCha20-Poly1305 sealed a 1.2 MB commit in 2.6 ms where
//! `chacha20poly1305` (AVX2) takes 0.9 ms, and libcrux's HMAC-DRBG took 3.3 µs for the 64
//! bytes of each X-Wing encapsulation where the kernel's `getrandom` takes 0.5 µs. The kernel's
//! generator also keeps no state in this process that could give away past outputs.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use hpke_rs_crypto::HpkeCrypto;
use hpke_rs_crypto::Rng as _;
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_libcrux::HpkeLibcrux;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKeyPair, KemOutput, SignatureScheme,
};
use openmls_traits::types::{HpkeAeadType, HpkeKdfType, HpkeKemType};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use tls_codec::SecretVLBytes;

/// The SHA-2 functions HKDF runs on here.
#[derive(Clone, Copy)]
enum Sha2 {
    S256,
    S384,
    S512,
}

impl From<HashType> for Sha2 {
    fn from(hash: HashType) -> Self {
        match hash {
            HashType::Sha2_256 => Self::S256,
            HashType::Sha2_384 => Self::S384,
            HashType::Sha2_512 => Self::S512,
        }
    }
}

impl From<KdfAlgorithm> for Sha2 {
    fn from(kdf: KdfAlgorithm) -> Self {
        match kdf {
            KdfAlgorithm::HkdfSha256 => Self::S256,
            KdfAlgorithm::HkdfSha384 => Self::S384,
            KdfAlgorithm::HkdfSha512 => Self::S512,
        }
    }
}

/// HKDF-Extract (RFC 5869).
fn hkdf_extract(hash: Sha2, salt: &[u8], ikm: &[u8]) -> Vec<u8> {
    match hash {
        Sha2::S256 => Hkdf::<Sha256>::extract(Some(salt), ikm).0.to_vec(),
        Sha2::S384 => Hkdf::<Sha384>::extract(Some(salt), ikm).0.to_vec(),
        Sha2::S512 => Hkdf::<Sha512>::extract(Some(salt), ikm).0.to_vec(),
    }
}

/// Why HKDF-Expand refused.
enum ExpandError {
    /// The PRK is shorter than the hash.
    ShortPrk,
    /// More output than 255 hashes.
    TooLong,
}

/// HKDF-Expand (RFC 5869).
fn hkdf_expand(hash: Sha2, prk: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, ExpandError> {
    let mut okm = vec![0u8; len];
    match hash {
        Sha2::S256 => Hkdf::<Sha256>::from_prk(prk)
            .map_err(|_| ExpandError::ShortPrk)?
            .expand(info, &mut okm),
        Sha2::S384 => Hkdf::<Sha384>::from_prk(prk)
            .map_err(|_| ExpandError::ShortPrk)?
            .expand(info, &mut okm),
        Sha2::S512 => Hkdf::<Sha512>::from_prk(prk)
            .map_err(|_| ExpandError::ShortPrk)?
            .expand(info, &mut okm),
    }
    .map_err(|_| ExpandError::TooLong)?;
    Ok(okm)
}

/// libcrux's HPKE primitives with `sha2`'s HKDF and RustCrypto's ChaCha20-Poly1305.
#[derive(Debug)]
struct Hpke;

fn hpke_error(e: impl std::fmt::Debug) -> hpke_rs_crypto::error::Error {
    hpke_rs_crypto::error::Error::CryptoLibraryError(format!("{e:?}"))
}

impl HpkeCrypto for Hpke {
    type HpkePrng = <HpkeLibcrux as HpkeCrypto>::HpkePrng;

    fn name() -> String {
        "libcrux with sha2's HKDF and RustCrypto's ChaCha20-Poly1305".to_owned()
    }

    fn supports_kdf(alg: KdfAlgorithm) -> Result<(), hpke_rs_crypto::error::Error> {
        HpkeLibcrux::supports_kdf(alg)
    }

    fn supports_kem(alg: KemAlgorithm) -> Result<(), hpke_rs_crypto::error::Error> {
        HpkeLibcrux::supports_kem(alg)
    }

    fn supports_aead(alg: AeadAlgorithm) -> Result<(), hpke_rs_crypto::error::Error> {
        HpkeLibcrux::supports_aead(alg)
    }

    fn prng() -> Self::HpkePrng {
        HpkeLibcrux::prng()
    }

    fn kdf_extract(
        alg: KdfAlgorithm,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        Ok(hkdf_extract(alg.into(), salt, ikm))
    }

    fn kdf_expand(
        alg: KdfAlgorithm,
        prk: &[u8],
        info: &[u8],
        output_size: usize,
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        hkdf_expand(alg.into(), prk, info, output_size).map_err(|e| match e {
            ExpandError::ShortPrk => hpke_error("a PRK shorter than the hash"),
            ExpandError::TooLong => hpke_rs_crypto::error::Error::HpkeInvalidOutputLength,
        })
    }

    fn dh(
        alg: KemAlgorithm,
        pk: &[u8],
        sk: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        HpkeLibcrux::dh(alg, pk, sk)
    }

    fn secret_to_public(
        alg: KemAlgorithm,
        sk: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        HpkeLibcrux::secret_to_public(alg, sk)
    }

    fn kem_key_gen(
        alg: KemAlgorithm,
        prng: &mut Self::HpkePrng,
    ) -> Result<(Vec<u8>, Vec<u8>), hpke_rs_crypto::error::Error> {
        HpkeLibcrux::kem_key_gen(alg, prng)
    }

    fn kem_key_gen_derand(
        alg: KemAlgorithm,
        seed: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), hpke_rs_crypto::error::Error> {
        HpkeLibcrux::kem_key_gen_derand(alg, seed)
    }

    fn kem_encaps(
        alg: KemAlgorithm,
        pk_r: &[u8],
        prng: &mut Self::HpkePrng,
    ) -> Result<(Vec<u8>, Vec<u8>), hpke_rs_crypto::error::Error> {
        if alg == KemAlgorithm::XWingDraft06 {
            let mut eseed = zeroize::Zeroizing::new([0u8; XWING_ESEED]);
            prng.fill_bytes(&mut eseed[..]);
            return xwing_encaps_derand(pk_r, &eseed);
        }
        HpkeLibcrux::kem_encaps(alg, pk_r, prng)
    }

    fn kem_decaps(
        alg: KemAlgorithm,
        ct: &[u8],
        sk_r: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        HpkeLibcrux::kem_decaps(alg, ct, sk_r)
    }

    fn dh_validate_sk(
        alg: KemAlgorithm,
        sk: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        HpkeLibcrux::dh_validate_sk(alg, sk)
    }

    fn aead_seal(
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        if alg == AeadAlgorithm::ChaCha20Poly1305 {
            return chacha_seal(key, nonce, aad, msg).map_err(hpke_error);
        }
        HpkeLibcrux::aead_seal(alg, key, nonce, aad, msg)
    }

    fn aead_open(
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, hpke_rs_crypto::error::Error> {
        if alg == AeadAlgorithm::ChaCha20Poly1305 {
            return chacha_open(key, nonce, aad, msg).map_err(|e| match e {
                CryptoError::AeadDecryptionError => hpke_rs_crypto::error::Error::AeadOpenError,
                other => hpke_error(other),
            });
        }
        HpkeLibcrux::aead_open(alg, key, nonce, aad, msg)
    }
}

/// ChaCha20-Poly1305 (RFC 8439) with this key, and the nonce, both checked for length. The
/// cipher's copy of the key is wiped when it is dropped.
fn chacha<'n>(
    key: &[u8],
    nonce: &'n [u8],
) -> Result<(chacha20poly1305::ChaCha20Poly1305, &'n [u8; 12]), CryptoError> {
    use chacha20poly1305::aead::KeyInit as _;
    let cipher = chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| CryptoError::InvalidLength)?;
    let nonce = nonce.try_into().map_err(|_| CryptoError::InvalidLength)?;
    Ok((cipher, nonce))
}

/// ChaCha20-Poly1305 sealing: the ciphertext with its 16-byte tag appended, as libcrux gives it.
fn chacha_seal(key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use chacha20poly1305::aead::{Aead as _, Payload};
    let (cipher, nonce) = chacha(key, nonce)?;
    cipher
        .encrypt(nonce.into(), Payload { msg, aad })
        .map_err(|_| CryptoError::CryptoLibraryError)
}

/// ChaCha20-Poly1305 opening of a ciphertext with its tag appended.
fn chacha_open(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ct_tag: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    use chacha20poly1305::aead::{Aead as _, Payload};
    let (cipher, nonce) = chacha(key, nonce)?;
    cipher
        .decrypt(nonce.into(), Payload { msg: ct_tag, aad })
        .map_err(|_| CryptoError::AeadDecryptionError)
}

/// HPKE's `suite_id` (RFC 9180 §5.1): "HPKE" ‖ KEM id ‖ KDF id ‖ AEAD id.
fn hpke_suite_id(kem: KemAlgorithm, kdf: KdfAlgorithm, aead: AeadAlgorithm) -> [u8; 10] {
    let mut id = [0; 10];
    id[..4].copy_from_slice(b"HPKE");
    id[4..6].copy_from_slice(&(kem as u16).to_be_bytes());
    id[6..8].copy_from_slice(&(kdf as u16).to_be_bytes());
    id[8..].copy_from_slice(&(aead as u16).to_be_bytes());
    id
}

/// HPKE's `LabeledExtract(salt, label, ikm)` (RFC 9180 §4).
fn labeled_extract(kdf: Sha2, suite_id: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Vec<u8> {
    hkdf_extract(
        kdf,
        salt,
        &[b"HPKE-v1".as_slice(), suite_id, label, ikm].concat(),
    )
}

/// HPKE's `LabeledExpand(prk, label, info, len)` (RFC 9180 §4).
fn labeled_expand(
    kdf: Sha2,
    suite_id: &[u8],
    prk: &[u8],
    label: &[u8],
    info: &[u8],
    len: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    let l = u16::try_from(len).map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
    let labeled = [
        &l.to_be_bytes(),
        b"HPKE-v1".as_slice(),
        suite_id,
        label,
        info,
    ]
    .concat();
    hkdf_expand(kdf, prk, &labeled, len)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| CryptoError::HkdfOutputLengthInvalid)
}

/// The last key schedule context a provider computed for a large `info`: its suite, its whole
/// `info`, and the context (mode ‖ `psk_id_hash` ‖ `info_hash`).
struct ScheduleContext {
    suite_id: [u8; 10],
    info: Vec<u8>,
    context: Vec<u8>,
}

/// Bytes of an X-Wing public key: ML-KEM-768's, then X25519's.
const XWING_PK: usize = 1184 + 32;
/// Bytes of randomness an X-Wing encapsulation takes: ML-KEM-768's 32, then the ephemeral
/// X25519 secret's 32 (draft-connolly-cfrg-xwing-kem-06, `EncapsulateDerand`'s `eseed`).
const XWING_ESEED: usize = 64;

/// X-Wing encapsulation (draft-connolly-cfrg-xwing-kem-06), the same bytes as libcrux's, with
/// the X25519 half on `curve25519-dalek`.
///
/// Why: a commit in a group whose tree has no inner keys yet (right after a batch add)
/// encapsulates to every other device, and a profile of `pigeon bench group --members 1000`
/// put most of each encapsulation in X25519's two Montgomery ladders (libcrux's portable code).
/// Here the ephemeral public key is a fixed-base multiplication with a precomputed table
/// (about a quarter of a ladder) and the shared secret an Edwards multiplication ([`x25519`]).
/// Commits at 1,000 devices took a fifth less (BENCHMARKS.md, "Groups"). ML-KEM-768 (with its public-key check) and the
/// SHA3-256 combiner stay libcrux's; decapsulation stays libcrux's entirely. The tests check
/// the output against libcrux's `encapsulate_derand` byte for byte, and that libcrux opens
/// what this seals.
fn xwing_encaps_derand(
    pk: &[u8],
    eseed: &[u8; XWING_ESEED],
) -> Result<(Vec<u8>, Vec<u8>), hpke_rs_crypto::error::Error> {
    Recipient::prepare(pk)?.encapsulate(eseed)
}

/// A recipient's X-Wing public key made ready for encapsulation: its ML-KEM-768 key checked
/// and, where the CPU has AVX2, unpacked (the matrix expanded from its seed and the key's
/// hash taken — most of an encapsulation's ML-KEM time, 29 µs packed against 8 µs unpacked
/// on this machine), and its X25519 key moved to the Edwards curve (8 µs). The provider keeps
/// recent recipients ([`Recipients`]): a commit in a group whose tree has few inner keys
/// encrypts to every device's leaf key, the same keys commit after commit.
struct Recipient {
    mlkem: MlKemKey,
    x: [u8; 32],
    /// `None` for a key on X25519's twist (no Edwards point): the ladder handles it.
    edwards: Option<EdwardsPoint>,
}

enum MlKemKey {
    #[cfg(target_arch = "x86_64")]
    Avx2(Box<libcrux_ml_kem::mlkem768::avx2::unpacked::MlKem768PublicKeyUnpacked>),
    /// libcrux's packed key, which picks its own implementation per call.
    Packed(Box<libcrux_ml_kem::mlkem768::MlKem768PublicKey>),
}

impl Recipient {
    /// Checks an X-Wing public key and prepares it.
    fn prepare(pk: &[u8]) -> Result<Self, hpke_rs_crypto::error::Error> {
        let (pk_m, x) =
            xwing_halves(pk).map_err(|_| hpke_rs_crypto::error::Error::KemInvalidPublicKey)?;
        Ok(Self {
            mlkem: MlKemKey::new(pk_m),
            x,
            edwards: MontgomeryPoint(x).to_edwards(0),
        })
    }

    /// X-Wing's encapsulation to this key with the given 64 bytes of randomness: the shared
    /// secret and the ciphertext.
    fn encapsulate(
        &self,
        eseed: &[u8; XWING_ESEED],
    ) -> Result<(Vec<u8>, Vec<u8>), hpke_rs_crypto::error::Error> {
        use hpke_rs_crypto::error::Error;
        let (m_seed, x_seed) = eseed.split_at(32);
        let m_seed: [u8; 32] = m_seed
            .try_into()
            .map_err(|_| Error::InsufficientRandomness)?;
        let x_seed: [u8; 32] = x_seed
            .try_into()
            .map_err(|_| Error::InsufficientRandomness)?;
        let (ct_m, ss_m) = self.mlkem.encapsulate(m_seed);
        let ek_x = zeroize::Zeroizing::new(x_seed);
        let public = EdwardsPoint::mul_base_clamped(*ek_x);
        let (ct_x, ss_x) = match &self.edwards {
            // Both back to Montgomery u-coordinates with one field inversion instead of two.
            Some(peer) => {
                let mut shared = peer.mul_clamped(*ek_x);
                let mut both = EdwardsPoint::to_montgomery_batch(&[public, shared]);
                let out = (
                    both[0].to_bytes(),
                    zeroize::Zeroizing::new(both[1].to_bytes()),
                );
                both.iter_mut().for_each(zeroize::Zeroize::zeroize);
                zeroize::Zeroize::zeroize(&mut shared);
                out
            }
            None => (
                public.to_montgomery().to_bytes(),
                zeroize::Zeroizing::new(x25519_on(&ek_x, self.x, None)),
            ),
        };
        if *ss_x == [0; 32] {
            // A low-order peer key: libcrux refuses the all-zero shared secret too.
            return Err(Error::KemInvalidPublicKey);
        }
        // Combiner: SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ XWingLabel), the label "\\.//^\\".
        let mut input = zeroize::Zeroizing::new(Vec::with_capacity(32 * 4 + 6));
        input.extend_from_slice(ss_m.as_ref());
        input.extend_from_slice(&*ss_x);
        input.extend_from_slice(&ct_x);
        input.extend_from_slice(&self.x);
        input.extend_from_slice(&[0x5c, 0x2e, 0x2f, 0x2f, 0x5e, 0x5c]);
        let ss = libcrux_sha3::sha256(&input);
        let mut ct = Vec::with_capacity(ct_m.as_ref().len() + 32);
        ct.extend_from_slice(ct_m.as_ref());
        ct.extend_from_slice(&ct_x);
        Ok((ss.to_vec(), ct))
    }
}

impl MlKemKey {
    /// `pk` must have passed `validate_public_key`.
    fn new(pk: libcrux_ml_kem::mlkem768::MlKem768PublicKey) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            use libcrux_ml_kem::mlkem768::avx2::unpacked;
            let mut key = Box::new(unpacked::MlKem768PublicKeyUnpacked::default());
            unpacked::unpacked_public_key(&pk, &mut key);
            return Self::Avx2(key);
        }
        Self::Packed(Box::new(pk))
    }

    fn encapsulate(
        &self,
        randomness: [u8; 32],
    ) -> (
        libcrux_ml_kem::mlkem768::MlKem768Ciphertext,
        libcrux_ml_kem::MlKemSharedSecret,
    ) {
        match self {
            // Made only after the CPU was found to have AVX2.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(key) => {
                libcrux_ml_kem::mlkem768::avx2::unpacked::encapsulate(key, randomness)
            }
            Self::Packed(key) => libcrux_ml_kem::mlkem768::encapsulate(key, randomness),
        }
    }
}

/// The recipients a provider prepared lately, at most [`MAX_RECIPIENTS`] (about 7.6 KB each
/// with the key they are found by): two generations, the older dropped whole when the newer
/// fills, so keys in use stay and a table that strangers' keys could grow stays bounded.
#[derive(Default)]
struct Recipients {
    current: std::collections::HashMap<Box<[u8]>, std::sync::Arc<Recipient>>,
    previous: std::collections::HashMap<Box<[u8]>, std::sync::Arc<Recipient>>,
}

/// Enough for every device of a 1,000-device group twice over (a key refresh replaces a
/// leaf key; the old one stays until its generation goes).
const MAX_RECIPIENTS: usize = 2048;

impl Recipients {
    fn get(&mut self, pk: &[u8]) -> Option<std::sync::Arc<Recipient>> {
        if let Some(hit) = self.current.get(pk) {
            return Some(hit.clone());
        }
        let hit = self.previous.remove(pk)?;
        self.insert(pk, hit.clone());
        Some(hit)
    }

    fn insert(&mut self, pk: &[u8], recipient: std::sync::Arc<Recipient>) {
        if self.current.len() >= MAX_RECIPIENTS / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(pk.into(), recipient);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// An X-Wing public key's two halves: its ML-KEM-768 key, checked as FIPS 203 asks before
/// encapsulating, and its X25519 u-coordinate.
fn xwing_halves(
    pk: &[u8],
) -> Result<(libcrux_ml_kem::mlkem768::MlKem768PublicKey, [u8; 32]), &'static str> {
    use libcrux_ml_kem::mlkem768;
    if pk.len() != XWING_PK {
        return Err("an X-Wing key of the wrong length");
    }
    let (pk_m, pk_x) = pk.split_at(1184);
    let invalid = "an X-Wing key whose ML-KEM half is not a valid key";
    let pk_m = mlkem768::MlKem768PublicKey::try_from(pk_m).map_err(|_| invalid)?;
    if !mlkem768::validate_public_key(&pk_m) {
        return Err(invalid);
    }
    let x = pk_x
        .try_into()
        .map_err(|_| "an X-Wing key of the wrong length")?;
    Ok((pk_m, x))
}

/// What is wrong with `key` as an HPKE public key of `kem` that others will encrypt to, if
/// anything: an X-Wing key whose ML-KEM half fails FIPS 203's check or whose X25519 half has
/// small order, an X25519 key of small order, a key of the wrong length. Every encryption to
/// such a key fails, so one in a leaf would make every commit whose path reaches that leaf
/// fail for whoever makes it: groups refuse commits and key packages that bring one
/// (`members.rs`), deterministically, so the refusal is the same on every device.
pub(crate) fn hpke_key_problem(kem: HpkeKemType, key: &[u8]) -> Option<&'static str> {
    let x25519 = |u: &[u8]| -> Option<&'static str> {
        let u: [u8; 32] = u.try_into().ok()?;
        let small = match MontgomeryPoint(u).to_edwards(0) {
            Some(point) => point.is_small_order(),
            // On the twist: any clamped scalar is a multiple of 8 (this one a power of two),
            // so the product is the identity, u = 0, exactly for points of small order.
            None => MontgomeryPoint(u).mul_clamped([0; 32]).to_bytes() == [0; 32],
        };
        small.then_some("an X25519 key of small order")
    };
    match kem {
        HpkeKemType::XWingKemDraft6 => match xwing_halves(key) {
            Ok((_, x)) => x25519(&x),
            Err(problem) => Some(problem),
        },
        HpkeKemType::DhKem25519 => {
            if key.len() != 32 {
                return Some("an X25519 key of the wrong length");
            }
            x25519(key)
        }
        _ => None,
    }
}

/// X25519(k, u) (RFC 7748): the u-coordinate of the clamped `k` times the point with
/// u-coordinate `u`.
///
/// Computed on the birationally equivalent Edwards curve when `u` is on the curve: the
/// u-coordinate of k·P does not depend on which of the two points with that u is taken, and
/// `curve25519-dalek` multiplies Edwards points with its AVX2 backend where the CPU has it
/// (constant time in `k`; measured here at about 60 % of the time of the Montgomery ladder,
/// decompression included). A `u` on the quadratic twist has no Edwards point; those, and
/// CPUs without AVX2, take the ladder. The clamped scalar is used unreduced, so a point with a
/// small-order part gives the ladder's answer too (the tests compare the two on random,
/// twist, small-order and non-canonical inputs).
#[cfg(test)]
fn x25519(k: &[u8; 32], u: [u8; 32]) -> [u8; 32] {
    x25519_on(k, u, MontgomeryPoint(u).to_edwards(0).as_ref())
}

/// [`x25519`] with `u`'s Edwards point (either sign) already found, or `None` on the twist.
fn x25519_on(k: &[u8; 32], u: [u8; 32], edwards: Option<&EdwardsPoint>) -> [u8; 32] {
    match edwards {
        Some(edwards) => edwards.mul_clamped(*k).to_montgomery().to_bytes(),
        None => MontgomeryPoint(u).mul_clamped(*k).to_bytes(),
    }
}

/// `info` from this size up has its HPKE key schedule context remembered (below it, hashing is cheaper
/// than keeping and comparing a copy).
const LARGE_INFO: usize = 4096;

/// The HPKE instance for an openmls configuration, mapped as libcrux's provider maps it.
fn hpke(config: HpkeConfig) -> hpke_rs::Hpke<Hpke> {
    let (kem, kdf, aead) = hpke_algorithms(&config);
    hpke_rs::Hpke::new(hpke_rs::Mode::Base, kem, kdf, aead)
}

/// openmls's names for an HPKE configuration's algorithms in `hpke-rs`'s (whose code points
/// are RFC 9180's, and 0x647a for X-Wing as in libcrux's provider).
fn hpke_algorithms(config: &HpkeConfig) -> (KemAlgorithm, KdfAlgorithm, AeadAlgorithm) {
    let kem = match config.0 {
        HpkeKemType::DhKemP256 => KemAlgorithm::DhKemP256,
        HpkeKemType::DhKemP384 => KemAlgorithm::DhKemP384,
        HpkeKemType::DhKemP521 => KemAlgorithm::DhKemP521,
        HpkeKemType::DhKem25519 => KemAlgorithm::DhKem25519,
        HpkeKemType::DhKem448 => KemAlgorithm::DhKem448,
        HpkeKemType::XWingKemDraft6 => KemAlgorithm::XWingDraft06,
        HpkeKemType::MlKem768 => KemAlgorithm::MlKem768,
        HpkeKemType::MlKem1024 => KemAlgorithm::MlKem1024,
    };
    let kdf = match config.1 {
        HpkeKdfType::HkdfSha256 => KdfAlgorithm::HkdfSha256,
        HpkeKdfType::HkdfSha384 => KdfAlgorithm::HkdfSha384,
        HpkeKdfType::HkdfSha512 => KdfAlgorithm::HkdfSha512,
    };
    let aead = match config.2 {
        HpkeAeadType::AesGcm128 => AeadAlgorithm::Aes128Gcm,
        HpkeAeadType::AesGcm256 => AeadAlgorithm::Aes256Gcm,
        HpkeAeadType::ChaCha20Poly1305 => AeadAlgorithm::ChaCha20Poly1305,
        HpkeAeadType::Export => AeadAlgorithm::HpkeExport,
    };
    (kem, kdf, aead)
}

/// libcrux's provider, with the SHA-2 family from `sha2`, ChaCha20-Poly1305 from RustCrypto,
/// X-Wing seals of its own and the operating system's randomness (the module's text says why).
pub struct CryptoProvider {
    inner: openmls_libcrux_crypto::CryptoProvider,
    /// X-Wing keys prepared for encapsulation lately (public keys only).
    recipients: std::sync::Mutex<Recipients>,
    /// The last HPKE key schedule context of an X-Wing seal with a large `info` (the group
    /// context: public to the group, never a key or a shared secret).
    schedule_context: std::sync::Mutex<Option<std::sync::Arc<ScheduleContext>>>,
}

impl std::fmt::Debug for CryptoProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CryptoProvider")
    }
}

impl CryptoProvider {
    /// A provider whose randomness is the operating system's (libcrux's own key generation
    /// inside keeps its HMAC-DRBG, seeded from the operating system).
    ///
    /// # Errors
    /// When the system gives no randomness.
    pub fn new() -> Result<Self, impl std::fmt::Debug> {
        openmls_libcrux_crypto::CryptoProvider::new().map(|inner| Self {
            inner,
            recipients: std::sync::Mutex::default(),
            schedule_context: std::sync::Mutex::default(),
        })
    }

    /// HPKE's base-mode `key_schedule_context` (RFC 9180 §5.1: mode 0 ‖ `psk_id_hash` of the
    /// empty `psk_id` ‖ `info_hash`). A commit's update path is encrypted once per device in
    /// each copath node's resolution (about every device of the group, in a tree whose inner
    /// nodes have no keys yet), each time under the same `info`: the group context, which
    /// carries the roster (about 70 KB at 1,000 devices). The last one for a large `info` is
    /// kept with its whole input and reused only for byte for byte the same input: `info`
    /// hashed once per commit instead of once per device.
    fn key_schedule_context(&self, kdf: Sha2, suite_id: &[u8; 10], info: &[u8]) -> Vec<u8> {
        let compute = || {
            [
                &[0u8][..],
                &labeled_extract(kdf, suite_id, b"", b"psk_id_hash", b""),
                &labeled_extract(kdf, suite_id, b"", b"info_hash", info),
            ]
            .concat()
        };
        if info.len() < LARGE_INFO {
            return compute();
        }
        let lock = || {
            self.schedule_context
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        // Compared outside the lock: the threads of one commit read it at once.
        let last = lock().clone();
        if let Some(hit) = last.filter(|h| h.suite_id == *suite_id && h.info == info) {
            return hit.context.clone();
        }
        let context = compute();
        *lock() = Some(std::sync::Arc::new(ScheduleContext {
            suite_id: *suite_id,
            info: info.to_vec(),
            context: context.clone(),
        }));
        context
    }

    /// HPKE's base-mode seal (RFC 9180 §5.1, §6.1) with X-Wing, whose encapsulation uses the
    /// prepared recipient, and whose key schedule hashes a large `info` once
    /// ([`Self::key_schedule_context`]). The tests open what it seals with libcrux's provider.
    fn xwing_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        let lock = || {
            self.recipients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (kem, kdf_id, aead) = hpke_algorithms(&config);
        if aead == AeadAlgorithm::HpkeExport {
            return Err(CryptoError::SenderSetupError);
        }
        // Prepared outside the lock: the threads of one commit prepare different keys at once.
        let remembered = lock().get(pk_r);
        let fresh = remembered.is_none();
        let recipient = match remembered {
            Some(known) => known,
            None => std::sync::Arc::new(
                Recipient::prepare(pk_r).map_err(|_| CryptoError::HpkeEncryptionError)?,
            ),
        };
        let eseed = zeroize::Zeroizing::new(
            self.random_array::<XWING_ESEED>()
                .map_err(|_| CryptoError::HpkeEncryptionError)?,
        );
        let (shared, enc) = recipient
            .encapsulate(&eseed)
            .map_err(|_| CryptoError::HpkeEncryptionError)?;
        if fresh {
            // Only keys that worked: a low-order X25519 key fails every time.
            lock().insert(pk_r, recipient);
        }
        let shared = zeroize::Zeroizing::new(shared);
        let suite_id = hpke_suite_id(kem, kdf_id, aead);
        let kdf = Sha2::from(kdf_id);
        // Base mode: no PSK, and `psk_id` empty.
        let context = self.key_schedule_context(kdf, &suite_id, info);
        let secret =
            zeroize::Zeroizing::new(labeled_extract(kdf, &suite_id, &shared, b"secret", b""));
        let key_len = Hpke::aead_key_length(aead);
        let key = labeled_expand(kdf, &suite_id, &secret, b"key", &context, key_len)?;
        // The first (and only) message of the context: its nonce is the base nonce.
        let nonce_len = Hpke::aead_nonce_length(aead);
        let nonce = labeled_expand(kdf, &suite_id, &secret, b"base_nonce", &context, nonce_len)?;
        let ciphertext = Hpke::aead_seal(aead, &key, &nonce, aad, ptxt)
            .map_err(|_| CryptoError::HpkeEncryptionError)?;
        Ok(HpkeCiphertext {
            kem_output: enc.into(),
            ciphertext: ciphertext.into(),
        })
    }
}

impl OpenMlsCrypto for CryptoProvider {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.inner.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.inner.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        Ok(hkdf_extract(hash_type.into(), salt, ikm).into())
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        let bad_key = |_| CryptoError::InvalidLength;
        let tag = match hash_type {
            HashType::Sha2_256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(bad_key)?;
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            HashType::Sha2_384 => {
                let mut mac = Hmac::<Sha384>::new_from_slice(key).map_err(bad_key)?;
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            HashType::Sha2_512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).map_err(bad_key)?;
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
        };
        Ok(tag.into())
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        hkdf_expand(hash_type.into(), prk, info, okm_len)
            .map(Into::into)
            .map_err(|e| match e {
                ExpandError::ShortPrk => CryptoError::InvalidLength,
                ExpandError::TooLong => CryptoError::HkdfOutputLengthInvalid,
            })
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(match hash_type {
            HashType::Sha2_256 => Sha256::digest(data).to_vec(),
            HashType::Sha2_384 => Sha384::digest(data).to_vec(),
            HashType::Sha2_512 => Sha512::digest(data).to_vec(),
        })
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if alg == AeadType::ChaCha20Poly1305 {
            return chacha_seal(key, nonce, aad, data);
        }
        self.inner.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if alg == AeadType::ChaCha20Poly1305 {
            return chacha_open(key, nonce, aad, ct_tag);
        }
        self.inner.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.inner.signature_key_gen(alg)
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner.verify_signature(alg, data, pk, signature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        if config.0 == HpkeKemType::XWingKemDraft6 {
            return self.xwing_seal(config, pk_r, info, aad, ptxt);
        }
        let pk_r = hpke_rs::HpkePublicKey::new(pk_r.to_vec());
        let (kem_output, ciphertext) = hpke(config)
            .seal(&pk_r, info, aad, ptxt, None, None, None)
            .map_err(|e| match e {
                hpke_rs::HpkeError::InvalidConfig => CryptoError::SenderSetupError,
                _ => CryptoError::HpkeEncryptionError,
            })?;
        Ok(HpkeCiphertext {
            kem_output: kem_output.into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let sk_r = hpke_rs::HpkePrivateKey::new(sk_r.to_vec());
        hpke(config)
            .open(
                input.kem_output.as_ref(),
                &sk_r,
                info,
                aad,
                input.ciphertext.as_ref(),
                None,
                None,
                None,
            )
            .map_err(|e| match e {
                hpke_rs::HpkeError::InvalidConfig => CryptoError::ReceiverSetupError,
                _ => CryptoError::HpkeDecryptionError,
            })
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        let pk_r = hpke_rs::HpkePublicKey::new(pk_r.to_vec());
        let (enc, context) = hpke(config)
            .setup_sender(&pk_r, info, None, None, None)
            .map_err(|_| CryptoError::SenderSetupError)?;
        let exported = context
            .export(exporter_context, exporter_length)
            .map_err(|_| CryptoError::ExporterError)?;
        Ok((enc, exported.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        let sk_r = hpke_rs::HpkePrivateKey::new(sk_r.to_vec());
        let context = hpke(config)
            .setup_receiver(enc, &sk_r, info, None, None, None)
            .map_err(|_| CryptoError::ReceiverSetupError)?;
        context
            .export(exporter_context, exporter_length)
            .map(ExporterSecret::from)
            .map_err(|_| CryptoError::ExporterError)
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        // No hashing of large inputs here: libcrux's, as before.
        self.inner.derive_hpke_keypair(config, ikm)
    }
}

/// This crypto with openmls's in-memory storage: for benchmarks and tests that keep no state
/// on disk (the client stores through SQLCipher, with [`crate::Provider`]).
pub struct MemoryProvider {
    crypto: CryptoProvider,
    storage: openmls_memory_storage::MemoryStorage,
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryProvider")
    }
}

impl MemoryProvider {
    /// A provider with fresh randomness and empty storage.
    ///
    /// # Errors
    /// [`crate::E2eeError::Provider`] when the system gives no randomness.
    pub fn new() -> Result<Self, crate::E2eeError> {
        Ok(Self {
            crypto: crate::crypto()?,
            storage: openmls_memory_storage::MemoryStorage::default(),
        })
    }
}

impl openmls_traits::OpenMlsProvider for MemoryProvider {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = openmls_memory_storage::MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// The operating system's generator, asked for every value (`getrandom`).
impl OpenMlsRand for CryptoProvider {
    type Error = getrandom::Error;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0; N];
        getrandom::fill(&mut out)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0; len];
        getrandom::fill(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The remembered `info_hash` is used only for the very same `info`: infos of the same
    /// large size that differ in one byte, one after the other and back, each open only with
    /// their own `info` under libcrux's provider (which remembers nothing).
    #[test]
    fn a_remembered_info_hash_is_used_only_for_the_same_info() {
        let ours = CryptoProvider::new().expect("provider");
        let libcrux = openmls_libcrux_crypto::CryptoProvider::new().expect("provider");
        let suite = Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;
        let config = || suite.hpke_config();
        let keys = libcrux
            .derive_hpke_keypair(config(), &[9; 32])
            .expect("key pair");
        let a = vec![1u8; 70_000];
        let mut b = a.clone();
        b[40_000] ^= 1;
        for info in [&a, &a, &b, &a, &b, &b] {
            let sealed = ours
                .hpke_seal(config(), &keys.public, info, b"aad", b"path secret")
                .expect("seal");
            let other = if info == &a { &b } else { &a };
            assert_eq!(
                libcrux
                    .hpke_open(config(), &sealed, &keys.private, info, b"aad")
                    .expect("opens with its own info"),
                b"path secret"
            );
            assert!(
                libcrux
                    .hpke_open(config(), &sealed, &keys.private, other, b"aad")
                    .is_err()
            );
        }
        // A small `info` (hashed each time) too, and an empty one.
        for info in [b"small".as_slice(), b""] {
            let sealed = ours
                .hpke_seal(config(), &keys.public, info, b"aad", b"path secret")
                .expect("seal");
            assert_eq!(
                libcrux
                    .hpke_open(config(), &sealed, &keys.private, info, b"aad")
                    .expect("opens"),
                b"path secret"
            );
        }
    }

    /// ChaCha20-Poly1305 here and in libcrux are one cipher: each opens what the other seals
    /// (empty, one byte, and a commit's size), and a changed byte of ciphertext, tag or
    /// associated data, a wrong key or nonce, or a bad length is refused.
    #[test]
    fn chacha20_poly1305_is_libcrux_s_both_ways_and_refuses_tampering() {
        let ours = CryptoProvider::new().expect("provider");
        let libcrux = openmls_libcrux_crypto::CryptoProvider::new().expect("provider");
        let chacha = AeadType::ChaCha20Poly1305;
        let (key, nonce) = ([5u8; 32], [6u8; 12]);
        for len in [0, 1, 64, 1_200_000] {
            let plain: Vec<u8> = (0..=250u8).cycle().take(len).collect();
            let sealed = ours
                .aead_encrypt(chacha, &key, &plain, &nonce, b"aad")
                .expect("seal");
            assert_eq!(
                sealed,
                libcrux
                    .aead_encrypt(chacha, &key, &plain, &nonce, b"aad")
                    .expect("seal"),
                "the same bytes as libcrux's"
            );
            assert_eq!(sealed.len(), len + 16);
            assert_eq!(
                libcrux
                    .aead_decrypt(chacha, &key, &sealed, &nonce, b"aad")
                    .expect("libcrux opens ours"),
                plain
            );
            assert_eq!(
                ours.aead_decrypt(chacha, &key, &sealed, &nonce, b"aad")
                    .expect("opens"),
                plain
            );
            for at in [0, sealed.len() / 2, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert_eq!(
                    ours.aead_decrypt(chacha, &key, &bad, &nonce, b"aad"),
                    Err(CryptoError::AeadDecryptionError)
                );
            }
            let refused = |key: &[u8], nonce: &[u8], aad: &[u8]| {
                ours.aead_decrypt(chacha, key, &sealed, nonce, aad).is_err()
            };
            assert!(refused(&key, &nonce, b"aaD"));
            assert!(refused(&[4; 32], &nonce, b"aad"));
            assert!(refused(&key, &[7; 12], b"aad"));
            assert!(refused(&key[..31], &nonce, b"aad"));
            assert!(refused(&key, &nonce[..11], b"aad"));
        }
        assert!(
            ours.aead_decrypt(chacha, &key, &[0; 15], &nonce, b"")
                .is_err()
        );
        assert_eq!(
            ours.aead_encrypt(chacha, &key[..16], b"x", &nonce, b""),
            Err(CryptoError::InvalidLength)
        );
    }

    /// Randomness comes in the length asked, different each time.
    #[test]
    fn randomness_is_the_length_asked_and_never_repeats() {
        let ours = CryptoProvider::new().expect("provider");
        let a: [u8; 32] = ours.random_array().expect("random");
        let b: [u8; 32] = ours.random_array().expect("random");
        assert_ne!(a, b);
        assert_eq!(ours.random_vec(1000).expect("random").len(), 1000);
        assert!(ours.random_vec(0).expect("random").is_empty());
    }

    /// X-Wing encapsulation here gives libcrux's bytes for the same randomness, libcrux
    /// decapsulates it to the same secret, and bad public keys are refused in words.
    #[test]
    fn xwing_encapsulation_is_libcrux_s_byte_for_byte() {
        use libcrux_kem::{Algorithm, Ct, key_gen_derand};
        for i in 0..16u8 {
            let (sk, pk) = key_gen_derand(Algorithm::XWingKemDraft06, &[i; 32]).expect("keys");
            let pk_bytes = pk.encode();
            let mut eseed = [0u8; XWING_ESEED];
            for (j, b) in (0u8..).zip(eseed.iter_mut()) {
                *b = j.wrapping_mul(31) ^ i.wrapping_mul(97);
            }
            let (ss, ct) = xwing_encaps_derand(&pk_bytes, &eseed).expect("encapsulates");
            let (their_ss, their_ct) = pk.encapsulate_derand(&eseed).expect("libcrux");
            assert_eq!(ct, their_ct.encode());
            assert_eq!(ss, their_ss.encode());
            let opened = Ct::decode(Algorithm::XWingKemDraft06, &ct)
                .expect("ciphertext")
                .decapsulate(&sk)
                .expect("decapsulates");
            assert_eq!(opened.encode(), ss);
        }
        let (_, pk) = key_gen_derand(Algorithm::XWingKemDraft06, &[7; 32]).expect("keys");
        let good = pk.encode();
        let eseed = [3u8; XWING_ESEED];
        let refused = |pk: &[u8]| {
            matches!(
                xwing_encaps_derand(pk, &eseed),
                Err(hpke_rs_crypto::error::Error::KemInvalidPublicKey)
            )
        };
        assert!(refused(&good[..XWING_PK - 1]));
        assert!(refused(&[good.as_slice(), &[0]].concat()));
        assert!(refused(&[]));
        // An ML-KEM coefficient of 4095 (≥ q) fails the public-key check.
        let mut bad_m = good.clone();
        bad_m[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(refused(&bad_m));
        // A low-order X25519 key (zero) gives the all-zero shared secret.
        let mut bad_x = good.clone();
        bad_x[1184..].fill(0);
        assert!(refused(&bad_x));
    }

    /// X25519 through Edwards gives the ladder's answer: random points, points on the twist,
    /// small-order points, u = 0, 1, p − 1 and non-canonical encodings (u ≥ p, top bit set).
    #[test]
    fn x25519_through_edwards_is_the_ladder_s_answer() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            let mut out = [0u8; 32];
            for chunk in out.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            out
        };
        let p_minus = |d: u8| {
            let mut u = [0xff; 32];
            u[0] = 0xed - d;
            u[31] = 0x7f;
            u
        };
        let mut specials = vec![[0u8; 32], p_minus(1), p_minus(0), [0xff; 32]];
        let mut one = [0u8; 32];
        one[0] = 1;
        specials.push(one);
        // u-coordinates of the two points of order 8 (from the usual list of small-order points).
        specials.push(hex32(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ));
        specials.push(hex32(
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        ));
        let mut twist = 0;
        for i in 0..400 {
            let k = next();
            let u = if i < specials.len() {
                specials[i]
            } else {
                next()
            };
            let ladder = MontgomeryPoint(u).mul_clamped(k).to_bytes();
            assert_eq!(x25519(&k, u), ladder, "u = {u:02x?}");
            twist += usize::from(MontgomeryPoint(u).to_edwards(0).is_none());
        }
        assert!(
            twist > 100,
            "about half of random u are on the twist: {twist}"
        );

        fn hex32(text: &str) -> [u8; 32] {
            hex(text).try_into().expect("32 bytes")
        }
    }

    /// The unpacked ML-KEM key gives libcrux's packed encapsulation, byte for byte; a bad
    /// key is refused through the provider's seal, not remembered; the remembered keys stay
    /// bounded and keep the ones in use.
    #[test]
    fn prepared_recipients_encapsulate_as_libcrux_and_stay_bounded() {
        use libcrux_kem::{Algorithm, key_gen_derand};
        use libcrux_ml_kem::mlkem768;
        for i in 0..8u8 {
            let (_, pk) = key_gen_derand(Algorithm::XWingKemDraft06, &[i; 32]).expect("keys");
            let pk = pk.encode();
            let pk_m = mlkem768::MlKem768PublicKey::try_from(&pk[..1184]).expect("ML-KEM key");
            let packed = MlKemKey::Packed(Box::new(pk_m.clone()));
            let chosen = MlKemKey::new(pk_m);
            let (ct, ss) = packed.encapsulate([i ^ 0x5a; 32]);
            let (ct2, ss2) = chosen.encapsulate([i ^ 0x5a; 32]);
            assert_eq!(ct.as_ref(), ct2.as_ref());
            assert_eq!(ss.as_ref(), ss2.as_ref());
        }
        let ours = CryptoProvider::new().expect("provider");
        let config = || Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519.hpke_config();
        let (_, pk) = key_gen_derand(Algorithm::XWingKemDraft06, &[9; 32]).expect("keys");
        let mut bad = pk.encode();
        bad[1184..].fill(0);
        assert!(matches!(
            ours.hpke_seal(config(), &bad, b"info", b"aad", b"secret"),
            Err(CryptoError::HpkeEncryptionError)
        ));
        bad[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(
            ours.hpke_seal(config(), &bad, b"info", b"aad", b"secret")
                .is_err()
        );
        assert!(
            ours.hpke_seal(config(), &bad[..100], b"info", b"aad", b"secret")
                .is_err()
        );
        let lock = || ours.recipients.lock().expect("lock");
        assert_eq!(lock().len(), 0);
        // Many keys (the same recipient under many names is enough to count entries): the
        // table never holds more than its bound, and a key in use survives every turnover.
        let kept = pk.encode();
        let recipient = std::sync::Arc::new(Recipient::prepare(&kept).expect("prepared"));
        lock().insert(&kept, recipient.clone());
        for n in 0..3 * MAX_RECIPIENTS {
            let name = (n as u64).to_le_bytes();
            lock().insert(&name, recipient.clone());
            assert!(lock().len() <= MAX_RECIPIENTS);
            if n % 256 == 0 {
                assert!(lock().get(&kept).is_some(), "a key in use stays");
            }
        }
    }

    /// Keys nobody can encrypt to are found: every small-order X25519 point (u of the points
    /// of order 1, 2, 4 and 8, and on the twist), bad ML-KEM halves, wrong lengths; real keys
    /// pass.
    #[test]
    fn keys_nobody_can_encrypt_to_are_found() {
        use libcrux_kem::{Algorithm, key_gen_derand};
        let xwing = HpkeKemType::XWingKemDraft6;
        let x = HpkeKemType::DhKem25519;
        for i in 0..8u8 {
            let (_, pk) = key_gen_derand(Algorithm::XWingKemDraft06, &[i; 32]).expect("keys");
            let pk = pk.encode();
            assert_eq!(hpke_key_problem(xwing, &pk), None);
            assert_eq!(hpke_key_problem(x, &pk[1184..]), None);
            let mut bad = pk.clone();
            bad[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
            assert!(hpke_key_problem(xwing, &bad).is_some());
            assert!(hpke_key_problem(xwing, &pk[..XWING_PK - 1]).is_some());
            assert!(hpke_key_problem(x, &pk[..31]).is_some());
        }
        let (_, pk) = key_gen_derand(Algorithm::XWingKemDraft06, &[1; 32]).expect("keys");
        let pk = pk.encode();
        // Small-order u-coordinates: 0, 1, p − 1 (order 4, on the twist), the two of order 8,
        // and non-canonical forms of 0 and 1 (p, p + 1).
        let mut p_minus_1 = [0xff; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut p = p_minus_1;
        p[0] = 0xed;
        let mut p_plus_1 = p_minus_1;
        p_plus_1[0] = 0xee;
        let mut one = [0u8; 32];
        one[0] = 1;
        let hex32 = |t: &str| -> [u8; 32] { hex(t).try_into().expect("32 bytes") };
        let order8a = hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        let order8b = hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157");
        for u in [[0u8; 32], one, p_minus_1, order8a, order8b, p, p_plus_1] {
            assert!(hpke_key_problem(x, &u).is_some(), "u = {u:02x?}");
            let mut key = pk.clone();
            key[1184..].copy_from_slice(&u);
            assert!(hpke_key_problem(xwing, &key).is_some(), "u = {u:02x?}");
        }
        assert_eq!(hpke_key_problem(HpkeKemType::DhKemP256, &[1, 2, 3]), None);
        // Random u-coordinates (about half of them on the twist) have large order.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..64 {
            let mut u = [0u8; 32];
            for chunk in u.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            assert_eq!(hpke_key_problem(x, &u), None, "u = {u:02x?}");
        }
    }

    #[test]
    fn hpke_goes_both_ways_between_this_provider_and_libcrux() {
        use openmls_traits::types::Ciphersuite;
        let ours = CryptoProvider::new().expect("provider");
        let libcrux = openmls_libcrux_crypto::CryptoProvider::new().expect("provider");
        for suite in [
            Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        ] {
            let config = || suite.hpke_config();
            let keys = libcrux
                .derive_hpke_keypair(config(), &[7; 32])
                .expect("key pair");
            let big_info = vec![5u8; 200_000];
            for (seal, open) in [
                (&ours as &dyn OpenMlsCrypto, &libcrux as &dyn OpenMlsCrypto),
                (&libcrux, &ours),
            ] {
                // Twice: the second time to a recipient this provider prepared already.
                for _ in 0..2 {
                    let sealed = seal
                        .hpke_seal(config(), &keys.public, &big_info, b"aad", b"secret")
                        .expect("seal");
                    assert_eq!(
                        open.hpke_open(config(), &sealed, &keys.private, &big_info, b"aad")
                            .expect("open"),
                        b"secret"
                    );
                }
                let sealed = seal
                    .hpke_seal(config(), &keys.public, &big_info, b"aad", b"secret")
                    .expect("seal");
                assert!(
                    open.hpke_open(config(), &sealed, &keys.private, b"other info", b"aad")
                        .is_err()
                );
                let (enc, exported) = seal
                    .hpke_setup_sender_and_export(config(), &keys.public, &big_info, b"ctx", 32)
                    .expect("export");
                let again = open
                    .hpke_setup_receiver_and_export(
                        config(),
                        &enc,
                        &keys.private,
                        &big_info,
                        b"ctx",
                        32,
                    )
                    .expect("export");
                assert_eq!(&*exported, &*again);
            }
        }
    }

    #[test]
    fn the_sha2_family_matches_libcrux_and_the_standards() {
        let ours = CryptoProvider::new().expect("provider");
        let libcrux = openmls_libcrux_crypto::CryptoProvider::new().expect("provider");
        // FIPS 180-4 "abc".
        assert_eq!(
            ours.hash(HashType::Sha2_256, b"abc").expect("hash"),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        // RFC 5869 test case 1.
        let ikm = [0x0b; 22];
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let prk = ours
            .hkdf_extract(HashType::Sha2_256, &salt, &ikm)
            .expect("extract");
        assert_eq!(
            prk.as_slice(),
            hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        );
        let okm = ours
            .hkdf_expand(HashType::Sha2_256, prk.as_slice(), &info, 42)
            .expect("expand");
        assert_eq!(
            okm.as_slice(),
            hex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
        for hash in [HashType::Sha2_256, HashType::Sha2_384, HashType::Sha2_512] {
            for len in [0usize, 1, 63, 64, 65, 1216, 100_000] {
                let data: Vec<u8> = (0..len)
                    .map(|i| u8::try_from(i * 7 % 251).unwrap_or(0))
                    .collect();
                assert_eq!(ours.hash(hash, &data), libcrux.hash(hash, &data));
                let key = &data[..len.min(200)];
                assert_eq!(
                    ours.hmac(hash, key, &data).map(|m| m.as_slice().to_vec()),
                    libcrux
                        .hmac(hash, key, &data)
                        .map(|m| m.as_slice().to_vec())
                );
                let prk = ours.hkdf_extract(hash, key, &data).expect("extract");
                assert_eq!(
                    prk.as_slice(),
                    libcrux
                        .hkdf_extract(hash, key, &data)
                        .expect("extract")
                        .as_slice()
                );
                for out in [1usize, 32, 100] {
                    assert_eq!(
                        ours.hkdf_expand(hash, prk.as_slice(), key, out)
                            .map(|m| m.as_slice().to_vec()),
                        libcrux
                            .hkdf_expand(hash, prk.as_slice(), key, out)
                            .map(|m| m.as_slice().to_vec())
                    );
                }
            }
        }
        // Too long an output is refused as libcrux refuses it.
        let prk = ours
            .hkdf_extract(HashType::Sha2_256, b"salt", b"ikm")
            .expect("extract");
        assert!(
            ours.hkdf_expand(HashType::Sha2_256, prk.as_slice(), b"", 255 * 32 + 1)
                .is_err()
        );
    }
}
