//! A throwaway CA and a server certificate it issued for 127.0.0.1 and
//! localhost: what the TLS peers of the tests (Dovecot, the SMTP sink)
//! present, and what a `ca_file` trusts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestCertificate {
    /// The CA's certificate, PEM: the content of a `ca_file`.
    pub ca_pem: String,
    /// The server's certificate and key, PEM.
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl TestCertificate {
    /// A new CA, and a certificate it issued for 127.0.0.1 / localhost.
    pub fn issue() -> TestCertificate {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "leadgate test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = server
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server certificate");
        TestCertificate {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// Write `cert.pem`, `key.pem` and `ca.pem` into `dir`; returns the CA
    /// file.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &self.key_pem).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &self.ca_pem).unwrap();
        ca_file
    }

    /// A rustls server presenting the certificate (ring, TLS 1.2 and 1.3).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(self.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
        .expect("server certificate and key");
        Arc::new(config)
    }
}
