//! Certificates for a front: loaded from PEM files, or made here and pinned in the link.
//!
//! A relay on a real domain uses a certificate from a real CA (from files, for example as an
//! ACME client such as certbot or lego leaves them), and its links need no pin: clients check it
//! as a browser would. A relay without one makes its own key and a self-signed certificate for
//! its name, and its link carries the SHA-256 of the key (the pin). The key is kept and the
//! certificate made anew from it at each start, so the pin — and every link — stays valid.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;

/// A certificate chain, its key, and the pin of its leaf's key.
pub struct CertKey {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub pin: [u8; 32],
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Loads a PEM certificate chain and its PEM private key.
///
/// # Errors
/// [`TlsError::Config`] naming the file that cannot be read or holds no certificate or key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Config(format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError::Config(format!(
                "{} is not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Config(format!(
            "{} holds no certificate",
            cert.display()
        )));
    };
    let pin = spki_sha256(leaf)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError::Config(format!(
            "{} holds no usable private key: {e}",
            key.display()
        ))
    })?;
    Ok(CertKey { chain, key, pin })
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo: what a `pin` route parameter holds.
///
/// # Errors
/// [`TlsError::Config`] if `cert` is not a DER certificate.
pub fn spki_sha256(cert: &[u8]) -> Result<[u8; 32], TlsError> {
    let parsed = boring::x509::X509::from_der(cert)
        .map_err(|e| TlsError::Config(format!("not a certificate: {e}")))?;
    let spki = parsed
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| TlsError::Config(format!("the certificate's key does not encode: {e}")))?;
    Ok(boring::sha::sha256(&spki))
}

/// The certificate made here for `name` (a DNS name or an IP address), from the key in
/// `key_file` (made on first use, mode 0600). The certificate is valid from a day ago for 397
/// days, like a public one, and made anew at each start.
///
/// # Errors
/// [`TlsError::Config`] if the key file cannot be read or written or the name is unusable.
pub fn self_signed(key_file: &Path, name: &str) -> Result<CertKey, TlsError> {
    let key_pair = match std::fs::read_to_string(key_file) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| TlsError::Config(format!("{} is damaged: {e}", key_file.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key_pair = rcgen::KeyPair::generate()
                .map_err(|e| TlsError::Config(format!("could not make a key: {e}")))?;
            write_private(key_file, key_pair.serialize_pem().as_bytes())?;
            key_pair
        }
        Err(e) => {
            return Err(TlsError::Config(format!(
                "cannot read {}: {e}",
                key_file.display()
            )));
        }
    };
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| TlsError::Config(format!("{name:?} cannot be a certificate's name: {e}")))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(397);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Config(format!("could not make a certificate: {e}")))?;
    let der = cert.der().clone();
    let pin = spki_sha256(&der)?;
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| TlsError::Config(format!("the key does not encode: {e}")))?;
    Ok(CertKey {
        chain: vec![der],
        key,
        pin,
    })
}

/// Writes `bytes` to `path` with mode 0600, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    let fail =
        |e: std::io::Error| TlsError::Config(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_keeps_its_key_and_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("tls-key.pem");
        let a = self_signed(&key_file, "relay.example.org").expect("made");
        let b = self_signed(&key_file, "relay.example.org").expect("again");
        assert_eq!(a.pin, b.pin);
        let c = self_signed(&key_file, "203.0.113.10").expect("an address");
        assert_eq!(a.pin, c.pin);
        std::fs::write(&key_file, "not a key").expect("write");
        assert!(self_signed(&key_file, "x.example").is_err());
        assert!(spki_sha256(b"not a certificate").is_err());
    }
}
