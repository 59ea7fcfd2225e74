//! `token` handlers.

use tonic::Request;

use super::{Res, Services, ok};
use crate::grpc::auth::caller;
use crate::grpc::convert_ext::{app_token_to_pb, link_token_to_pb, token_status_to_pb};
use crate::grpc::limits;
use crate::grpc::pb;
use crate::grpc::requests::{ValidateOnboardingToken, account_name, onboarding_name};

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Services {
    async fn get_app_token(&self, req: Request<pb::GetAppTokenRequest>) -> Res<pb::AppToken> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = onboarding_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.get_app_token(&caller, &id).await.map(|t| app_token_to_pb(&t)))
    }

    async fn validate_onboarding_token(
        &self,
        req: Request<pb::ValidateOnboardingTokenRequest>,
    ) -> Res<pb::ValidateOnboardingTokenResponse> {
        let caller = caller(&req)?;
        let r = ValidateOnboardingToken::try_from((&caller, req.into_inner()))?;
        ok(self.core.validate_onboarding_token(&caller, &r.account, &r.token).await.map(|t| link_token_to_pb(&t)))
    }

    async fn refresh_provider_token(
        &self,
        req: Request<pb::RefreshProviderTokenRequest>,
    ) -> Res<pb::ProviderTokenStatus> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name(&caller.tenant, "account", &req.get_ref().account)?;
        ok(self.core.refresh_provider_token(&caller, &id).await.map(|s| token_status_to_pb(&id, &s)))
    }

    async fn get_provider_token_status(
        &self,
        req: Request<pb::GetProviderTokenStatusRequest>,
    ) -> Res<pb::ProviderTokenStatus> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name(&caller.tenant, "account", &req.get_ref().account)?;
        ok(self.core.get_provider_token_status(&caller, &id).await.map(|s| token_status_to_pb(&id, &s)))
    }
}
