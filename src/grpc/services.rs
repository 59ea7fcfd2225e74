//! Handlers for every `wa.onboard.v1` service: parse, call core, convert. Provider-specific
//! RPCs answer `UNIMPLEMENTED` naming the capability until their provider's adapter lands;
//! they never fake success.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::SharedCore;
use super::auth::caller;
use super::convert::*;
use super::pb;
use crate::core::Core;
use crate::core::accounts::NewAccount;
use crate::core::onboardings::StreamItem;
use crate::domain::{AccountId, OnboardingId, ProviderKind};
use crate::error::{AppError, Violations};
use crate::store::OnboardingFilter;

/// The one struct implementing every service.
#[derive(Clone)]
pub struct Services {
    core: SharedCore,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Services {
    /// New handlers over the core.
    pub fn new(core: Core, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { core: std::sync::Arc::new(core), shutdown }
    }
}

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ok<T>(r: Result<T, AppError>) -> Res<T> {
    r.map(Response::new).map_err(Status::from)
}

fn account_name(field: &str, name: &str) -> Result<AccountId, AppError> {
    parse_name(field, name, "accounts", |s| AccountId::parse(s))
}

fn onboarding_name(field: &str, name: &str) -> Result<OnboardingId, AppError> {
    let name = name.strip_suffix("/pipeline").unwrap_or(name);
    parse_name(field, name, "onboardings", |s| OnboardingId::parse(s))
}

fn request_id(v: &mut Violations, id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    v.check("request_id", crate::domain::RequestId::parse(id)).map(String::from)
}

/// `UNIMPLEMENTED` for a provider capability whose adapter has not landed yet.
fn not_yet(capability: &str, provider: &str) -> Status {
    AppError::unimplemented(format!(
        "{capability} needs the {provider} adapter, which is not in this build yet; see ListProviders for what works"
    ))
    .into()
}

#[tonic::async_trait]
impl pb::account_service_server::AccountService for Services {
    async fn create_account(&self, req: Request<pb::CreateAccountRequest>) -> Res<pb::Account> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let Some(account) = r.account else {
            return Err(AppError::invalid("account", "is required").into());
        };
        let provider = provider_from_pb(account.provider);
        if provider.is_none() {
            v.add(
                "account.provider",
                "is required: one of PROVIDER_GUPSHUP, PROVIDER_EXOTEL, PROVIDER_WHAPI, PROVIDER_DIGITAL99",
            );
        }
        let id = if r.account_id.is_empty() { None } else { v.check("account_id", AccountId::parse(r.account_id)) };
        let credentials = credentials_from_pb(&mut v, account.credentials);
        let options = options_from_pb(&mut v, provider, account.options);
        let rid = request_id(&mut v, &r.request_id);
        v.finish()?;
        let (Some(provider), Some(credentials)) = (provider, credentials) else {
            return Err(AppError::internal("validated fields missing").into());
        };
        let new = NewAccount {
            id,
            provider,
            display_name: account.display_name,
            credentials,
            options,
            sandbox: account.sandbox,
        };
        ok(self.core.create_account(&caller, new, rid.as_deref()).await.map(|a| account_to_pb(&a)))
    }

    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> Res<pb::Account> {
        let caller = caller(&req)?;
        let id = account_name("name", &req.get_ref().name)?;
        ok(self.core.get_account(&caller, &id).await.map(|a| account_to_pb(&a)))
    }

    async fn list_accounts(&self, req: Request<pb::ListAccountsRequest>) -> Res<pb::ListAccountsResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let page = page_request(&mut v, "accounts", r.page_size, &r.page_token, DEFAULT_PAGE);
        let provider = provider_filter(&mut v, "provider", r.provider);
        v.finish()?;
        ok(self.core.list_accounts(&caller, provider, &page).await.map(|p| pb::ListAccountsResponse {
            accounts: p.items.iter().map(account_to_pb).collect(),
            next_page_token: page_token("accounts", p.next_page_token),
        }))
    }

    async fn delete_account(&self, req: Request<pb::DeleteAccountRequest>) -> Res<()> {
        let caller = caller(&req)?;
        let id = account_name("name", &req.get_ref().name)?;
        ok(self.core.delete_account(&caller, &id, req.get_ref().force).await)
    }

    async fn check_account(&self, req: Request<pb::CheckAccountRequest>) -> Res<pb::CheckAccountResponse> {
        let caller = caller(&req)?;
        let id = account_name("name", &req.get_ref().name)?;
        let account = self.core.get_account(&caller, &id).await?;
        Err(not_yet("CheckAccount", account.record.provider.as_str()))
    }
}

#[tonic::async_trait]
impl pb::provider_service_server::ProviderService for Services {
    async fn list_providers(&self, req: Request<pb::ListProvidersRequest>) -> Res<pb::ListProvidersResponse> {
        let caller = caller(&req)?;
        let mut counts = std::collections::HashMap::new();
        let mut page = crate::store::PageRequest { limit: 1000, after: None };
        loop {
            let p = self.core.list_accounts(&caller, None, &page).await?;
            for a in &p.items {
                *counts.entry(a.record.provider).or_insert(0) += 1;
            }
            match p.next_page_token {
                Some(t) => page.after = Some(t),
                None => break,
            }
        }
        let providers = ProviderKind::ALL
            .into_iter()
            .map(|p| pb::ProviderInfo {
                provider: provider_to_pb(p) as i32,
                display_name: p.display_name().to_string(),
                capabilities: p.capabilities().iter().map(|c| capability_to_pb(*c) as i32).collect(),
                implemented: false,
                sandbox_available: self.core.sandbox_running,
                account_count: counts.get(&p).copied().unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }
}

fn capability_to_pb(c: crate::domain::Capability) -> pb::Capability {
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
    }
}

/// Maps a core stream to a gRPC stream of `T`.
fn stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<StreamItem, AppError>>,
    map: impl Fn(StreamItem) -> T + Send + 'static,
) -> BoxStream<T> {
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| item.map(&map).map_err(Status::from)))
}

#[tonic::async_trait]
impl pb::onboarding_service_server::OnboardingService for Services {
    async fn create_onboarding(&self, req: Request<pb::CreateOnboardingRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let id = account_name("account", &r.account)?;
        let account = self.core.get_account(&caller, &id).await?;
        Err(not_yet("CreateOnboarding", account.record.provider.as_str()))
    }

    async fn create_onboarding_links(
        &self,
        req: Request<pb::CreateOnboardingLinksRequest>,
    ) -> Res<pb::CreateOnboardingLinksResponse> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::new();
        let id = v.check("account", account_name("account", &r.account).map_err(|e| e.message));
        if !(1..=50).contains(&r.count) {
            v.add("count", "must be between 1 and 50 (Exotel mints at most 50 links per call)");
        }
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        let account = self.core.get_account(&caller, &id).await?;
        if account.record.provider != ProviderKind::Exotel {
            return Err(AppError::precondition(format!(
                "CreateOnboardingLinks needs an Exotel account; accounts/{id} is {}",
                account.record.provider
            ))
            .into());
        }
        Err(not_yet("CreateOnboardingLinks", "exotel"))
    }

    async fn get_onboarding(&self, req: Request<pb::GetOnboardingRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        ok(self.core.get_onboarding(&caller, &id).await.map(|o| onboarding_to_pb(&o)))
    }

    async fn list_onboardings(&self, req: Request<pb::ListOnboardingsRequest>) -> Res<pb::ListOnboardingsResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let page = page_request(&mut v, "onboardings", r.page_size, &r.page_token, DEFAULT_PAGE);
        let filter = OnboardingFilter {
            provider: provider_filter(&mut v, "provider", r.provider),
            state: state_filter(&mut v, "state", r.state),
            reference: (!r.reference.is_empty()).then_some(r.reference),
            account_id: if r.account.is_empty() {
                None
            } else {
                v.check("account", account_name("account", &r.account).map_err(|e| e.message))
            },
        };
        v.finish()?;
        ok(self.core.list_onboardings(&caller, &filter, &page).await.map(|p| pb::ListOnboardingsResponse {
            onboardings: p.items.iter().map(onboarding_to_pb).collect(),
            next_page_token: page_token("onboardings", p.next_page_token),
        }))
    }

    async fn cancel_onboarding(&self, req: Request<pb::CancelOnboardingRequest>) -> Res<pb::CancelOnboardingResponse> {
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        let o = self.core.get_onboarding(&caller, &id).await?;
        if o.state.is_finished() {
            return Err(AppError::precondition(format!("onboardings/{id} is already finished ({})", o.state)).into());
        }
        Err(not_yet("CancelOnboarding", o.provider.as_str()))
    }

    async fn submit_verification_code(&self, req: Request<pb::SubmitVerificationCodeRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::new();
        let id = v.check("name", onboarding_name("name", &r.name).map_err(|e| e.message));
        if r.code.is_empty() || r.code.len() > 10 || !r.code.bytes().all(|b| b.is_ascii_digit()) {
            v.add("code", "must be 1 to 10 digits");
        }
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        let o = self.core.get_onboarding(&caller, &id).await?;
        Err(not_yet("SubmitVerificationCode", o.provider.as_str()))
    }

    type WatchOnboardingStream = BoxStream<pb::WatchOnboardingResponse>;

    async fn watch_onboarding(&self, req: Request<pb::WatchOnboardingRequest>) -> Res<Self::WatchOnboardingStream> {
        use pb::watch_onboarding_response::Message as M;
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        let rx = self.core.watch_onboarding(&caller, &id, req.get_ref().after_sequence, self.shutdown.clone()).await?;
        Ok(Response::new(stream(rx, |item| pb::WatchOnboardingResponse {
            message: Some(match item {
                StreamItem::Snapshot(o, _) => M::Snapshot(onboarding_to_pb(&o)),
                StreamItem::Event(e, _) => M::Event(event_to_pb(&e)),
                StreamItem::Heartbeat { at_ms, last_sequence } => {
                    M::Heartbeat(pb::Heartbeat { time: Some(ts(at_ms)), last_sequence })
                }
            }),
        })))
    }

    async fn list_onboarding_events(
        &self,
        req: Request<pb::ListOnboardingEventsRequest>,
    ) -> Res<pb::ListOnboardingEventsResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.check("name", onboarding_name("name", &r.name).map_err(|e| e.message));
        let page = page_request(&mut v, "events", r.page_size, &r.page_token, 100);
        let after = match page.after.as_deref().map(str::parse::<i64>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                v.add("page_token", "is not a token returned by this list");
                0
            }
        };
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.list_events(&caller, &id, after, page.limit).await.map(|p| pb::ListOnboardingEventsResponse {
            events: p.items.iter().map(event_to_pb).collect(),
            next_page_token: page_token("events", p.next_page_token),
        }))
    }
}

#[tonic::async_trait]
impl pb::pipeline_service_server::PipelineService for Services {
    async fn get_pipeline(&self, req: Request<pb::GetPipelineRequest>) -> Res<pb::Pipeline> {
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        ok(self.core.get_pipeline(&caller, &id).await.map(|(o, s)| pipeline_to_pb(&o, &s)))
    }

    type WatchPipelineStream = BoxStream<pb::WatchPipelineResponse>;

    async fn watch_pipeline(&self, req: Request<pb::WatchPipelineRequest>) -> Res<Self::WatchPipelineStream> {
        use pb::watch_pipeline_response::Message as M;
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        let rx = self.core.watch_onboarding(&caller, &id, req.get_ref().after_sequence, self.shutdown.clone()).await?;
        // Events that touch no step still advance the cursor; they are sent as heartbeats
        // carrying their sequence so a resume point is never lost.
        Ok(Response::new(stream(rx, |item| pb::WatchPipelineResponse {
            message: Some(match item {
                StreamItem::Snapshot(o, steps) => M::Snapshot(pipeline_to_pb(&o, &steps)),
                StreamItem::Event(e, Some(step)) => M::Update(pb::PipelineStepUpdate {
                    sequence: e.sequence,
                    step: Some(step_to_pb(&step)),
                    onboarding_state: state_to_pb(e.state) as i32,
                    time: Some(ts(e.created_ms)),
                }),
                StreamItem::Event(e, None) => {
                    M::Heartbeat(pb::Heartbeat { time: Some(ts(e.created_ms)), last_sequence: e.sequence })
                }
                StreamItem::Heartbeat { at_ms, last_sequence } => {
                    M::Heartbeat(pb::Heartbeat { time: Some(ts(at_ms)), last_sequence })
                }
            }),
        })))
    }

    async fn retry_pipeline(&self, req: Request<pb::RetryPipelineRequest>) -> Res<pb::Pipeline> {
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        let o = self.core.get_onboarding(&caller, &id).await?;
        Err(not_yet("RetryPipeline", o.provider.as_str()))
    }
}

/// Resolves a subscription's onboarding for the not-yet-implemented subscription RPCs, so
/// callers still get `NOT_FOUND` / `INVALID_ARGUMENT` for bad names.
async fn subscription_parent(
    core: &Core,
    caller: &crate::core::Caller,
    field: &str,
    name: &str,
) -> Result<ProviderKind, Status> {
    let parent = name.split("/subscriptions/").next().unwrap_or(name);
    let id = onboarding_name(field, parent)?;
    Ok(core.get_onboarding(caller, &id).await?.provider)
}

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for Services {
    async fn create_subscription(&self, req: Request<pb::CreateSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let p = subscription_parent(&self.core, &caller, "parent", &req.get_ref().parent).await?;
        Err(not_yet("CreateSubscription", p.as_str()))
    }

    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let p = subscription_parent(&self.core, &caller, "name", &req.get_ref().name).await?;
        Err(not_yet("GetSubscription", p.as_str()))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Res<pb::ListSubscriptionsResponse> {
        let caller = caller(&req)?;
        let p = subscription_parent(&self.core, &caller, "parent", &req.get_ref().parent).await?;
        Err(not_yet("ListSubscriptions", p.as_str()))
    }

    async fn update_subscription(&self, req: Request<pb::UpdateSubscriptionRequest>) -> Res<pb::Subscription> {
        let caller = caller(&req)?;
        let p = subscription_parent(&self.core, &caller, "name", &req.get_ref().name).await?;
        Err(not_yet("UpdateSubscription", p.as_str()))
    }

    async fn delete_subscription(&self, req: Request<pb::DeleteSubscriptionRequest>) -> Res<()> {
        let caller = caller(&req)?;
        let p = subscription_parent(&self.core, &caller, "name", &req.get_ref().name).await?;
        Err(not_yet("DeleteSubscription", p.as_str()))
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Services {
    async fn get_app_token(&self, req: Request<pb::GetAppTokenRequest>) -> Res<pb::AppToken> {
        let caller = caller(&req)?;
        let id = onboarding_name("name", &req.get_ref().name)?;
        let o = self.core.get_onboarding(&caller, &id).await?;
        Err(not_yet("GetAppToken", o.provider.as_str()))
    }

    async fn validate_onboarding_token(
        &self,
        req: Request<pb::ValidateOnboardingTokenRequest>,
    ) -> Res<pb::ValidateOnboardingTokenResponse> {
        let caller = caller(&req)?;
        let id = account_name("account", &req.get_ref().account)?;
        let a = self.core.get_account(&caller, &id).await?;
        Err(not_yet("ValidateOnboardingToken", a.record.provider.as_str()))
    }

    async fn refresh_provider_token(
        &self,
        req: Request<pb::RefreshProviderTokenRequest>,
    ) -> Res<pb::ProviderTokenStatus> {
        let caller = caller(&req)?;
        let id = account_name("account", &req.get_ref().account)?;
        let a = self.core.get_account(&caller, &id).await?;
        Err(not_yet("RefreshProviderToken", a.record.provider.as_str()))
    }

    async fn get_provider_token_status(
        &self,
        req: Request<pb::GetProviderTokenStatusRequest>,
    ) -> Res<pb::ProviderTokenStatus> {
        let caller = caller(&req)?;
        let id = account_name("account", &req.get_ref().account)?;
        let a = self.core.get_account(&caller, &id).await?;
        Err(not_yet("GetProviderTokenStatus", a.record.provider.as_str()))
    }
}

#[tonic::async_trait]
impl pb::channel_service_server::ChannelService for Services {
    async fn get_channel(&self, req: Request<pb::GetChannelRequest>) -> Res<pb::Channel> {
        caller(&req)?;
        Err(not_yet("GetChannel", "whapi"))
    }

    async fn list_channels(&self, req: Request<pb::ListChannelsRequest>) -> Res<pb::ListChannelsResponse> {
        caller(&req)?;
        Err(not_yet("ListChannels", "whapi"))
    }

    async fn get_connect_code(&self, req: Request<pb::GetConnectCodeRequest>) -> Res<pb::ConnectCode> {
        caller(&req)?;
        Err(not_yet("GetConnectCode", "whapi"))
    }

    async fn set_channel_mode(&self, req: Request<pb::SetChannelModeRequest>) -> Res<pb::Channel> {
        caller(&req)?;
        Err(not_yet("SetChannelMode", "whapi"))
    }

    async fn extend_channel(&self, req: Request<pb::ExtendChannelRequest>) -> Res<pb::ExtendChannelResponse> {
        caller(&req)?;
        Err(not_yet("ExtendChannel", "whapi"))
    }

    async fn delete_channel(&self, req: Request<pb::DeleteChannelRequest>) -> Res<pb::DeleteChannelResponse> {
        caller(&req)?;
        Err(not_yet("DeleteChannel", "whapi"))
    }

    async fn get_partner_balance(&self, req: Request<pb::GetPartnerBalanceRequest>) -> Res<pb::PartnerBalance> {
        caller(&req)?;
        Err(not_yet("GetPartnerBalance", "whapi"))
    }
}
