//! TLS termination for clients: rustls driven over our own buffers, so the
//! io_uring reads and writes stay as they are and only carry ciphertext.
//! No I/O here: bytes in, bytes out.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Builds the server configuration from PEM files: a certificate chain
/// (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("tls.cert_file: cannot read {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert_file: {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert_file: {} holds no CERTIFICATE block", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file: {}: no usable private key: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: the certificate and key do not work together: {e}"))?;
    Ok(Arc::new(config))
}

/// A TLS error from the client's side (bad handshake, bad record).
#[derive(Debug)]
pub struct TlsError(pub String);

/// One client's TLS state.
pub struct TlsSession {
    conn: ServerConnection,
}

impl TlsSession {
    pub fn new(config: &Arc<ServerConfig>) -> Result<TlsSession, TlsError> {
        let mut conn = ServerConnection::new(config.clone()).map_err(|e| TlsError(e.to_string()))?;
        // Our own limits apply upstream (PENDING_LIMIT); rustls must not
        // refuse plaintext we hand it.
        conn.set_buffer_limit(None);
        Ok(TlsSession { conn })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether TLS has bytes to send (handshake, alerts, data).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Takes the ciphertext in `cipher` (consumed), appends the plaintext it
    /// carries to `plain`. Returns true once the client closed the stream
    /// (close_notify). On error, alerts may be pending: send
    /// [`TlsSession::encrypt`]'s output before closing.
    pub fn decrypt(&mut self, cipher: &mut Vec<u8>, plain: &mut Vec<u8>) -> Result<bool, TlsError> {
        let mut input = &cipher[..];
        while !input.is_empty() {
            let n = self.conn.read_tls(&mut input).map_err(|e| TlsError(e.to_string()))?;
            if n == 0 {
                break;
            }
            let state = self.conn.process_new_packets().map_err(|e| TlsError(e.to_string()))?;
            let mut want = state.plaintext_bytes_to_read();
            while want > 0 {
                let start = plain.len();
                plain.resize(start + want, 0);
                match self.conn.reader().read(&mut plain[start..]) {
                    Ok(got) => {
                        plain.truncate(start + got);
                        want -= got.min(want);
                        if got == 0 {
                            break;
                        }
                    }
                    Err(_) => {
                        plain.truncate(start);
                        break;
                    }
                }
            }
            if state.peer_has_closed() {
                cipher.clear();
                return Ok(true);
            }
        }
        cipher.clear();
        Ok(false)
    }

    /// Encrypts `plain` (drained) and appends every pending TLS record to
    /// `out`.
    pub fn encrypt(&mut self, plain: &mut Vec<u8>, out: &mut Vec<u8>) {
        if !plain.is_empty() {
            // With no buffer limit, rustls takes it all.
            let _ = self.conn.writer().write_all(plain);
            plain.clear();
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Queues a close_notify alert (sent by the next [`TlsSession::encrypt`]).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}
