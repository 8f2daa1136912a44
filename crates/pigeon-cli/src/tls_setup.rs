//! What `pigeon relay --tls` keeps in its data directory and reads from its arguments.
//!
//! * `tls.secret` (mode 0600): the token key, 32 random bytes, made once.
//! * `tls.path`: the secret path prefix, made once at random unless `--tls-path` sets it.
//! * `tls-key.pem` (mode 0600): the key of the relay's own certificate, when it has none from a
//!   CA; the certificate is made from it at each start and its pin goes into the link.
//!
//! Keeping them makes the relay link stable across restarts.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use pigeon_transport::Rotate;
use pigeon_transport_tls::certs::CertKey;
use pigeon_transport_tls::{Cover, TokenKey};

const SECRET_FILE: &str = "tls.secret";
const PATH_FILE: &str = "tls.path";
const KEY_FILE: &str = "tls-key.pem";

/// The token key and secret path of a relay's tls transport.
pub(crate) struct TlsState {
    pub(crate) key: TokenKey,
    pub(crate) path: String,
}

impl TlsState {
    /// Reads the state from `dir`, making what is missing.
    pub(crate) fn load_or_create(dir: &Path, path: Option<&str>) -> anyhow::Result<Self> {
        let secret_file = dir.join(SECRET_FILE);
        let secret = match std::fs::read(&secret_file) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                anyhow::anyhow!("{} is damaged (not 32 bytes)", secret_file.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).context("could not draw a random secret")?;
                write_private(&secret_file, &secret)?;
                secret
            }
            Err(e) => {
                return Err(e).with_context(|| format!("could not read {}", secret_file.display()));
            }
        };
        let path_file = dir.join(PATH_FILE);
        let path = match path {
            Some(p) => {
                write_private(&path_file, p.as_bytes())?;
                p.to_owned()
            }
            None => match std::fs::read_to_string(&path_file) {
                Ok(p) => p.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut raw = [0u8; 9];
                    getrandom::fill(&mut raw).context("could not draw a random path")?;
                    let p = format!(
                        "/{}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
                    );
                    write_private(&path_file, p.as_bytes())?;
                    p
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("could not read {}", path_file.display()));
                }
            },
        };
        Ok(Self {
            key: TokenKey::new(secret),
            path,
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("could not create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A certificate and key, and whether they were made here (then the link pins them).
pub(crate) struct Cert {
    pub(crate) chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub(crate) key: rustls::pki_types::PrivateKeyDer<'static>,
    pub(crate) pin: [u8; 32],
    pub(crate) made_here: bool,
}

/// The certificate from `--cert`/`--key`, or one made here for `name`.
pub(crate) fn load_or_make_cert(
    dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    name: &str,
) -> anyhow::Result<Cert> {
    let (made_here, CertKey { chain, key, pin }) = match (cert, key) {
        (Some(cert), Some(key)) => (false, pigeon_transport_tls::certs::load_pem(cert, key)?),
        _ => (
            true,
            pigeon_transport_tls::certs::self_signed(&dir.join(KEY_FILE), name)?,
        ),
    };
    Ok(Cert {
        chain,
        key,
        pin,
        made_here,
    })
}

/// `host[:port]`, with `default_port` when none is given.
pub(crate) fn split_host_port(
    text: &str,
    default_port: Option<u16>,
) -> anyhow::Result<(String, u16)> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && !host.contains(':')
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok((host.trim_matches(['[', ']']).to_owned(), port));
    }
    let port = default_port.unwrap_or(443);
    Ok((text.trim_matches(['[', ']']).to_owned(), port))
}

/// `--rotate`: `auto`, `off`, or a byte count (`16384`, `16k`).
pub(crate) fn parse_rotate(text: &str) -> anyhow::Result<Rotate> {
    Ok(match text {
        "auto" => Rotate::Auto,
        "off" => Rotate::Off,
        other => {
            let (digits, scale) = match other.strip_suffix(['k', 'K']) {
                Some(d) => (d, 1024),
                None => (other, 1),
            };
            let cap = digits
                .parse::<u32>()
                .ok()
                .and_then(|n| n.checked_mul(scale))
                .with_context(|| format!("--rotate {other:?}: give auto, off or bytes (16k)"))?;
            Rotate::Cap(cap)
        }
    })
}

/// `--cover` and `--cover-h2c`: a directory, or `http://HOST:PORT`. Without `--cover`, a small
/// site is written into the data directory (`cover/`) and served.
pub(crate) fn parse_cover(
    cover: Option<&str>,
    h2c: Option<&str>,
    dir: &Path,
) -> anyhow::Result<Cover> {
    let http_addr = |text: &str, flag: &str| -> anyhow::Result<SocketAddr> {
        let rest = text
            .strip_prefix("http://")
            .with_context(|| format!("{flag} {text:?}: give http://HOST:PORT"))?
            .trim_end_matches('/');
        use std::net::ToSocketAddrs as _;
        rest.to_socket_addrs()
            .with_context(|| format!("{flag} {text:?}: cannot resolve it"))?
            .next()
            .with_context(|| format!("{flag} {text:?}: it has no address"))
    };
    match cover {
        Some(text) if text.starts_with("http://") => Ok(Cover::Upstream {
            http1: http_addr(text, "--cover")?,
            h2c: h2c.map(|t| http_addr(t, "--cover-h2c")).transpose()?,
        }),
        Some(text) if text.contains("://") => {
            anyhow::bail!("--cover {text:?}: give a directory or an http:// address")
        }
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            anyhow::ensure!(path.is_dir(), "--cover {}: not a directory", path.display());
            Ok(Cover::Dir(path))
        }
        None => {
            let site = dir.join("cover");
            if !site.exists() {
                std::fs::create_dir_all(&site)
                    .with_context(|| format!("could not create {}", site.display()))?;
                std::fs::write(site.join("index.html"), DEFAULT_SITE)?;
            }
            tracing::warn!(
                "no --cover given: serving a placeholder page; give the relay a real site"
            );
            Ok(Cover::Dir(site))
        }
    }
}

/// The page served when no cover was given: nginx's own welcome page, the most common page on
/// the web for a server nobody has set up yet.
const DEFAULT_SITE: &str = "<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href=\"http://nginx.org/\">nginx.org</a>.<br/>
Commercial support is available at
<a href=\"http://nginx.com/\">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(
            split_host_port("relay.example.org", Some(8443)).expect("ok"),
            ("relay.example.org".into(), 8443)
        );
        assert_eq!(
            split_host_port("relay.example.org:443", None).expect("ok"),
            ("relay.example.org".into(), 443)
        );
        assert_eq!(
            split_host_port("[::1]:9", None).expect("ok"),
            ("::1".into(), 9)
        );
        assert_eq!(parse_rotate("16k").expect("ok"), Rotate::Cap(16_384));
        assert!(parse_rotate("lots").is_err());
    }
}
