//! `subscription` handlers.

#[allow(unused_imports)]
use super::*;
use crate::grpc::convert_ext::*;

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for Services {
    async fn create_subscription(&self, req: Request<pb::CreateSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let id = v.check("parent", onboarding_name("parent", &r.parent).map_err(|e| e.message));
        let mut spec = spec_from_pb(&mut v, "spec", r.spec, None);
        // `active` defaults to true on create (proto3 cannot tell unset from false).
        spec.active = true;
        let rid = request_id(&mut v, &r.request_id);
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.create_subscription(&caller, &id, &spec, rid.as_deref()).await.map(|s| subscription_to_pb(&s)))
    }

    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let (id, sub) = subscription_name("name", &req.get_ref().name)?;
        ok(self.core.get_subscription(&caller, &id, &sub).await.map(|s| subscription_to_pb(&s)))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Res<pb::ListSubscriptionsResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let id = v.check("parent", onboarding_name("parent", &r.parent).map_err(|e| e.message));
        // Tokens are bound to this onboarding's list.
        let kind = format!("subscriptions@{}", r.parent);
        let page = page_request(&mut v, &kind, r.page_size, &r.page_token, DEFAULT_PAGE);
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.list_subscriptions(&caller, &id, &page).await.map(|p| pb::ListSubscriptionsResponse {
            subscriptions: p.items.iter().map(subscription_to_pb).collect(),
            next_page_token: page_token(&kind, p.next_page_token),
        }))
    }

    async fn update_subscription(&self, req: Request<pb::UpdateSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let name = v.check("name", subscription_name("name", &r.name).map_err(|e| e.message));
        let fields = update_fields(&mut v, r.update_mask);
        let spec = spec_from_pb(&mut v, "spec", r.spec, Some(&fields));
        v.finish()?;
        let Some((id, sub)) = name else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.update_subscription(&caller, &id, &sub, &spec, &fields).await.map(|s| subscription_to_pb(&s)))
    }

    async fn delete_subscription(&self, req: Request<pb::DeleteSubscriptionRequest>) -> Res<()> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let (id, sub) = subscription_name("name", &req.get_ref().name)?;
        ok(self.core.delete_subscription(&caller, &id, &sub).await)
    }
}
