//! `account` handlers.

#[allow(unused_imports)]
use super::*;

#[tonic::async_trait]
impl pb::account_service_server::AccountService for Services {
    async fn create_account(&self, req: Request<pb::CreateAccountRequest>) -> Res<pb::Account> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
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
        limits::checked(req.get_ref())?;
        let id = account_name("name", &req.get_ref().name)?;
        ok(self.core.get_account(&caller, &id).await.map(|a| account_to_pb(&a)))
    }

    async fn list_accounts(&self, req: Request<pb::ListAccountsRequest>) -> Res<pb::ListAccountsResponse> {
        let caller = caller(&req)?;
        let mut v = limits::collect(req.get_ref());
        let r = req.into_inner();
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
        limits::checked(req.get_ref())?;
        let id = account_name("name", &req.get_ref().name)?;
        ok(self.core.delete_account(&caller, &id, req.get_ref().force).await)
    }

    async fn check_account(&self, req: Request<pb::CheckAccountRequest>) -> Res<pb::CheckAccountResponse> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = account_name("name", &req.get_ref().name)?;
        ok(self.core.check_account(&caller, &id).await.map(|c| crate::grpc::convert_ext::check_to_pb(&c)))
    }
}
