//! `onboarding` handlers.

use prost::Message as _;
use tonic::{Request, Response};

use super::{BoxStream, Res, Services, ok, stream};
use crate::core::onboardings::StreamItem;
use crate::grpc::auth::{caller, caller_ref};
use crate::grpc::convert::{page_token, ts};
use crate::grpc::encoded::Encoded;
use crate::grpc::limits;
use crate::grpc::pb;
use crate::grpc::requests::{
    CancelOnboarding, CreateOnboarding, CreateOnboardingLinks, ListOnboardingEvents, ListOnboardings,
    SubmitVerificationCode, onboarding_name,
};

impl Services {
    /// `GetOnboarding`'s answer, encoded: from the read cache when the row is unchanged
    /// (converted and encoded again only when it changed).
    pub(crate) async fn get_onboarding_encoded(
        &self,
        req: &Request<pb::GetOnboardingRequest>,
    ) -> Result<bytes::Bytes, tonic::Status> {
        let caller = caller_ref(req)?;
        limits::checked(req.get_ref())?;
        let id = onboarding_name(&caller.tenant, "name", &req.get_ref().name)?;
        let encode = |o: &_| bytes::Bytes::from(pb::Onboarding::from(o).encode_to_vec());
        Ok(self.core.get_onboarding_cached(caller, &id, &self.onboardings_pb, encode).await?)
    }
}

#[tonic::async_trait]
impl pb::onboarding_service_server::OnboardingService for Services {
    async fn create_onboarding(&self, req: Request<pb::CreateOnboardingRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let CreateOnboarding(new) = CreateOnboarding::try_from((&caller, req.into_inner()))?;
        ok(self.core.create_onboarding(&caller, new).await.map(|o| pb::Onboarding::from(&o)))
    }

    async fn create_onboarding_links(
        &self,
        req: Request<pb::CreateOnboardingLinksRequest>,
    ) -> Res<pb::CreateOnboardingLinksResponse> {
        let caller = caller(&req)?;
        let r = CreateOnboardingLinks::try_from((&caller, req.into_inner()))?;
        let id = r.account;
        ok(self.core.create_links(&caller, &id, r.count, &r.reference, r.request_id.as_deref()).await.map(
            |(os, batch)| pb::CreateOnboardingLinksResponse {
                onboardings: os.iter().map(pb::Onboarding::from).collect(),
                batch_id: batch,
            },
        ))
    }

    /// Served by [`crate::grpc::preencoded`] in the router; this decodes the same bytes, for
    /// callers of the generated service itself.
    async fn get_onboarding(&self, req: Request<pb::GetOnboardingRequest>) -> Res<pb::Onboarding> {
        let bytes = self.get_onboarding_encoded(&req).await?;
        let message = pb::Onboarding::decode(bytes).map_err(|e| tonic::Status::internal(format!("re-decode: {e}")))?;
        Ok(Response::new(message))
    }

    async fn list_onboardings(&self, req: Request<pb::ListOnboardingsRequest>) -> Res<pb::ListOnboardingsResponse> {
        let caller = caller(&req)?;
        let r = ListOnboardings::try_from((&caller, req.into_inner()))?;
        ok(self.core.list_onboardings(&caller, &r.query, &r.page).await.map(|p| pb::ListOnboardingsResponse {
            onboardings: p.items.iter().map(pb::Onboarding::from).collect(),
            next_page_token: page_token("onboardings", p.next_page_token),
        }))
    }

    async fn cancel_onboarding(&self, req: Request<pb::CancelOnboardingRequest>) -> Res<pb::CancelOnboardingResponse> {
        let caller = caller(&req)?;
        let r = CancelOnboarding::try_from((&caller, req.get_ref()))?;
        ok(self.core.cancel_onboarding(&caller, &r.id, r.request_id.as_deref()).await.map(|(o, days)| {
            pb::CancelOnboardingResponse { onboarding: Some(pb::Onboarding::from(&o)), refunded_days: days as i32 }
        }))
    }

    async fn submit_verification_code(&self, req: Request<pb::SubmitVerificationCodeRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let r = SubmitVerificationCode::try_from((&caller, req.get_ref()))?;
        ok(self.core.submit_verification_code(&caller, &r.id, &r.code).await.map(|o| pb::Onboarding::from(&o)))
    }

    type WatchOnboardingStream = BoxStream<pb::WatchOnboardingResponse>;

    // Served by [`crate::grpc::encoded::WatchRoute`] in encoded form; this is the same stream
    // as protobuf messages, for a server built without that route.
    async fn watch_onboarding(&self, req: Request<pb::WatchOnboardingRequest>) -> Res<Self::WatchOnboardingStream> {
        let (name, after) = (&req.get_ref().name, req.get_ref().after_sequence);
        let items = self.watch_items(&req, name, after).await?;
        let events = self.events_pb.clone();
        Ok(Response::new(stream(items, move |item| match item {
            StreamItem::Event(e, _) => pb::WatchOnboardingResponse { message: Some(M::Event(events.event(&e))) },
            other => watch_response(other),
        })))
    }

    async fn list_onboarding_events(
        &self,
        req: Request<pb::ListOnboardingEventsRequest>,
    ) -> Res<pb::ListOnboardingEventsResponse> {
        let caller = caller(&req)?;
        let r = ListOnboardingEvents::try_from((&caller, req.get_ref()))?;
        ok(self.core.list_events(&caller, &r.id, r.after, r.limit).await.map(|p| pb::ListOnboardingEventsResponse {
            events: p.items.iter().map(pb::OnboardingEvent::from).collect(),
            next_page_token: page_token("events", p.next_page_token),
        }))
    }
}

use pb::watch_onboarding_response::Message as M;

impl Services {
    /// `WatchOnboarding` with every answer encoded: an event's bytes are encoded once and
    /// shared by all its watchers (see [`crate::grpc::encoded`]).
    pub(crate) async fn watch_onboarding_encoded(
        &self,
        req: Request<pb::WatchOnboardingRequest>,
    ) -> Res<BoxStream<Encoded>> {
        let (name, after) = (&req.get_ref().name, req.get_ref().after_sequence);
        let items = self.watch_items(&req, name, after).await?;
        let events = self.events_pb.clone();
        Ok(Response::new(stream(items, move |item| match item {
            StreamItem::Event(e, _) => events.encoded(&e),
            other => Encoded::of(&watch_response(other)),
        })))
    }
}

/// The `WatchOnboarding` answer for one stream item.
fn watch_response(item: StreamItem) -> pb::WatchOnboardingResponse {
    pb::WatchOnboardingResponse {
        message: Some(match item {
            StreamItem::Snapshot(o, _) => M::Snapshot(pb::Onboarding::from(o.as_ref())),
            StreamItem::Event(e, _) => M::Event(pb::OnboardingEvent::from(e.as_ref())),
            StreamItem::Heartbeat { at_ms, last_sequence } => {
                M::Heartbeat(pb::Heartbeat { time: Some(ts(at_ms)), last_sequence })
            }
        }),
    }
}
