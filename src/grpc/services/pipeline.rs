//! `pipeline` handlers.

use tonic::{Request, Response};

use super::{BoxStream, Res, Services, ok, stream};
use crate::core::onboardings::StreamItem;
use crate::grpc::auth::caller;
use crate::grpc::convert::{pipeline_to_pb, state_to_pb, ts};
use crate::grpc::limits;
use crate::grpc::pb;
use crate::grpc::requests::onboarding_name;

#[tonic::async_trait]
impl pb::pipeline_service_server::PipelineService for Services {
    async fn get_pipeline(&self, req: Request<pb::GetPipelineRequest>) -> Res<pb::Pipeline> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = onboarding_name(&caller.tenant, "name", &req.get_ref().name)?;
        ok(self.core.get_pipeline(&caller, &id).await.map(|(o, s)| pipeline_to_pb(&o, &s)))
    }

    type WatchPipelineStream = BoxStream<pb::WatchPipelineResponse>;

    async fn watch_pipeline(&self, req: Request<pb::WatchPipelineRequest>) -> Res<Self::WatchPipelineStream> {
        use pb::watch_pipeline_response::Message as M;
        let (name, after) = (&req.get_ref().name, req.get_ref().after_sequence);
        let items = self.watch_items(&req, name, after).await?;
        // Events that touch no step still advance the cursor; they are sent as heartbeats
        // carrying their sequence so a resume point is never lost.
        Ok(Response::new(stream(items, |item| pb::WatchPipelineResponse {
            message: Some(match item {
                StreamItem::Snapshot(o, steps) => M::Snapshot(pipeline_to_pb(&o, &steps)),
                StreamItem::Event(e, Some(step)) => M::Update(pb::PipelineStepUpdate {
                    sequence: e.sequence,
                    step: Some(pb::PipelineStep::from(step.as_ref())),
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
        limits::checked(req.get_ref())?;
        let id = onboarding_name(&caller.tenant, "name", &req.get_ref().name)?;
        self.core.retry_pipeline(&caller, &id).await?;
        ok(self.core.get_pipeline(&caller, &id).await.map(|(o, s)| pipeline_to_pb(&o, &s)))
    }
}
