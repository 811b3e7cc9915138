//! TLS between executors, when certificates are configured: each site's
//! executor holds a certificate signed by the fleet's CA, and both ends of
//! a connection verify the other's (mutual TLS, 1.3 only). The job's
//! secret still proves that a connection belongs to the job; TLS keeps
//! the pages themselves private on the WAN.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Any connection between executors: plain TCP, or TLS over it.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// Where an executor's certificate, its key and the fleet's CA are (PEM files).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TlsFiles {
    /// This executor's certificate chain (PEM).
    #[arg(long = "tls-cert", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "tls-key", requires_all = ["cert", "ca"])]
    pub key: Option<PathBuf>,
    /// The fleet's CA certificate, which signs every executor's (PEM).
    #[arg(long = "tls-ca", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Both ends of TLS for one executor.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

impl Tls {
    /// TLS as configured, or `None` when no certificate is.
    pub fn from_files(files: &TlsFiles) -> Result<Option<Tls>, TlsError> {
        match (&files.cert, &files.key, &files.ca) {
            (Some(cert), Some(key), Some(ca)) => Tls::load(cert, key, ca).map(Some),
            _ => Ok(None),
        }
    }

    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| file_error(cert, e))?;
        if chain.is_empty() {
            return Err(file_error(cert, "no certificate in it"));
        }
        let private = |path: &Path| PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e));
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
            roots.add(root.map_err(|e| file_error(ca, e))?).map_err(|e| file_error(ca, e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_error(ca, e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), private(key)?)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private(key)?)?;
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(Arc::new(client)) })
    }

    /// Takes a connection's TLS handshake as its server.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Box<dyn Connection>> {
        Ok(Box::new(self.acceptor.accept(tcp).await?))
    }

    /// Opens TLS on `tcp` to the executor whose certificate names `name`.
    pub async fn connect(&self, name: &str, tcp: TcpStream) -> io::Result<Box<dyn Connection>> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Box::new(self.connector.connect(name, tcp).await?))
    }
}

/// A connection to the executor at `addr` (`host:port`): TLS when
/// configured (its certificate must name `host`), plain TCP otherwise.
pub async fn connect(addr: &str, tls: Option<&Tls>) -> io::Result<Box<dyn Connection>> {
    let tcp = TcpStream::connect(addr).await?;
    // Offers and answers are small frames.
    tcp.set_nodelay(true)?;
    match tls {
        Some(tls) => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            tls.connect(host.trim_start_matches('[').trim_end_matches(']'), tcp).await
        }
        None => Ok(Box::new(tcp)),
    }
}

/// Takes a connection accepted on a listener: TLS when configured.
pub async fn accept(tcp: TcpStream, tls: Option<&Tls>) -> io::Result<Box<dyn Connection>> {
    tcp.set_nodelay(true)?;
    match tls {
        Some(tls) => tls.accept(tcp).await,
        None => Ok(Box::new(tcp)),
    }
}
