//! The transport policy of the public API, shared by the server and every client so the
//! two can never drift apart: TLS 1.3 only, three AEAD suites, a hybrid post-quantum key
//! exchange first, ALPN `h2`. Each side builds its own `ServerConfig` or `ClientConfig`
//! from these, always passing the provider explicitly (never a process-wide default).

use std::sync::Arc;

use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};

/// ALPN protocol of gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// The only protocol version: TLS 1.3 (no renegotiation, no static-RSA or CBC suites,
/// encrypted certificates).
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The aws-lc-rs provider restricted to the chosen suites and groups, in order of
/// preference:
///
/// - cipher suites TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256 (for peers
///   without AES hardware), TLS13_AES_128_GCM_SHA256;
/// - key exchange X25519MLKEM768 (hybrid: secure if either X25519 or ML-KEM holds, so
///   recorded traffic resists a future quantum computer), X25519, secp256r1 (peers
///   limited to NIST curves).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ],
        ..aws_lc_rs::default_provider()
    })
}
