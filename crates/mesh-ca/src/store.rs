//! The CA directory, in Istio's plug-in CA layout:
//!
//! | file | holds |
//! | --- | --- |
//! | `ca-cert.pem` | the signing CA certificate |
//! | `ca-key.pem` | its private key, PKCS#8, mode 0600 |
//! | `root-cert.pem` | the root certificate |
//! | `cert-chain.pem` | the chain from `ca-cert.pem` up to the root |
//! | `trust-domain` | the trust domain name (ours; Istio keeps it in mesh config) |
//! | `trust-bundle.pem` | optional: more roots to hand out, for a root rotation |
//! | `tokens/` | pending join tokens, one file each, mode 0600 |

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mesh_core::identity::TrustDomain;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::authority::{CertificateAuthority, pem_cert};
use crate::error::CaError;

/// The signing certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The root certificate.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The chain from the signing certificate to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The trust domain name.
pub const TRUST_DOMAIN_FILE: &str = "trust-domain";
/// Extra roots handed to workloads (root rotation).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Creates `dir` (and parents) readable by the owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(CaError::io(dir))
}

/// Writes a file atomically (temp file then rename) with the given mode.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given at creation is masked by the umask and ignored for an
        // existing file: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(CaError::io(path))
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(CaError::io(path))
}

fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CaError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn bad_file(path: PathBuf) -> impl FnOnce(CaError) -> CaError {
    move |e| match e {
        e @ (CaError::Io { .. } | CaError::BadFile { .. }) => e,
        other => CaError::BadFile {
            path,
            what: other.to_string(),
        },
    }
}

fn pem_all(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(pem_cert).collect()
}

impl CertificateAuthority {
    /// Creates a new root CA for `trust_domain` in `dir` (created mode 0700).
    /// Refuses if `dir` already holds a CA key.
    pub fn init_dir(dir: &Path, trust_domain: TrustDomain) -> Result<Self, CaError> {
        if dir.join(CA_KEY_FILE).exists() {
            return Err(CaError::AlreadyInitialized(dir.to_owned()));
        }
        let ca = Self::generate_root(trust_domain, OffsetDateTime::now_utc())?;
        ca.save_dir(dir)?;
        Ok(ca)
    }

    /// Imports a user's CA given in Istio's plug-in layout (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem` in `src`) into `dir`.
    pub fn import_istio_dir(
        dir: &Path,
        src: &Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, CaError> {
        if dir.join(CA_KEY_FILE).exists() {
            return Err(CaError::AlreadyInitialized(dir.to_owned()));
        }
        let ca = Self::load_files(src, trust_domain)?;
        ca.save_dir(dir)?;
        Ok(ca)
    }

    /// Opens the CA kept in `dir`: the same root and key as before a restart.
    pub fn open_dir(dir: &Path) -> Result<Self, CaError> {
        if !dir.join(CA_KEY_FILE).exists() {
            return Err(CaError::NotInitialized(dir.to_owned()));
        }
        let td_path = dir.join(TRUST_DOMAIN_FILE);
        let trust_domain =
            TrustDomain::new(read(&td_path)?.trim()).map_err(|e| CaError::BadFile {
                path: td_path,
                what: e.to_string(),
            })?;
        let ca = Self::load_files(dir, trust_domain)?;
        let bundle_path = dir.join(TRUST_BUNDLE_FILE);
        match read_optional(&bundle_path)? {
            Some(pem) => {
                let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| CaError::BadFile {
                        path: bundle_path,
                        what: e.to_string(),
                    })?;
                Ok(ca.with_extra_roots(roots))
            }
            None => Ok(ca),
        }
    }

    fn load_files(dir: &Path, trust_domain: TrustDomain) -> Result<Self, CaError> {
        let ca_cert = read(&dir.join(CA_CERT_FILE))?;
        let ca_key = read(&dir.join(CA_KEY_FILE))?;
        let root = read(&dir.join(ROOT_CERT_FILE))?;
        let chain = read_optional(&dir.join(CERT_CHAIN_FILE))?.unwrap_or_default();
        Self::from_pem(trust_domain, &ca_cert, &ca_key, &chain, &root)
            .map_err(bad_file(dir.to_owned()))
    }

    fn save_dir(&self, dir: &Path) -> Result<(), CaError> {
        create_private_dir(dir)?;
        write_file(&dir.join(CA_KEY_FILE), self.ca_key_pem().as_bytes(), 0o600)?;
        write_file(
            &dir.join(CA_CERT_FILE),
            pem_cert(self.ca_cert()).as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(ROOT_CERT_FILE),
            pem_cert(self.root()).as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(CERT_CHAIN_FILE),
            pem_all(&self.cert_chain()).as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(TRUST_DOMAIN_FILE),
            format!("{}\n", self.trust_domain()).as_bytes(),
            0o644,
        )?;
        Ok(())
    }
}
