//! `kv local up --secure`: a throwaway CA, one certificate per node (its SANs: the node's name,
//! `localhost`, 127.0.0.1), a client certificate, and an auth file with one admin token, all in
//! the cluster folder's `secure/`; and the client settings every `kv` command takes from there.
//! Keys and the token are written readable by their owner only.

use anyhow::{Context, Result};
use kv_client::ClientConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder, inside the cluster folder, holding the secure cluster's material.
pub const SECURE_DIR: &str = "secure";
/// Name of the admin token's principal in the auth file.
pub const ADMIN_NAME: &str = "local-admin";

/// Where a secure local cluster's files are.
#[derive(Debug, Clone)]
pub struct SecureFiles {
    dir: PathBuf,
}

impl SecureFiles {
    /// The files of the cluster in `cluster_dir`.
    pub fn of(cluster_dir: &Path) -> Self {
        Self {
            dir: cluster_dir.join(SECURE_DIR),
        }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Node `name`'s certificate.
    pub fn node_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Node `name`'s private key.
    pub fn node_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// The auth file the nodes load.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.join("auth")
    }

    /// The admin token, alone in its file.
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin-token")
    }

    /// The client certificate (for tools that present one; `kv` itself uses the token).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// Makes the material for nodes `names` unless it exists already (a restart keeps it).
    pub fn create(&self, names: &[String]) -> Result<()> {
        if self.ca().exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let (ca, _) = new_ca("kv local CA")?;
        for name in names {
            let (cert, key) = issue(&ca, &[name.as_str(), "localhost", "127.0.0.1"])?;
            write(&self.node_cert(name), &cert, false)?;
            write(&self.node_key(name), &key, true)?;
        }
        let (cert, key) = issue(&ca, &["kv-client"])?;
        write(&self.client_cert(), &cert, false)?;
        write(&self.dir.join("client-key.pem"), &key, true)?;
        let token = new_token();
        write(
            &self.auth_file(),
            &format!(
                "# kv auth file: TOKEN NAME GRANTS (docs/security.md)\n{token} {ADMIN_NAME} admin\n"
            ),
            true,
        )?;
        write(&self.admin_token(), &format!("{token}\n"), true)?;
        // Last: its presence says the rest is complete.
        write(&self.ca(), &ca.pem(), false)
    }

    /// Applies the cluster's CA (TLS to the nodes) and, unless one is given, its admin token
    /// to `cfg`.
    pub fn configure(&self, cfg: &mut ClientConfig) -> Result<()> {
        let ca = std::fs::read_to_string(self.ca())
            .with_context(|| format!("reading {}", self.ca().display()))?;
        cfg.dialer = Arc::new(kv_core::net::TlsDialer::new(&ca, None));
        if cfg.token.is_none() {
            let token = std::fs::read_to_string(self.admin_token())
                .with_context(|| format!("reading {}", self.admin_token().display()))?;
            cfg.token = Some(token.trim().to_string());
        }
        Ok(())
    }
}

/// A new self-signed CA named `name`, and its certificate's PEM.
pub fn new_ca(name: &str) -> Result<(CertifiedIssuer<'static, KeyPair>, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let pem = ca.pem();
    Ok((ca, pem))
}

/// A certificate signed by `ca` for `sans` (names, or IP addresses), and its key, as PEM.
pub fn issue(ca: &CertifiedIssuer<'_, KeyPair>, sans: &[&str]) -> Result<(String, String)> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans.clone())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().cloned().unwrap_or_default(),
    );
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 32 random hex digits.
fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
