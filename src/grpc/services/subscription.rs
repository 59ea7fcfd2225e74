//! `subscription` handlers.

use tonic::Request;

use super::{Res, Services, ok};
use crate::grpc::auth::caller;
use crate::grpc::convert::page_token;
use crate::grpc::convert_ext::{subscription_name, subscription_to_pb};
use crate::grpc::limits;
use crate::grpc::pb;
use crate::grpc::requests::{CreateSubscription, ListSubscriptions, UpdateSubscription};

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for Services {
    async fn create_subscription(&self, req: Request<pb::CreateSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let r = CreateSubscription::try_from((&caller, req.into_inner()))?;
        ok(self
            .core
            .create_subscription(&caller, &r.id, &r.spec, r.request_id.as_deref())
            .await
            .map(|s| subscription_to_pb(&s)))
    }

    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let (id, sub) = subscription_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.get_subscription(&caller, &id, &sub).await.map(|s| subscription_to_pb(&s)))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Res<pb::ListSubscriptionsResponse> {
        let caller = caller(&req)?;
        let r = ListSubscriptions::try_from((&caller, req.get_ref()))?;
        ok(self.core.list_subscriptions(&caller, &r.id, &r.page).await.map(|p| pb::ListSubscriptionsResponse {
            subscriptions: p.items.iter().map(subscription_to_pb).collect(),
            next_page_token: page_token(&r.kind, p.next_page_token),
        }))
    }

    async fn update_subscription(&self, req: Request<pb::UpdateSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let r = UpdateSubscription::try_from((&caller, req.into_inner()))?;
        ok(self
            .core
            .update_subscription(&caller, &r.id, &r.sub, &r.spec, &r.fields)
            .await
            .map(|s| subscription_to_pb(&s)))
    }

    async fn delete_subscription(&self, req: Request<pb::DeleteSubscriptionRequest>) -> Res<()> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let (id, sub) = subscription_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.delete_subscription(&caller, &id, &sub).await)
    }
}
