//! `channel` handlers (Whapi).

#[allow(unused_imports)]
use super::*;
use crate::core::capabilities::MAX_EXTEND_DAYS;
use crate::grpc::convert_ext::*;

#[tonic::async_trait]
impl pb::channel_service_server::ChannelService for Services {
    async fn get_channel(&self, req: Request<pb::GetChannelRequest>) -> Res<pb::Channel> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = channel_name("name", &req.get_ref().name)?;
        ok(self.core.get_channel(&caller, &id).await.map(|c| channel_to_pb(&c)))
    }

    async fn list_channels(&self, req: Request<pb::ListChannelsRequest>) -> Res<pb::ListChannelsResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let page = page_request(&mut v, "channels", r.page_size, &r.page_token, DEFAULT_PAGE);
        let account = if r.account.is_empty() {
            None
        } else {
            v.check("account", account_name("account", &r.account).map_err(|e| e.message))
        };
        v.finish()?;
        ok(self.core.list_channels(&caller, account.as_ref(), &page).await.map(|p| pb::ListChannelsResponse {
            channels: p.items.iter().map(channel_to_pb).collect(),
            next_page_token: page_token("channels", p.next_page_token),
        }))
    }

    async fn get_connect_code(&self, req: Request<pb::GetConnectCodeRequest>) -> Res<pb::ConnectCode> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
        let id = v.check("name", channel_name("name", &r.name).map_err(|e| e.message));
        let method = connect_method_from_pb(&mut v, r.method);
        v.finish()?;
        let (Some(id), Some(method)) = (id, method) else {
            return Err(AppError::internal("validated fields missing").into());
        };
        ok(self.core.get_connect_code(&caller, &id, &method).await.map(|c| connect_code_to_pb(&c)))
    }

    async fn set_channel_mode(&self, req: Request<pb::SetChannelModeRequest>) -> Res<pb::Channel> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("name", channel_name("name", &r.name).map_err(|e| e.message));
        let mode = channel_mode_from_pb(&mut v, "mode", r.mode);
        v.finish()?;
        let (Some(id), Some(mode)) = (id, mode) else {
            return Err(AppError::internal("validated fields missing").into());
        };
        ok(self.core.set_channel_mode(&caller, &id, mode).await.map(|c| channel_to_pb(&c)))
    }

    async fn extend_channel(&self, req: Request<pb::ExtendChannelRequest>) -> Res<pb::ExtendChannelResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("name", channel_name("name", &r.name).map_err(|e| e.message));
        let days = match u32::try_from(r.days) {
            Ok(d) if (1..=MAX_EXTEND_DAYS).contains(&d) => d,
            _ => {
                v.add("days", format!("must be between 1 and {MAX_EXTEND_DAYS}"));
                0
            }
        };
        let rid = if r.request_id.is_empty() {
            v.add("request_id", "is required: a retry with the same key never extends twice");
            None
        } else {
            request_id(&mut v, &r.request_id)
        };
        v.finish()?;
        let (Some(id), Some(rid)) = (id, rid) else {
            return Err(AppError::internal("validated fields missing").into());
        };
        ok(self.core.extend_channel(&caller, &id, days, &r.comment, &rid).await.map(|x| pb::ExtendChannelResponse {
            channel: Some(channel_to_pb(&x.channel)),
            days_added: i32::try_from(x.days_added).unwrap_or(i32::MAX),
            already_applied: x.already_applied,
        }))
    }

    async fn delete_channel(&self, req: Request<pb::DeleteChannelRequest>) -> Res<pb::DeleteChannelResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.get_ref();
        let id = v.check("name", channel_name("name", &r.name).map_err(|e| e.message));
        let rid = request_id(&mut v, &r.request_id);
        v.finish()?;
        let Some(id) = id else { return Err(AppError::internal("validated fields missing").into()) };
        ok(self
            .core
            .delete_channel(&caller, &id, rid.as_deref())
            .await
            .map(|d| pb::DeleteChannelResponse { refunded_days: i32::try_from(d).unwrap_or(i32::MAX) }))
    }

    async fn get_partner_balance(&self, req: Request<pb::GetPartnerBalanceRequest>) -> Res<pb::PartnerBalance> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name("account", &req.get_ref().account)?;
        ok(self.core.get_partner_balance(&caller, &id).await.map(|b| balance_to_pb(&id, &b, crate::domain::now_ms())))
    }
}
