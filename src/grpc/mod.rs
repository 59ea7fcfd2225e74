//! The gRPC surface: thin handlers that parse requests into domain types, call `core`, and
//! convert back. Health and reflection are open; everything else needs an API key.

pub mod auth;
pub mod checked;
pub mod codec;
pub mod connect;
pub mod convert;
pub mod convert_ext;
pub mod encoded;
#[cfg(test)]
mod fuzz;
mod gather;
pub mod limits;
pub mod pb;
pub mod pb_cache;
pub mod preencoded;
mod requests;
mod services;

use std::sync::Arc;

use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::core::Core;
use crate::core::tenants::Authenticator;

pub use services::Services;

/// Every `wa.onboard.v1` service name, for health reporting.
pub const SERVICE_NAMES: [&str; 8] = [
    "wa.onboard.v1.AccountService",
    "wa.onboard.v1.OnboardingService",
    "wa.onboard.v1.TokenService",
    "wa.onboard.v1.PipelineService",
    "wa.onboard.v1.SubscriptionService",
    "wa.onboard.v1.ChannelService",
    "wa.onboard.v1.ProviderService",
    "wa.onboard.v1.DeliveryService",
];

/// Largest request header block accepted on the gRPC port.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams a client may open and reset before the server has accepted them, per connection.
const MAX_PENDING_RESETS: usize = 50;

/// Largest request message, the same for gRPC and Connect (tonic's default receive limit).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The layers in front of every route: Connect and CORS (outermost: they turn a Connect call
/// into a native one), gRPC-Web, then metrics (so refused calls count), then auth and request
/// ids.
pub type Layers = Stack<
    auth::AuthLayer,
    Stack<
        crate::telemetry::grpc::GrpcMetricsLayer,
        Stack<tonic_web::GrpcWebLayer, Stack<connect::ConnectLayer, Identity>>,
    >,
>;

/// Why the gRPC router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Reflection descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The descriptor set the Connect transcoder reads.
    #[error("connect descriptors: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// TLS certificates or keys.
    #[error("server.tls: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// Builds the router with every service, health, reflection v1 and v1alpha, the metrics
/// layer and the auth and request-id layer, over TLS when `tls` is given, with at most
/// `max_streams` concurrent calls per connection (`streams.max_per_connection`), with Connect
/// and gRPC-Web beside gRPC (HTTP/1.1 accepted too), CORS and the console as `web` says.
/// Returns the router and the health reporter that flips serving status.
pub fn router(
    core: Core,
    shutdown: tokio::sync::watch::Receiver<bool>,
    authenticator: Authenticator,
    tls: Option<tonic::transport::ServerTlsConfig>,
    max_streams: u32,
    web: connect::WebOptions,
) -> Result<(Router<Layers>, tonic_health::server::HealthReporter), RouterError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let auth = auth::AuthLayer::new(authenticator);
    let metrics = crate::telemetry::grpc::GrpcMetricsLayer::new(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let connect = connect::ConnectLayer::new(web, MAX_MESSAGE_BYTES)?;
    let s = Services::new(core, shutdown);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let router = server
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        // Bounds on what one connection can make the server hold: calls in flight (each open
        // stream keeps its state and queued messages), header bytes per request (API keys and
        // request ids are short), and streams a client opens and resets at once (the "rapid
        // reset" flood) before the connection is closed.
        .max_concurrent_streams(Some(max_streams))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        // Connect and gRPC-Web clients (curl, browsers) speak HTTP/1.1 as well.
        .accept_http1(true)
        .layer(connect)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(metrics)
        .layer(auth)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(codec::OversizeAsExhausted(pb::account_service_server::AccountServiceServer::new(s.clone())))
        // GetOnboarding and WatchOnboarding answer pre-encoded bytes; the rest pass through.
        .add_service(codec::OversizeAsExhausted(preencoded::PreEncodedGet::new(
            encoded::WatchRoute::new(pb::onboarding_service_server::OnboardingServiceServer::new(s.clone()), s.clone()),
            s.clone(),
        )))
        .add_service(codec::OversizeAsExhausted(pb::token_service_server::TokenServiceServer::new(s.clone())))
        .add_service(codec::OversizeAsExhausted(pb::pipeline_service_server::PipelineServiceServer::new(s.clone())))
        .add_service(codec::OversizeAsExhausted(pb::subscription_service_server::SubscriptionServiceServer::new(
            s.clone(),
        )))
        .add_service(codec::OversizeAsExhausted(pb::channel_service_server::ChannelServiceServer::new(s.clone())))
        .add_service(codec::OversizeAsExhausted(pb::delivery_service_server::DeliveryServiceServer::new(s.clone())))
        .add_service(codec::OversizeAsExhausted(pb::provider_service_server::ProviderServiceServer::new(s)));
    Ok((router, reporter))
}

/// Shared-ownership alias used by the service struct.
pub(crate) type SharedCore = Arc<Core>;
