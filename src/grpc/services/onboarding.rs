//! `onboarding` handlers.

#[allow(unused_imports)]
use super::*;

#[tonic::async_trait]
impl pb::onboarding_service_server::OnboardingService for Services {
    async fn create_onboarding(&self, req: Request<pb::CreateOnboardingRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let account = v.check("account", account_name(&caller.tenant, "account", &r.account).map_err(|e| e.message));
        let onboarding_id = if r.onboarding_id.is_empty() {
            None
        } else {
            v.check("onboarding_id", OnboardingId::scoped(&caller.tenant, &r.onboarding_id).map_err(|e| e.0))
        };
        let request_id = request_id(&mut v, &r.request_id);
        let payload = start_payload_from_pb(&mut v, r.request.as_ref());
        v.finish()?;
        let (Some(account), Some(payload)) = (account, payload) else {
            return Err(AppError::internal("validated fields missing").into());
        };
        let new = crate::core::lifecycle::NewOnboardingRequest {
            account,
            onboarding_id,
            reference: r.reference.clone(),
            request_id,
            payload,
        };
        ok(self.core.create_onboarding(&caller, new).await.map(|o| onboarding_to_pb(&o)))
    }

    async fn create_onboarding_links(
        &self,
        req: Request<pb::CreateOnboardingLinksRequest>,
    ) -> Res<pb::CreateOnboardingLinksResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("account", account_name(&caller.tenant, "account", &r.account).map_err(|e| e.message));
        if !(1..=50).contains(&r.count) {
            v.add("count", "must be between 1 and 50 (Exotel mints at most 50 links per call)");
        }
        let request_id = request_id(&mut v, &r.request_id);
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        let account = self.core.get_account(&caller, &id).await?;
        if account.record.provider != ProviderKind::Exotel {
            return Err(AppError::precondition(format!(
                "CreateOnboardingLinks needs an Exotel account; accounts/{} is {}",
                id.name(),
                account.record.provider
            ))
            .into());
        }
        ok(self.core.create_links(&caller, &id, r.count as u32, &r.reference, request_id.as_deref()).await.map(
            |(os, batch)| pb::CreateOnboardingLinksResponse {
                onboardings: os.iter().map(onboarding_to_pb).collect(),
                batch_id: batch,
            },
        ))
    }

    async fn get_onboarding(&self, req: Request<pb::GetOnboardingRequest>) -> Res<pb::Onboarding> {
        let caller = caller_ref(&req)?;
        limits::checked(req.get_ref())?;
        let id = onboarding_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.get_onboarding_shared(caller, &id).await.map(|o| self.onboardings_pb.onboarding(o)))
    }

    async fn list_onboardings(&self, req: Request<pb::ListOnboardingsRequest>) -> Res<pb::ListOnboardingsResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let page = page_request(&mut v, "onboardings", r.page_size, &r.page_token, DEFAULT_PAGE);
        let filter = OnboardingFilter {
            provider: provider_filter(&mut v, "provider", r.provider),
            state: state_filter(&mut v, "state", r.state),
            reference: (!r.reference.is_empty()).then_some(r.reference),
            account_id: if r.account.is_empty() {
                None
            } else {
                v.check("account", account_name(&caller.tenant, "account", &r.account).map_err(|e| e.message))
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
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("name", onboarding_name(&caller.tenant, "name", &r.name).map_err(|e| e.message));
        let rid = request_id(&mut v, &r.request_id);
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.cancel_onboarding(&caller, &id, rid.as_deref()).await.map(|(o, days)| {
            pb::CancelOnboardingResponse { onboarding: Some(onboarding_to_pb(&o)), refunded_days: days as i32 }
        }))
    }

    async fn submit_verification_code(&self, req: Request<pb::SubmitVerificationCodeRequest>) -> Res<pb::Onboarding> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("name", onboarding_name(&caller.tenant, "name", &r.name).map_err(|e| e.message));
        if r.code.trim().is_empty() {
            v.add("code", "is required");
        }
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self.core.submit_verification_code(&caller, &id, r.code.trim()).await.map(|o| onboarding_to_pb(&o)))
    }

    type WatchOnboardingStream = BoxStream<pb::WatchOnboardingResponse>;

    async fn watch_onboarding(&self, req: Request<pb::WatchOnboardingRequest>) -> Res<Self::WatchOnboardingStream> {
        use pb::watch_onboarding_response::Message as M;
        let (name, after) = (&req.get_ref().name, req.get_ref().after_sequence);
        let items = self.watch_items(&req, name, after).await?;
        let events = self.events_pb.clone();
        Ok(Response::new(stream(items, move |item| pb::WatchOnboardingResponse {
            message: Some(match item {
                StreamItem::Snapshot(o, _) => M::Snapshot(onboarding_to_pb(&o)),
                StreamItem::Event(e, _) => M::Event(events.event(&e)),
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
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let id = v.check("name", onboarding_name(&caller.tenant, "name", &r.name).map_err(|e| e.message));
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
