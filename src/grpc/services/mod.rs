//! Handlers for every `wa.onboard.v1` service: parse, call core, convert. A provider without
//! the capability an RPC needs answers `UNIMPLEMENTED` naming it; nothing fakes success.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::SharedCore;
use super::auth::caller;
use super::pb;
use super::requests::onboarding_name;
use crate::core::Core;
use crate::core::onboardings::StreamItem;
use crate::error::AppError;

/// The one struct implementing every service.
#[derive(Clone)]
pub struct Services {
    core: SharedCore,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// `GetOnboarding` answers, encoded (see [`crate::core::read_cache`] and
    /// [`super::preencoded`]).
    onboardings_pb: std::sync::Arc<crate::core::read_cache::OnboardingReadCache<bytes::Bytes>>,
    /// Converted stream events (see [`super::pb_cache`]).
    events_pb: std::sync::Arc<super::pb_cache::EventPbCache>,
}

impl Services {
    /// New handlers over the core.
    pub fn new(core: Core, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            core: std::sync::Arc::new(core),
            shutdown,
            onboardings_pb: Default::default(),
            events_pb: Default::default(),
        }
    }
}

type Res<T> = Result<Response<T>, Status>;
pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ok<T>(r: Result<T, AppError>) -> Res<T> {
    r.map(Response::new).map_err(Status::from)
}

pub(super) fn capability_to_pb(c: crate::domain::Capability) -> pb::Capability {
    use crate::domain::Capability as C;
    match c {
        C::CheckCredentials => pb::Capability::CheckCredentials,
        C::PartnerToken => pb::Capability::PartnerToken,
        C::LinkApp => pb::Capability::LinkApp,
        C::AppToken => pb::Capability::AppToken,
        C::PipelineStatus => pb::Capability::PipelineStatus,
        C::LiveEvent => pb::Capability::LiveEvent,
        C::Subscriptions => pb::Capability::Subscriptions,
        C::HostedLink => pb::Capability::HostedLink,
        C::BatchLinks => pb::Capability::BatchLinks,
        C::TokenValidation => pb::Capability::TokenValidation,
        C::ChannelLifecycle => pb::Capability::ChannelLifecycle,
        C::ConnectCode => pb::Capability::ConnectCode,
        C::ChannelMode => pb::Capability::ChannelMode,
        C::ExtendDays => pb::Capability::ExtendDays,
        C::DeleteRefund => pb::Capability::DeleteRefund,
        C::PartnerBalance => pb::Capability::PartnerBalance,
        C::NumberRegistration => pb::Capability::NumberRegistration,
        C::AccountStatusPolling => pb::Capability::AccountStatusPolling,
        C::PartnerWebhook => pb::Capability::PartnerWebhook,
        C::Cancel => pb::Capability::Cancel,
        C::Lookup => pb::Capability::Lookup,
    }
}

impl Services {
    /// The items of a `WatchOnboarding` / `WatchPipeline` stream on `name`: checked, scoped to
    /// the caller's tenant, and tied to the caller's key so a revoked key ends the stream.
    async fn watch_items<R: super::limits::Limited>(
        &self,
        req: &Request<R>,
        name: &str,
        after: i64,
    ) -> Result<CoreStream, Status> {
        let caller = caller(req)?;
        super::limits::checked(req.get_ref())?;
        let id = onboarding_name(&caller.tenant, "name", name)?;
        let key = super::auth::key_check(req);
        Ok(Box::pin(self.core.watch_onboarding(&caller, &id, after, key, self.shutdown.clone()).await?))
    }
}

/// A core stream, boxed so it outlives the handler that opened it.
type CoreStream = Pin<Box<dyn Stream<Item = Result<StreamItem, AppError>> + Send + 'static>>;

/// Maps a core stream to a gRPC stream of `T`.
pub(super) fn stream<T: Send + 'static>(
    items: impl Stream<Item = Result<StreamItem, AppError>> + Send + 'static,
    map: impl Fn(StreamItem) -> T + Send + 'static,
) -> BoxStream<T> {
    // Gathered: the messages of this connection's streams sent at one moment go out in one
    // socket write (see `grpc::gather`). Its own small box: it needs the stream `Unpin`.
    let inner: BoxStream<T> = Box::pin(items.map(move |item| item.map(&map).map_err(Status::from)));
    Box::pin(super::gather::Gathered::new(inner))
}

mod account;
mod channel;
mod delivery;
mod onboarding;
mod pipeline;
mod provider;
mod subscription;
mod token;
