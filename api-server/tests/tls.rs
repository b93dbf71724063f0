//! Transport security of the real server binary over loopback: what is negotiated, and
//! which clients are refused during the handshake. No executor is needed: the TLS layer
//! decides before any request is read.

use std::sync::Arc;
use std::time::Duration;

use jobworker_testkit::grpc::{channel, refusal};
use jobworker_testkit::{Api, ApiOptions, Pki};
use rustls::{ClientConfig, NamedGroup, ProtocolVersion, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn server(pki: &Pki) -> Api {
    Api::spawn(pki, &ApiOptions::no_executor())
}

fn roots(pki: &Pki) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    roots
}

#[tokio::test]
async fn valid_client_negotiates_tls13_with_x25519mlkem768_and_h2() {
    let pki = Pki::generate();
    let api = server(&pki);
    let (channel, negotiated) = channel(api.addr, pki.client_config("alice"))
        .await
        .expect("connect");
    // A call proves the connection is accepted past the handshake.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check over the accepted connection");
    let negotiated = negotiated.lock().unwrap().clone().expect("handshake seen");
    assert_eq!(negotiated.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(negotiated.group, Some(NamedGroup::X25519MLKEM768));
    assert_eq!(negotiated.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn server_prefers_hybrid_group_but_accepts_x25519_and_p256() {
    let pki = Pki::generate();
    let api = server(&pki);
    use rustls::crypto::aws_lc_rs::kx_group;
    for (group, expected) in [
        (kx_group::X25519, NamedGroup::X25519),
        (kx_group::SECP256R1, NamedGroup::secp256r1),
    ] {
        let mut provider = (*jobworker_api::tls::provider()).clone();
        provider.kx_groups = vec![group];
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&pki))
            .with_client_auth_cert(vec![pki.client_cert("alice")], pki.client_key("alice"))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let (channel, negotiated) = channel(api.addr, config).await.expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("accepted");
        let seen = negotiated.lock().unwrap().clone().unwrap();
        assert_eq!(seen.group, Some(expected));
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused_at_handshake() {
    let pki = Pki::generate();
    let api = server(&pki);
    let mut config = ClientConfig::builder_with_provider(jobworker_api::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let e = refusal(api.addr, config).await;
    assert!(e.contains("CertificateRequired"), "{e}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_at_handshake() {
    let pki = Pki::generate();
    let api = server(&pki);
    let e = refusal(api.addr, pki.client_config("other-ca")).await;
    assert!(e.contains("UnknownCA"), "{e}");
}

#[tokio::test]
async fn expired_certificate_is_refused_at_handshake() {
    let pki = Pki::generate();
    let api = server(&pki);
    let e = refusal(api.addr, pki.client_config("expired")).await;
    assert!(e.contains("CertificateExpired"), "{e}");
}

#[tokio::test]
async fn revoked_certificate_is_refused_at_handshake() {
    let pki = Pki::generate();
    let api = server(&pki);
    let e = refusal(api.addr, pki.client_config("revoked")).await;
    assert!(e.contains("CertificateRevoked"), "{e}");
    // The same certificate passes when no CRL is configured: the CRL is what refuses it.
    let no_crl = Api::spawn(
        &pki,
        &ApiOptions {
            with_crl: false,
            ..ApiOptions::no_executor()
        },
    );
    let (channel, _) = channel(no_crl.addr, pki.client_config("revoked"))
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("accepted without a CRL");
}

#[tokio::test]
async fn certificate_without_common_name_is_refused_at_handshake() {
    let pki = Pki::generate();
    let api = server(&pki);
    let e = refusal(api.addr, pki.client_config("no-cn")).await;
    assert!(e.contains("AccessDenied"), "{e}");
}

#[tokio::test]
async fn certificate_without_the_client_auth_usage_is_refused_at_handshake() {
    let pki = Pki::generate();
    let api = server(&pki);
    for who in ["no-eku", "server-eku"] {
        let e = refusal(api.addr, pki.client_config(who)).await;
        assert!(e.contains("UnsupportedCertificate"), "{who}: {e}");
    }
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let pki = Pki::generate();
    let api = server(&pki);
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots(&pki))
    .with_client_auth_cert(vec![pki.client_cert("alice")], pki.client_key("alice"))
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(api.addr).await.unwrap();
    let result = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    let e = match result {
        Ok(_) => panic!("a TLS 1.2 handshake must fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("ProtocolVersion"), "{e}");
}

#[tokio::test]
async fn client_that_never_finishes_its_handshake_is_dropped_after_the_timeout() {
    let pki = Pki::generate();
    let api = Api::spawn(
        &pki,
        &ApiOptions {
            tls_extra: "handshake_timeout_ms = 300\n".into(),
            ..ApiOptions::no_executor()
        },
    );
    let mut tcp = TcpStream::connect(api.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // The server closes the silent connection: EOF is the event waited for; the
    // limit only bounds a failure.
    let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
        .await
        .expect("the server should close a silent connection");
    assert!(matches!(n, Ok(0)), "{n:?}");
    let mut api = api;
    // The log line may follow the close; after the exit the log is complete.
    assert!(api.terminate(Duration::from_secs(20)).success());
    assert!(
        api.log().contains("TLS handshake timed out"),
        "{}",
        api.log()
    );
}
