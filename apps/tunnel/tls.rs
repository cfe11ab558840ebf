//! TLS 1.3 for the tunnel (rustls on the ring provider): the server's certificate (made once with
//! rcgen and kept in a directory, or loaded from PEM files), its SHA-256 fingerprint, and the
//! client's two ways to trust it: a pinned fingerprint or a CA file. There is no way to skip
//! verification.

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The ALPN protocol both ends speak (see the module doc of `apps/tunnel/mod.rs` for the wire).
pub const ALPN: &[u8] = b"longhaul-tunnel/1";

/// Where `tunnel server` keeps the certificate it makes on first run, unless `--cert-dir` says.
pub const DEFAULT_CERT_DIR: &str = "/var/lib/longhaul/tunnel";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut f = [0u8; 32];
        f.copy_from_slice(d.as_ref());
        Fingerprint(f)
    }

    /// Parses `sha256:HEX` (64 hex digits; colons between bytes are allowed, case does not matter).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "bad --pin '{s}': expected sha256: and 64 hex digits, as the server prints at start"
            )
        };
        let hex: String = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(bad)?
            .chars()
            .filter(|&c| c != ':')
            .collect();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut f = [0u8; 32];
        for (i, b) in f.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(f))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        f.write_str(&s)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The server's certificate chain and key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The fingerprint clients pin: the end-entity certificate's.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// Loads `cert` (PEM, end-entity first) and `key` (PEM, PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "--cert {}: no CERTIFICATE block in the file",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("--key {}: {e}", key.display()))?;
        Ok(Identity { chain, key })
    }

    /// Loads `dir/cert.pem` and `dir/key.pem`, making them first (self-signed, ECDSA P-256, for
    /// `names`) when `dir` has none. Returns the identity and whether it was just made.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<(Self, bool), String> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.exists() || key.exists() {
            return Self::load(&cert, &key).map(|id| (id, false));
        }
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
        let cant = |p: &PathBuf, e: std::io::Error| {
            format!(
                "--cert-dir: cannot write {}: {e} (choose a writable --cert-dir)",
                p.display()
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| cant(&dir.to_path_buf(), e))?;
        write_private(&key, ck.signing_key.serialize_pem().as_bytes())
            .map_err(|e| cant(&key, e))?;
        std::fs::write(&cert, ck.cert.pem()).map_err(|e| cant(&cert, e))?;
        Self::load(&cert, &key).map(|id| (id, true))
    }
}

/// Writes a file only its owner can read (the private key).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// The server's QUIC crypto: TLS 1.3 only, our ALPN, no client certificates.
pub fn server_crypto(id: Identity) -> Result<QuicServerConfig, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .map_err(|e| format!("the certificate or key is not usable: {e}"))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    QuicServerConfig::try_from(cfg).map_err(|e| format!("TLS setup: {e}"))
}

/// How the client decides to trust the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The end-entity certificate's SHA-256 must be this.
    Pin(Fingerprint),
    /// The chain must lead to a certificate in this PEM file and name the server.
    Ca(PathBuf),
}

/// What the pin verifier saw, for a one-line error when the pin does not match.
#[derive(Default)]
pub struct PinReport {
    /// The fingerprint of the last certificate that did not match the pin.
    pub mismatch: Option<Fingerprint>,
}

/// Accepts exactly the certificate whose SHA-256 is pinned (chain, names and dates do not matter:
/// the pin is the trust), and still checks that the server proves it holds that certificate's key
/// (the TLS 1.3 CertificateVerify signature).
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
    report: Arc<Mutex<PinReport>>,
}

impl std::fmt::Debug for PinReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinReport({:?})", self.mismatch)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity);
        // Not secret, but there is no reason to leak how many bytes matched either.
        if ring_eq(&seen.0, &self.pin.0) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut r) = self.report.lock() {
            r.mismatch = Some(seen);
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only; kept correct anyway.
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's QUIC crypto for `trust`; `report` learns the fingerprint a pin rejected.
pub fn client_crypto(
    trust: &Trust,
    report: Arc<Mutex<PinReport>>,
) -> Result<QuicClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut cfg = match trust {
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: *pin,
                provider,
                report,
            }))
            .with_no_client_auth(),
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "--ca {}: no usable CERTIFICATE in the file",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    QuicClientConfig::try_from(cfg).map_err(|e| format!("TLS setup: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_and_print() {
        let f = Fingerprint::of(b"hello");
        let s = f.to_string();
        assert!(s.starts_with("sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e"));
        assert_eq!(Fingerprint::parse(&s).unwrap(), f);
        assert_eq!(
            Fingerprint::parse(&s.to_uppercase().replace("SHA256", "sha256")).unwrap(),
            f
        );
        assert!(Fingerprint::parse("sha256:abcd").is_err());
        assert!(Fingerprint::parse("md5:00").is_err());
        assert!(Fingerprint::parse(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn a_made_certificate_is_kept_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("lh-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = vec!["longhaul-tunnel".to_string()];
        let (a, made) = Identity::load_or_create(&dir, &names).unwrap();
        assert!(made);
        let (b, made) = Identity::load_or_create(&dir, &names).unwrap();
        assert!(!made);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the key is private");
        assert!(server_crypto(b).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
