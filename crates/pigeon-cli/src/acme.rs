//! `pigeon relay --tls … --acme DOMAIN`: a certificate for the tls front from an ACME CA (Let's
//! Encrypt unless `--acme-directory` names another), obtained and renewed while the relay runs.
//!
//! What is kept in the data directory, so that restarts reuse it:
//!
//! * `acme-account.json` (mode 0600): the ACME account (its key and URL) and the directory URL
//!   it belongs to. Another `--acme-directory` makes a new account.
//! * `acme-key.pem` (mode 0600): the certificate's key, made once and kept across renewals (as
//!   certbot's `--reuse-key`), so a link made with `--pin` stays valid. Delete it to change keys.
//! * `acme-cert.pem`: the issued chain, leaf first.
//!
//! The HTTP-01 challenge is answered on `--acme-http` (port 80), which is also what a real site
//! has there: every other request is redirected to `https://DOMAIN/…` ([`http01`]).
//!
//! The front's certificate sits in a [`CertSlot`], a rustls certificate resolver: a renewed
//! certificate is swapped in and the next handshake uses it, with no restart. Until the first
//! certificate arrives the front serves a self-signed one made from the same key.
//!
//! Renewal: when 30 days remain (or a third of the lifetime, for certificates that live less
//! than 90 days). A failed order is tried again after 1 minute, then 2, 4 … up to 6 hours. The
//! decisions ([`renew_at`], [`retry_delay`], [`Leaf::unfit`]) take the time as an argument; the
//! clock is read only in the renewal task.
//!
//! Nothing secret reaches the logs: keys are never printed, and errors carry the CA's problem
//! documents and file names only.

mod http01;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use http01::Challenges;

/// Let's Encrypt's production directory: the default of `--acme-directory`.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

const ACCOUNT_FILE: &str = "acme-account.json";
const KEY_FILE: &str = "acme-key.pem";
const CERT_FILE: &str = "acme-cert.pem";

/// Renew when this little of a certificate's life remains (30 days) …
const RENEW_BEFORE: i64 = 30 * 86_400;
/// The first wait after a failed order; it doubles with each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(60);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// The renewal task wakes at least this often to look at the wall clock again (a machine that
/// slept, or whose clock was set, renews on time).
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate, and then to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one order may take in all (a CA that stops answering is tried again later).
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// The settings from `--acme*`.
#[derive(Clone, Debug)]
pub(crate) struct AcmeConfig {
    /// The name to certify.
    pub(crate) domain: String,
    /// A contact address for the account (`--acme-email`).
    pub(crate) email: Option<String>,
    /// The CA's directory URL.
    pub(crate) directory: String,
    /// Where the HTTP-01 listener listens.
    pub(crate) http: SocketAddr,
    /// The only root to trust for the directory's HTTPS (`--acme-ca`), instead of the system's.
    pub(crate) ca: Option<PathBuf>,
    /// Where everything on the HTTP listener that is not a challenge is redirected:
    /// `https://DOMAIN[:PORT]`.
    pub(crate) redirect: String,
}

/// The front's current certificate; rustls asks it at each handshake, and a renewal swaps it.
pub(crate) struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSlot").finish_non_exhaustive()
    }
}

impl CertSlot {
    fn new(first: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(first),
        }
    }

    /// Makes `next` the certificate of every later handshake.
    fn install(&self, next: Arc<CertifiedKey>) {
        // Nothing panics while the lock is held, so a poisoned lock still holds a whole value.
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = next;
    }

    fn get(&self) -> Arc<CertifiedKey> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current)
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// What is read off an issued chain's leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leaf {
    /// Start of validity, Unix seconds.
    not_before: i64,
    /// End of validity, Unix seconds.
    not_after: i64,
    /// The DNS names it is valid for (lowercase).
    names: Vec<String>,
    /// SHA-256 of its SubjectPublicKeyInfo.
    pin: [u8; 32],
    /// Its issuer, for the logs.
    issuer: String,
}

impl Leaf {
    fn read(chain: &[CertificateDer<'_>]) -> anyhow::Result<Self> {
        let der = chain.first().context("the chain holds no certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
        let validity = cert.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                    names.push(n.to_ascii_lowercase());
                }
            }
        }
        Ok(Self {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            names,
            pin: pigeon_transport_tls::certs::spki_sha256(der)?,
            issuer: cert.issuer().to_string(),
        })
    }

    /// Why this certificate cannot serve `domain` with the key whose pin is `pin` at `now`, or
    /// `None` when it can.
    fn unfit(&self, domain: &str, pin: &[u8; 32], now: i64) -> Option<&'static str> {
        if !self.names.iter().any(|n| n.eq_ignore_ascii_case(domain)) {
            Some("it does not name the domain")
        } else if self.pin != *pin {
            Some("it is not for the kept key")
        } else if now >= self.not_after {
            Some("it has expired")
        } else {
            None
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` (Unix seconds) is renewed: when 30
/// days remain, or a third of its lifetime for a certificate that lives less than 90 days.
fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_after.saturating_sub(RENEW_BEFORE.min(lifetime / 3))
}

/// The wait before the next try after `failures` failed orders in a row (at least one).
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1u32 << doublings).min(RETRY_MAX)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the epoch as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), for the logs.
fn show_time(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .map_or_else(|| unix.to_string(), httpdate::fmt_http_date)
}

/// The account file: the credentials and the directory they belong to. Never printed.
#[derive(serde::Serialize, serde::Deserialize)]
struct AccountFile {
    directory: String,
    credentials: AccountCredentials,
}

/// What the renewal task works with.
struct Ctx {
    dir: PathBuf,
    config: AcmeConfig,
    /// The certificate's key, for rustls.
    key: PrivateKeyDer<'static>,
    /// The same key, for the signing requests.
    csr_key: rcgen::KeyPair,
    /// Pin of the key.
    pin: [u8; 32],
    slot: Arc<CertSlot>,
    challenges: Arc<Challenges>,
}

/// A running ACME client: the HTTP-01 listener and the renewal task. Dropping it stops both
/// (the front keeps the certificate it has).
pub(crate) struct Acme {
    slot: Arc<CertSlot>,
    pin: [u8; 32],
    http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Acme {
    /// Starts the HTTP-01 listener, puts the kept certificate (or, until one arrives, a
    /// self-signed one) in the slot, and starts the renewal task, which orders a certificate at
    /// once when none fits.
    ///
    /// # Errors
    /// When the domain or address is unusable, the listener cannot listen, or the files in the
    /// data directory cannot be read or written.
    pub(crate) async fn start(dir: &Path, config: AcmeConfig) -> anyhow::Result<Self> {
        check_domain(&config.domain)?;
        if let Some(email) = &config.email {
            check_email(email)?;
        }
        if let Some(ca) = &config.ca {
            CertificateDer::from_pem_file(ca).map_err(|e| {
                anyhow::anyhow!("--acme-ca {}: not a PEM certificate: {e}", ca.display())
            })?;
        }
        // instant-acme's HTTPS client takes the process's rustls provider; this relay uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .with_context(|| {
                format!(
                    "could not listen on {} for ACME's HTTP-01 challenge (--acme-http; port 80 \
                     needs root or CAP_NET_BIND_SERVICE)",
                    config.http
                )
            })?;
        let http_addr = listener.local_addr()?;

        // The key is made once; the self-signed certificate from it serves until the CA's arrives.
        let own = pigeon_transport_tls::certs::self_signed(&dir.join(KEY_FILE), &config.domain)
            .context("the ACME certificate key")?;
        let key_pem = std::fs::read_to_string(dir.join(KEY_FILE))
            .with_context(|| format!("could not read {}", dir.join(KEY_FILE).display()))?;
        let csr_key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", dir.join(KEY_FILE).display()))?;

        let now = unix_now();
        // A certificate from another CA (say, staging before production) is replaced at once.
        let other_ca = read_account(dir)?.is_some_and(|a| a.directory != config.directory);
        let kept = match load_chain(&dir.join(CERT_FILE))? {
            None => None,
            Some(chain) => match Leaf::read(&chain) {
                Ok(leaf) => match leaf.unfit(&config.domain, &own.pin, now) {
                    None => Some((chain, leaf)),
                    Some(why) => {
                        tracing::info!(reason = why, "not using the kept ACME certificate");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the kept ACME certificate is damaged; ordering a new one");
                    None
                }
            },
        };
        let (first, due) = match kept {
            Some((chain, leaf)) => {
                let due = if !other_ca {
                    renew_at(leaf.not_before, leaf.not_after)
                } else {
                    tracing::info!(
                        "the kept ACME certificate is from another --acme-directory; ordering a new one"
                    );
                    now
                };
                tracing::info!(
                    domain = %config.domain,
                    issuer = %leaf.issuer,
                    expires = %show_time(leaf.not_after),
                    renew = %show_time(due),
                    "using the ACME certificate kept in the data directory"
                );
                (certified(chain, own.key.clone_key())?, due)
            }
            None => {
                tracing::info!(
                    domain = %config.domain,
                    "no ACME certificate yet: the front serves a self-signed one until it arrives"
                );
                (certified(own.chain, own.key.clone_key())?, now)
            }
        };
        let slot = Arc::new(CertSlot::new(first));
        let challenges = Arc::new(Challenges::default());
        let http_task = tokio::spawn(http01::serve(
            listener,
            Arc::clone(&challenges),
            config.redirect.clone(),
        ));
        tracing::info!(listen = %http_addr, "ACME HTTP-01 listener (and redirect to https) serving");
        let ctx = Ctx {
            dir: dir.to_owned(),
            config,
            key: own.key,
            csr_key,
            pin: own.pin,
            slot: Arc::clone(&slot),
            challenges,
        };
        let renew_task = tokio::spawn(renew_loop(ctx, due));
        Ok(Self {
            slot,
            pin: own.pin,
            http_addr,
            tasks: vec![http_task, renew_task],
        })
    }

    /// The resolver for [`pigeon_transport_tls::server_tls_config_with_resolver`].
    pub(crate) fn resolver(&self) -> Arc<CertSlot> {
        Arc::clone(&self.slot)
    }

    /// Pin of the certificate's key (it stays the same across renewals).
    pub(crate) fn pin(&self) -> [u8; 32] {
        self.pin
    }
}

fn check_domain(domain: &str) -> anyhow::Result<()> {
    match pigeon_transport::Host::parse(domain) {
        Ok(pigeon_transport::Host::Name(_)) if !domain.starts_with("*.") => Ok(()),
        Ok(_) => anyhow::bail!("--acme {domain:?}: give a DNS name, not an address"),
        Err(e) => Err(anyhow::anyhow!("--acme {domain:?} is not a DNS name: {e}")),
    }
}

fn check_email(email: &str) -> anyhow::Result<()> {
    let ok = email
        .split_once('@')
        .is_some_and(|(user, host)| !user.is_empty() && !host.is_empty())
        && !email.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',');
    anyhow::ensure!(ok, "--acme-email {email:?} is not an email address");
    Ok(())
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| anyhow::anyhow!("the certificate and its key do not fit: {e}"))
}

/// The PEM chain in `path`, `None` if there is no such file.
fn load_chain(path: &Path) -> anyhow::Result<Option<Vec<CertificateDer<'static>>>> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    parse_chain(&pem)
        .map(Some)
        .with_context(|| format!("{} is damaged", path.display()))
}

fn parse_chain(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("not a PEM certificate chain: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "it holds no certificate");
    Ok(chain)
}

fn read_account(dir: &Path) -> anyhow::Result<Option<AccountFile>> {
    let path = dir.join(ACCOUNT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            // serde_json's message names a position, never the content.
            .with_context(|| {
                format!(
                    "{} is damaged (delete it to make a new account)",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Writes `bytes` to `path` atomically, with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("could not create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not write {}", path.display()))
}

/// Orders a certificate whenever one is due, for as long as the relay runs.
async fn renew_loop(ctx: Ctx, mut due: i64) {
    let mut failures = 0u32;
    loop {
        loop {
            let left = due.saturating_sub(unix_now());
            if left <= 0 {
                break;
            }
            let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
            tokio::time::sleep(left.min(LONGEST_SLEEP)).await;
        }
        tracing::info!(
            domain = %ctx.config.domain,
            directory = %ctx.config.directory,
            "asking the ACME CA for a certificate"
        );
        let result = match tokio::time::timeout(ORDER_TIMEOUT, obtain(&ctx)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "the order took longer than {} s",
                ORDER_TIMEOUT.as_secs()
            )),
        };
        ctx.challenges.clear();
        match result {
            Ok((chain, leaf)) => match certified(chain, ctx.key.clone_key()) {
                Ok(key) => {
                    ctx.slot.install(key);
                    failures = 0;
                    due = renew_at(leaf.not_before, leaf.not_after);
                    tracing::info!(
                        domain = %ctx.config.domain,
                        issuer = %leaf.issuer,
                        expires = %show_time(leaf.not_after),
                        renew = %show_time(due),
                        "certificate from ACME installed"
                    );
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    due = retry(&e, failures);
                }
            },
            Err(e) => {
                failures = failures.saturating_add(1);
                due = retry(&e, failures);
            }
        }
    }
}

fn retry(error: &anyhow::Error, failures: u32) -> i64 {
    let delay = retry_delay(failures);
    tracing::warn!(
        error = %format!("{error:#}"),
        failures,
        retry_in_secs = delay.as_secs(),
        "could not get a certificate from ACME; the front keeps its current one"
    );
    unix_now().saturating_add(i64::try_from(delay.as_secs()).unwrap_or(i64::MAX))
}

/// The account for the configured directory: the kept one, or a new one (then kept).
async fn account(ctx: &Ctx) -> anyhow::Result<Account> {
    let config = &ctx.config;
    let builder = || match &config.ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("--acme-ca {}: cannot trust it", ca.display())),
        None => Account::builder().context("the system's certificate roots"),
    };
    if let Some(kept) = read_account(&ctx.dir)?
        && kept.directory == config.directory
    {
        return builder()?
            .from_credentials(kept.credentials)
            .await
            .with_context(|| format!("the ACME directory {}", config.directory));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                // Asking for certificates with --acme is agreeing to the CA's terms.
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("could not make an account at {}", config.directory))?;
    let file = AccountFile {
        directory: config.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&file).context("the account does not encode")?;
    write_file(&ctx.dir.join(ACCOUNT_FILE), &json, 0o600)?;
    tracing::info!(directory = %config.directory, "made an ACME account");
    Ok(account)
}

/// One order: the account, the HTTP-01 challenge, the signing request, the chain. The chain is
/// checked and written to the data directory before it is returned.
async fn obtain(ctx: &Ctx) -> anyhow::Result<(Vec<CertificateDer<'static>>, Leaf)> {
    let domain = &ctx.config.domain;
    let account = account(ctx).await?;
    let identifiers = [Identifier::Dns(domain.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("the CA refused the order")?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("could not read the order's authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => anyhow::bail!("the CA's authorization for {domain} is {other:?}"),
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .with_context(|| format!("the CA offers no HTTP-01 challenge for {domain}"))?;
        ctx.challenges
            .insert(&challenge.token, challenge.key_authorization().as_str());
        challenge
            .set_ready()
            .await
            .context("the CA did not take the challenge")?;
    }
    let retries = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .context("the CA did not validate the challenge")?;
    if status != OrderStatus::Ready {
        // Say why, from the challenge's own error (e.g. "connection refused" from port 80).
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            if let Ok(state) = authz.refresh().await {
                why.extend(
                    state
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref())
                        .map(ToString::to_string),
                );
            }
        }
        anyhow::bail!(
            "the CA could not validate {domain} over HTTP-01 (is port 80 of {domain} this \
             relay's --acme-http?): order {status:?}{}{}",
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        );
    }
    let mut params = rcgen::CertificateParams::new(vec![domain.clone()])
        .map_err(|e| anyhow::anyhow!("{domain:?} cannot be a certificate's name: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&ctx.csr_key)
        .map_err(|e| anyhow::anyhow!("could not make the signing request: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .context("the CA refused the signing request")?;
    let pem = order
        .poll_certificate(&retries)
        .await
        .context("the CA did not issue the certificate")?;
    let chain = parse_chain(pem.as_bytes()).context("the CA's certificate")?;
    let leaf = Leaf::read(&chain).context("the CA's certificate")?;
    if let Some(why) = leaf.unfit(domain, &ctx.pin, unix_now()) {
        anyhow::bail!("the CA's certificate is unusable: {why}");
    }
    write_file(&ctx.dir.join(CERT_FILE), pem.as_bytes(), 0o644)?;
    Ok((chain, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn renews_with_thirty_days_left_or_a_third_of_a_short_life() {
        // Let's Encrypt's 90 days: 30 days before the end.
        assert_eq!(renew_at(0, 90 * DAY), 60 * DAY);
        // A year: still 30 days before.
        assert_eq!(renew_at(0, 365 * DAY), 335 * DAY);
        // Short-lived: a third of the life is left.
        assert_eq!(renew_at(0, 6 * DAY), 4 * DAY);
        // Nonsense validity renews at the end, never before the start.
        assert_eq!(renew_at(10 * DAY, 5 * DAY), 5 * DAY);
    }

    #[test]
    fn retries_back_off_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(5), Duration::from_secs(960));
        assert_eq!(retry_delay(9), Duration::from_secs(15_360));
        assert_eq!(retry_delay(10), Duration::from_secs(6 * 3600));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(6 * 3600));
        assert_eq!(retry_delay(0), Duration::from_secs(60));
    }

    fn leaf() -> Leaf {
        Leaf {
            not_before: 0,
            not_after: 90 * DAY,
            names: vec!["relay.example.org".into()],
            pin: [7; 32],
            issuer: "CN=Test".into(),
        }
    }

    #[test]
    fn a_kept_certificate_must_fit_name_key_and_time() {
        let l = leaf();
        assert_eq!(l.unfit("relay.example.org", &[7; 32], DAY), None);
        assert_eq!(l.unfit("RELAY.example.org", &[7; 32], DAY), None);
        assert!(l.unfit("other.example.org", &[7; 32], DAY).is_some());
        assert!(l.unfit("relay.example.org", &[8; 32], DAY).is_some());
        assert!(l.unfit("relay.example.org", &[7; 32], 90 * DAY).is_some());
    }

    #[test]
    fn flags_are_checked() {
        assert!(check_domain("relay.example.org").is_ok());
        assert!(check_domain("203.0.113.9").is_err());
        assert!(check_domain("*.example.org").is_err());
        assert!(check_domain("not a name").is_err());
        assert!(check_email("ops@example.org").is_ok());
        assert!(check_email("ops").is_err());
        assert!(check_email("a@b, c@d").is_err());
    }

    /// The leaf's fields are read from a real certificate, and the slot hands out whatever was
    /// installed last (what a renewal does while the front runs).
    #[test]
    fn leaves_are_read_and_the_slot_swaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pigeon_transport_tls::certs::self_signed(&dir.path().join("a.pem"), "a.example")
            .expect("a");
        let b = pigeon_transport_tls::certs::self_signed(&dir.path().join("b.pem"), "b.example")
            .expect("b");
        let leaf = Leaf::read(&a.chain).expect("parses");
        assert_eq!(leaf.names, vec!["a.example".to_owned()]);
        assert_eq!(leaf.pin, a.pin);
        assert!(leaf.not_after - leaf.not_before > 300 * DAY);
        assert_eq!(leaf.unfit("a.example", &a.pin, unix_now()), None);
        assert!(Leaf::read(&[]).is_err());
        assert!(parse_chain(b"no pem here").is_err());

        let slot = CertSlot::new(certified(a.chain.clone(), a.key.clone_key()).expect("a fits"));
        assert_eq!(slot.get().cert[0], a.chain[0]);
        slot.install(certified(b.chain.clone(), b.key.clone_key()).expect("b fits"));
        assert_eq!(slot.get().cert[0], b.chain[0]);
        // A key that is not the certificate's is refused, not served.
        assert!(certified(a.chain, b.key).is_err());
    }

    /// The resolver variant of the front's settings is the same as the fixed one but for where
    /// the certificate comes from.
    #[test]
    fn resolver_config_matches_the_fixed_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pigeon_transport_tls::certs::self_signed(&dir.path().join("a.pem"), "a.example")
            .expect("a");
        let slot = Arc::new(CertSlot::new(
            certified(a.chain.clone(), a.key.clone_key()).expect("fits"),
        ));
        let fixed = pigeon_transport_tls::server_tls_config(a.chain, a.key).expect("fixed");
        let swapped =
            pigeon_transport_tls::server_tls_config_with_resolver(slot).expect("resolver");
        assert_eq!(fixed.alpn_protocols, swapped.alpn_protocols);
        assert_eq!(fixed.send_tls13_tickets, swapped.send_tls13_tickets);
        assert_eq!(
            fixed.enable_secret_extraction,
            swapped.enable_secret_extraction
        );
        assert_eq!(fixed.max_early_data_size, swapped.max_early_data_size);
    }
}
