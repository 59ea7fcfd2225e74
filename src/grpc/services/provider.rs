//! `provider` handlers.

use tonic::{Request, Response};

use super::{Res, Services, capability_to_pb};
use crate::domain::ProviderKind;
use crate::grpc::auth::caller;
use crate::grpc::convert::provider_to_pb;
use crate::grpc::limits;
use crate::grpc::pb;

#[tonic::async_trait]
impl pb::provider_service_server::ProviderService for Services {
    async fn list_providers(&self, req: Request<pb::ListProvidersRequest>) -> Res<pb::ListProvidersResponse> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let mut counts = std::collections::HashMap::new();
        let mut page = crate::domain::PageRequest { limit: 1000, after: None };
        loop {
            let p = self.core.list_accounts(&caller, None, &page).await?;
            for a in &p.items {
                *counts.entry(a.provider).or_insert(0) += 1;
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
                implemented: self.core.implemented(p),
                sandbox_available: self.core.sandbox_running(),
                account_count: counts.get(&p).copied().unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }
}
