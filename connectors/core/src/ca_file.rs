//! `ca_file`: a PEM file of CA certificates to trust besides the public web
//! PKI roots, for a server whose certificate a private CA issued. One
//! reader for every TLS client of leadgate (an IMAP channel, the SMTP
//! notifier), so each accepts and refuses the same files with the same
//! words.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::secret::resolve_config_path;

/// A bundle of CA certificates is a few kilobytes; the biggest public ones
/// are under a megabyte. Reading stops past this, so a path naming a device
/// (`/dev/zero`) or a wrong, huge file is refused instead of filling memory.
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// Read the CA certificates of `file` (relative to the configuration
/// folder): at least one, each usable as a trust anchor. The error says
/// what is wrong with which file, without the field name (the caller
/// names its field).
pub fn read_ca_file(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use std::io::Read;
    let path = resolve_config_path(file);
    let shown = path.display();
    let mut pem = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!(
            "{shown} is larger than {MAX_CA_FILE} bytes, not a CA bundle"
        ));
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {shown}"));
    }
    // What a TLS client does with them: refuse here what it would refuse
    // at its first connection.
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a certificate in {shown} is unusable: {e}"))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_garbled_and_huge_files_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("leadgate-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = read_ca_file(&dir.join("missing.pem")).unwrap_err();
        assert!(
            err.starts_with("cannot read ") && err.contains("missing.pem"),
            "{err}"
        );
        let text = dir.join("text.pem");
        std::fs::write(&text, "this is not a certificate\n").unwrap();
        let err = read_ca_file(&text).unwrap_err();
        assert!(err.starts_with("no certificate in "), "{err}");
        let garbled = dir.join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = read_ca_file(&garbled).unwrap_err();
        assert!(err.contains("garbled.pem"), "{err}");
        let junk = dir.join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = read_ca_file(&junk).unwrap_err();
        assert!(err.starts_with("a certificate in "), "{err}");
        let err = read_ca_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
