//! `account` handlers.

use tonic::Request;

use super::{Res, Services, ok};
use crate::grpc::auth::caller;
use crate::grpc::convert::{account_to_pb, page_token};
use crate::grpc::convert_ext::check_to_pb;
use crate::grpc::limits;
use crate::grpc::pb;
use crate::grpc::requests::{CreateAccount, ListAccounts, account_name};

#[tonic::async_trait]
impl pb::account_service_server::AccountService for Services {
    async fn create_account(&self, req: Request<pb::CreateAccountRequest>) -> Res<pb::Account> {
        let caller = caller(&req)?;
        let r = CreateAccount::try_from((&caller, req.into_inner()))?;
        ok(self.core.create_account(&caller, r.account, r.request_id.as_deref()).await.map(|a| account_to_pb(&a)))
    }

    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> Res<pb::Account> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.get_account(&caller, &id).await.map(|a| account_to_pb(&a)))
    }

    async fn list_accounts(&self, req: Request<pb::ListAccountsRequest>) -> Res<pb::ListAccountsResponse> {
        let caller = caller(&req)?;
        let r = ListAccounts::try_from(req.get_ref())?;
        ok(self.core.list_accounts(&caller, r.provider, &r.page).await.map(|p| pb::ListAccountsResponse {
            accounts: p.items.iter().map(account_to_pb).collect(),
            next_page_token: page_token("accounts", p.next_page_token),
        }))
    }

    async fn delete_account(&self, req: Request<pb::DeleteAccountRequest>) -> Res<()> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.delete_account(&caller, &id, req.get_ref().force).await)
    }

    async fn check_account(&self, req: Request<pb::CheckAccountRequest>) -> Res<pb::CheckAccountResponse> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.check_account(&caller, &id).await.map(|c| check_to_pb(&c)))
    }
}
