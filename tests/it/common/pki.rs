//! A test certificate authority: a CA and the certificates it signs, as PEM files in a
//! temporary directory (the gRPC port's TLS, client certificates, an identity issuer's HTTPS).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A CA, the server's certificate, and client certificates: PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub ca: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&key).unwrap();
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, ca.pem()).unwrap();
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca: path,
        }
    }

    /// A certificate with these names, signed by this CA, written as `<file>.pem` and
    /// `<file>-key.pem`; `expired`: its validity ended yesterday.
    pub fn leaf(&self, file: &str, names: Vec<SanType>, expired: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        params.distinguished_name.push(DnType::CommonName, file);
        if expired {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        }
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (cert, key_path) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}-key.pem")),
        );
        std::fs::write(&cert, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert, key_path)
    }

    pub fn spiffe(&self, file: &str, id: &str) -> (PathBuf, PathBuf) {
        self.leaf(file, vec![SanType::URI(id.try_into().unwrap())], false)
    }
}

/// The names a server on loopback answers to.
pub fn loopback_names() -> Vec<SanType> {
    vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    ]
}
