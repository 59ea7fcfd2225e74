//! `token` handlers.

#[allow(unused_imports)]
use super::*;
use crate::grpc::convert_ext::*;

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Services {
    async fn get_app_token(&self, req: Request<pb::GetAppTokenRequest>) -> Res<pb::AppToken> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        ok(self.core.get_app_token(&caller, &id).await.map(|t| app_token_to_pb(&t)))
    }

    async fn validate_onboarding_token(
        &self,
        req: Request<pb::ValidateOnboardingTokenRequest>,
    ) -> Res<pb::ValidateOnboardingTokenResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("account", account_name("account", &r.account).map_err(|e| e.message));
        v.check("token", check_provider_key(&r.token));
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.validate_onboarding_token(&caller, &id, &r.token).await.map(|t| link_token_to_pb(&t)))
    }

    async fn refresh_provider_token(
        &self,
        req: Request<pb::RefreshProviderTokenRequest>,
    ) -> Res<pb::ProviderTokenStatus> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name("account", &req.get_ref().account)?;
        ok(self.core.refresh_provider_token(&caller, &id).await.map(|s| token_status_to_pb(&id, &s)))
    }

    async fn get_provider_token_status(
        &self,
        req: Request<pb::GetProviderTokenStatusRequest>,
    ) -> Res<pb::ProviderTokenStatus> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name("account", &req.get_ref().account)?;
        ok(self.core.get_provider_token_status(&caller, &id).await.map(|s| token_status_to_pb(&id, &s)))
    }
}
