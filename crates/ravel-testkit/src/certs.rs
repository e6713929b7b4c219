//! Certificates made by tests (rcgen): a CA, the certificates it signs,
//! and token files, written as PEM files under a test's directory.

use std::path::{Path, PathBuf};

use ravel_runtime::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority of a test.
pub struct TestCa {
    name: String,
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA named `name`; its certificate is written to
    /// `dir/{name}-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca = TestCa {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            cert,
            key,
        };
        std::fs::write(ca.ca_path(), ca.cert.pem()).expect("write CA");
        ca
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for server and client use naming `names` (DNS names
    /// or IP addresses), signed by this CA, written with its key; the
    /// returned files trust this CA.
    pub fn issue(&self, holder: &str, names: &[&str]) -> TlsFiles {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, holder);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign certificate");
        let files = TlsFiles {
            cert: self.dir.join(format!("{holder}.pem")),
            key: self.dir.join(format!("{holder}-key.pem")),
            ca: self.ca_path(),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

/// Writes `token` to `dir/name` and returns the path.
pub fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    path
}
