//! The workload gRPC service: thin translation between protobuf and the broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::SecretValue;
use tonic::{Request, Response, Status};

use super::listener::PeerAttestation;
use super::status::to_status;
use crate::broker::{BeginRequest, Broker, BrokerError, ErrorKind, RenewRequest};
use crate::policy::GrantAsk;
use crate::proto::{self, v1};
use crate::workload::PeerInfo;

pub(super) struct BrokerService {
    pub(super) broker: Arc<Broker>,
}

/// The attested peer of the request's connection.
pub(super) fn peer_of<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
    match req
        .extensions()
        .get::<PeerAttestation>()
        .map(|a| a.as_ref())
    {
        Some(Ok(p)) => Ok(p.clone()),
        Some(Err(why)) => Err(to_status(&BrokerError::new(
            ErrorKind::PermissionDenied,
            "peer_unverified",
            format!("the calling process could not be identified: {why}"),
        ))),
        None => Err(to_status(&BrokerError::new(
            ErrorKind::PermissionDenied,
            "peer_unverified",
            "no peer credentials",
        ))),
    }
}

/// A call's own task panicked (a bug): said plainly, with nothing from the panic.
fn unexpected(call: &str) -> Status {
    to_status(&BrokerError::new(
        ErrorKind::Internal,
        "internal",
        format!("the {call} failed unexpectedly"),
    ))
}

fn ttl(seconds: Option<u32>) -> Option<Duration> {
    seconds.map(|s| Duration::from_secs(u64::from(s)))
}

#[tonic::async_trait]
impl v1::broker_server::Broker for BrokerService {
    async fn begin_task(
        &self,
        request: Request<v1::BeginTaskRequest>,
    ) -> Result<Response<v1::BeginTaskResponse>, Status> {
        let peer = peer_of(&request)?;
        let mut req = request.into_inner();
        // Moved, not copied, into a zeroizing secret.
        let token = SecretValue::new(std::mem::take(&mut req.token));
        let grants = req
            .grants
            .into_iter()
            .map(|g| GrantAsk {
                name: g.name,
                narrow: g
                    .narrow
                    .into_iter()
                    .map(|(k, v)| (k, v.values))
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect();
        let begin = BeginRequest {
            token,
            tool: req.tool,
            grants,
            ttl: ttl(req.ttl_seconds),
            idempotency_key: req.idempotency_key,
            call_id: req.call_id,
        };
        // On a task of its own: tonic drops a handler's future when its client goes away, and a
        // BeginTask stopped between its intent and its answering commit would leave a credential
        // known only to the intent log, and free its idempotency key for a retry to issue again.
        // Run to the end, it records (and settles) what it issued whoever is still listening.
        let broker = Arc::clone(&self.broker);
        let begun = tokio::spawn(async move { broker.begin(&peer, begin).await })
            .await
            .map_err(|_| unexpected("BeginTask"))?
            .map_err(|e| to_status(&e))?;
        let credentials = begun
            .credentials
            .into_iter()
            .map(|c| v1::Credential {
                lease_id: c.lease_id,
                grant: c.grant,
                provider: c.provider,
                kind: c.kind,
                expires_at: Some(proto::timestamp(c.expires_at)),
                public: c.credential.public.into_iter().collect(),
                // The one place credential secrets are exposed: into the response to the workload.
                secret: c
                    .credential
                    .secret
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                    .collect(),
            })
            .collect();
        Ok(Response::new(v1::BeginTaskResponse {
            task: Some(proto::task(&begun.task)),
            credentials,
        }))
    }

    async fn renew_task(
        &self,
        request: Request<v1::RenewTaskRequest>,
    ) -> Result<Response<v1::RenewTaskResponse>, Status> {
        let peer = peer_of(&request)?;
        let mut req = request.into_inner();
        let token = SecretValue::new(std::mem::take(&mut req.token));
        let task = self
            .broker
            .renew(
                &peer,
                RenewRequest {
                    task_id: req.task_id,
                    token,
                    ttl: ttl(req.ttl_seconds),
                },
            )
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::RenewTaskResponse {
            task: Some(proto::task(&task)),
        }))
    }

    async fn end_task(
        &self,
        request: Request<v1::EndTaskRequest>,
    ) -> Result<Response<v1::EndTaskResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        crate::broker::check_task_id(&req.task_id).map_err(|e| to_status(&e))?;
        // On a task of its own, as BeginTask: a client that goes away mid-revocation does not
        // leave its task half ended (`ending` in memory only) until its expiry.
        let broker = Arc::clone(&self.broker);
        let task = tokio::spawn(async move { broker.end_by_workload(&peer, &req.task_id).await })
            .await
            .map_err(|_| unexpected("EndTask"))?
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::EndTaskResponse {
            task: Some(proto::task(&task)),
        }))
    }
}
