//! The gateway's Calls service: protobuf ↔ `broker::calls`, nothing else.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::broker_svc::peer_of;
use super::status::to_status;
use crate::broker::{Broker, CallReport, CallResult, Caller};
use crate::proto::v1;

pub(super) struct CallsService {
    pub(super) broker: Arc<Broker>,
}

#[tonic::async_trait]
impl v1::calls_server::Calls for CallsService {
    async fn record_call(
        &self,
        request: Request<v1::RecordCallRequest>,
    ) -> Result<Response<v1::RecordCallResponse>, Status> {
        let peer = peer_of(&request)?;
        let r = request.into_inner();
        let report = CallReport {
            call_id: r.call_id,
            gateway: r.gateway,
            resource: r.resource,
            method: r.method,
            name: r.name,
            arguments_sha256: r.arguments_sha256,
            arguments: r.arguments.into_iter().collect(),
            caller: r.caller.map(|c| Caller {
                issuer: c.issuer,
                subject: c.subject,
                client_id: c.client_id,
                actors: c.actors,
                owner: (!c.owner.is_empty()).then_some(c.owner),
                owner_source: c.owner_source,
                token_fingerprint: c.token_fingerprint,
                jti: c.jti,
            }),
            source: r.source,
            client_name: r.client_name,
            client_version: r.client_version,
            protocol_version: r.protocol_version,
            refused: r.refused,
            http_status: r.http_status,
        };
        self.broker
            .record_call(&peer, report)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::RecordCallResponse {}))
    }

    async fn finish_calls(
        &self,
        request: Request<v1::FinishCallsRequest>,
    ) -> Result<Response<v1::FinishCallsResponse>, Status> {
        let peer = peer_of(&request)?;
        let results = request
            .into_inner()
            .results
            .into_iter()
            .map(|r| CallResult {
                call_id: r.call_id,
                gateway: r.gateway,
                http_status: r.http_status,
                jsonrpc_error: r.jsonrpc_error,
                duration_ms: r.duration_ms,
                error: r.error,
            })
            .collect();
        self.broker
            .finish_calls(&peer, results)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::FinishCallsResponse {}))
    }
}
