//! `channel` handlers (Whapi).

use tonic::Request;

use super::{Res, Services, ok};
use crate::grpc::auth::caller;
use crate::grpc::convert::page_token;
use crate::grpc::convert_ext::{balance_to_pb, channel_name, channel_to_pb, connect_code_to_pb};
use crate::grpc::limits;
use crate::grpc::pb;
use crate::grpc::requests::{DeleteChannel, ExtendChannel, GetConnectCode, ListChannels, SetChannelMode, account_name};

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
        let r = ListChannels::try_from((&caller, req.get_ref()))?;
        ok(self.core.list_channels(&caller, r.account.as_ref(), &r.page).await.map(|p| pb::ListChannelsResponse {
            channels: p.items.iter().map(channel_to_pb).collect(),
            next_page_token: page_token("channels", p.next_page_token),
        }))
    }

    async fn get_connect_code(&self, req: Request<pb::GetConnectCodeRequest>) -> Res<pb::ConnectCode> {
        let caller = caller(&req)?;
        let r = GetConnectCode::try_from(req.into_inner())?;
        ok(self.core.get_connect_code(&caller, &r.id, &r.method).await.map(|c| connect_code_to_pb(&c)))
    }

    async fn set_channel_mode(&self, req: Request<pb::SetChannelModeRequest>) -> Res<pb::Channel> {
        let caller = caller(&req)?;
        let r = SetChannelMode::try_from(req.get_ref())?;
        ok(self.core.set_channel_mode(&caller, &r.id, r.mode).await.map(|c| channel_to_pb(&c)))
    }

    async fn extend_channel(&self, req: Request<pb::ExtendChannelRequest>) -> Res<pb::ExtendChannelResponse> {
        let caller = caller(&req)?;
        let r = ExtendChannel::try_from(req.into_inner())?;
        ok(self.core.extend_channel(&caller, &r.id, r.days, &r.comment, &r.request_id).await.map(|x| {
            pb::ExtendChannelResponse {
                channel: Some(channel_to_pb(&x.channel)),
                days_added: i32::try_from(x.days_added).unwrap_or(i32::MAX),
                already_applied: x.already_applied,
            }
        }))
    }

    async fn delete_channel(&self, req: Request<pb::DeleteChannelRequest>) -> Res<pb::DeleteChannelResponse> {
        let caller = caller(&req)?;
        let r = DeleteChannel::try_from(req.get_ref())?;
        ok(self
            .core
            .delete_channel(&caller, &r.id, r.request_id.as_deref())
            .await
            .map(|d| pb::DeleteChannelResponse { refunded_days: i32::try_from(d).unwrap_or(i32::MAX) }))
    }

    async fn get_partner_balance(&self, req: Request<pb::GetPartnerBalanceRequest>) -> Res<pb::PartnerBalance> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name(&caller.tenant, "account", &req.get_ref().account)?;
        ok(self.core.get_partner_balance(&caller, &id).await.map(|b| balance_to_pb(&id, &b, crate::domain::now_ms())))
    }
}
