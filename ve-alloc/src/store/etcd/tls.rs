//! TLS to etcd (`etcd+tls://`): the client configuration built from PEM files before
//! anything is contacted, the stream the gateway client talks over, and which TLS
//! failures are final (a certificate etcd refuses, or one we do not trust) rather than
//! a reason to try the next endpoint.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    AlertDescription, ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};

use common::{Error, Kind, Result};

/// The CA bundle used when `--etcd-cacert` is not given (Debian's, from ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The PEM files of a TLS connection to etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle that signed the members' certificates (else [`SYSTEM_CA_BUNDLE`]).
    pub ca: Option<PathBuf>,
    /// Client certificate (chain) and its key, for etcd's `--client-cert-auth`.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// A client configuration for the members' certificates.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    /// Where the trusted CAs came from, for error messages.
    ca: PathBuf,
}

impl Tls {
    /// Read and check every file: a missing file is 66, an unreadable one 77, one
    /// without the expected PEM contents (or a key that does not fit the certificate) 78.
    pub fn load(files: &TlsFiles) -> Result<Tls> {
        let ca = files
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certificates(&ca, "CA bundle")?);
        if added == 0 {
            return Err(bad_file(&ca, "CA bundle", "holds no usable certificate"));
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::internal(format!("TLS setup: {e}")))?
                .with_root_certificates(roots);
        let config = match &files.cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates(cert, "client certificate")?;
                let der = read(key, "client key")?;
                let key_der = PrivateKeyDer::from_pem_slice(&der).map_err(|e| {
                    let why = match e {
                        rustls::pki_types::pem::Error::NoItemsFound => String::new(),
                        e => format!(" ({e})"),
                    };
                    bad_file(key, "client key", &format!("holds no PEM private key{why}"))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::config(format!(
                        "etcd client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        Ok(Tls {
            config: Arc::new(config),
            ca,
        })
    }

    /// A TLS session on `tcp` to `host` (a name or an address, as in the endpoint; the
    /// member's certificate must name it), with the handshake done.
    pub fn connect(&self, host: &str, mut tcp: TcpStream) -> io::Result<Stream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// The final error a TLS failure on `endpoint` means, None when another endpoint
    /// or a later try may do better. etcd refusing our certificate (or our lack of
    /// one) is 77; a member certificate our CAs do not vouch for, or an endpoint that
    /// does not speak TLS, is 78.
    pub fn refusal(&self, endpoint: &str, e: &io::Error) -> Option<Error> {
        let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        match tls {
            rustls::Error::InvalidCertificate(why) => Some(Error::config(format!(
                "etcd at {endpoint}: its certificate is not trusted ({why}; CA bundle {}, \
                 --etcd-cacert)",
                self.ca.display()
            ))),
            rustls::Error::AlertReceived(alert) if refuses_certificate(*alert) => Some(Error::new(
                Kind::Permission,
                format!(
                    "etcd at {endpoint} refused the connection over its client certificate \
                     (TLS alert {alert:?}): give one signed by a CA it trusts (--etcd-cert, \
                     --etcd-key)"
                ),
            )),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                Some(Error::config(format!(
                    "etcd at {endpoint} does not speak TLS (is the store etcd:// rather than \
                     etcd+tls://?): {tls}"
                )))
            }
            _ => None,
        }
    }
}

/// The alerts a TLS server sends about the client's certificate.
fn refuses_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
    )
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::io(format!("reading the etcd {what} {}", path.display()), e))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, what, &format!("is not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad_file(path, what, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn bad_file(path: &Path, what: &str, why: &str) -> Error {
    Error::config(format!("the etcd {what} {} {why}", path.display()))
}

/// A connection to a member: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
