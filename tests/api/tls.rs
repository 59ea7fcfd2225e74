//! TLS and mutual TLS on the gRPC port, from `server.tls`, with certificates made per test.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use wa_onboard::grpc::pb;

use crate::helpers::*;

/// A CA and a certificate it signed.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("ca cert");
        Self { ca_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// (certificate PEM, key PEM) for `names`, for a server or a client.
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }
}

/// A server with TLS from `pki` (and mutual TLS with `client_ca`), files in its data dir.
async fn tls_app(pki: &Pki, client_ca: Option<&str>) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path();
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(certs.join("server.pem"), cert).unwrap();
    std::fs::write(certs.join("server.key"), key).unwrap();
    let mut s = test_settings(certs);
    s.server.tls.cert_file = certs.join("server.pem");
    s.server.tls.key_file = certs.join("server.key");
    if let Some(ca) = client_ca {
        std::fs::write(certs.join("client-ca.pem"), ca).unwrap();
        s.server.tls.client_ca_file = certs.join("client-ca.pem");
    }
    let running = wa_onboard::app::start_with(s, None, None).await.expect("server starts with TLS");
    let key = running.dev_api_key.clone().expect("dev key");
    // A plaintext channel to the TLS port (lazy: it never completes a call).
    let channel = Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect_lazy();
    TestApp { running: Some(running), key, channel, _dir: dir }
}

async fn tls_channel(app: &TestApp, ca_pem: &str, identity: Option<(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", app.running().grpc_addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn list_providers(app: &TestApp, channel: Channel) -> Result<usize, tonic::Status> {
    let mut client = pb::provider_service_client::ProviderServiceClient::new(channel);
    let call = client.list_providers(app.req(pb::ListProvidersRequest {}));
    match tokio::time::timeout(Duration::from_secs(20), call).await {
        Ok(r) => r.map(|r| r.into_inner().providers.len()),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in 20 s")),
    }
}

#[tokio::test]
async fn tls_serves_grpc_and_refuses_plaintext() {
    let pki = Pki::new("wa-onboard test CA");
    let mut app = tls_app(&pki, None).await;
    let channel = tls_channel(&app, &pki.ca_pem, None).await.expect("TLS handshake");
    assert!(list_providers(&app, channel).await.expect("call over TLS") > 0);
    // A client that does not trust the server's CA is refused at the handshake.
    let other = Pki::new("someone else");
    let untrusted = match tls_channel(&app, &other.ca_pem, None).await {
        Err(_) => true,
        Ok(ch) => list_providers(&app, ch).await.is_err(),
    };
    assert!(untrusted, "a client trusting another CA got through");
    // Plaintext HTTP/2 on the TLS port gets no gRPC answer.
    let plain = list_providers(&app, app.channel.clone()).await;
    assert!(plain.is_err(), "plaintext call was served: {plain:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let server_pki = Pki::new("server CA");
    let client_pki = Pki::new("client CA");
    let mut app = tls_app(&server_pki, Some(&client_pki.ca_pem)).await;
    // Without a client certificate: refused.
    let bare = match tls_channel(&app, &server_pki.ca_pem, None).await {
        Err(_) => true,
        Ok(ch) => list_providers(&app, ch).await.is_err(),
    };
    assert!(bare, "a client without a certificate got through");
    // A certificate from another CA: refused.
    let stranger = Pki::new("stranger CA").leaf(&["billing-svc"], ExtendedKeyUsagePurpose::ClientAuth);
    let wrong = match tls_channel(&app, &server_pki.ca_pem, Some(stranger)).await {
        Err(_) => true,
        Ok(ch) => list_providers(&app, ch).await.is_err(),
    };
    assert!(wrong, "a client certificate from an unknown CA got through");
    // A certificate from the client CA: served (the API key is still checked).
    let good = client_pki.leaf(&["billing-svc"], ExtendedKeyUsagePurpose::ClientAuth);
    let channel = tls_channel(&app, &server_pki.ca_pem, Some(good)).await.expect("mTLS handshake");
    assert!(list_providers(&app, channel.clone()).await.expect("call over mTLS") > 0);
    let mut client = pb::provider_service_client::ProviderServiceClient::new(channel);
    let no_key = client.list_providers(pb::ListProvidersRequest {}).await.unwrap_err();
    assert_eq!(no_key.code(), tonic::Code::Unauthenticated);
    app.shutdown().await;
}
