//! The operator gRPC service. The admin socket is mode 0600, and the peer's uid must also be in
//! `server.admin_uids` (the daemon's own uid is always allowed).

use std::sync::Arc;

use futures_util::StreamExt;
use tonic::{Request, Response, Status};

use super::broker_svc::peer_of;
use super::status::to_status;
use crate::broker::{Broker, BrokerError, Ender, ErrorKind};
use crate::config::clients::{ClientEntry, ClientStatus};
use crate::journal::blocks::BlockKind;
use crate::journal::read::{self, TaskFilter};
use crate::proto::{self, v1};
use crate::time::rfc3339;
use crate::workload::PeerInfo;

/// Tasks ended at once by a selector revoke.
const REVOKE_CONCURRENCY: usize = 256;

pub(super) struct AdminService {
    pub(super) broker: Arc<Broker>,
}

impl AdminService {
    fn operator<T>(&self, req: &Request<T>) -> Result<PeerInfo, Status> {
        let peer = peer_of(req)?;
        if self
            .broker
            .runtime()
            .config
            .server
            .admin_uids
            .contains(&peer.uid)
        {
            Ok(peer)
        } else {
            Err(to_status(&BrokerError::new(
                ErrorKind::PermissionDenied,
                "admin_not_allowed",
                format!("uid {} may not use the admin API", peer.uid),
            )))
        }
    }
}

fn client_status(s: &str) -> Result<ClientStatus, Status> {
    match s {
        "" => Ok(ClientStatus::Active),
        s => ClientStatus::parse(s).ok_or_else(|| {
            to_status(&BrokerError::invalid(
                "invalid_client",
                "status must be active, suspended or retired",
            ))
        }),
    }
}

impl AdminService {
    /// The issuer a request names, or the only one configured.
    fn issuer_of(&self, named: String) -> Result<String, Status> {
        let rt = self.broker.runtime();
        let urls: Vec<&str> = rt.config.issuers.iter().map(|i| i.url.as_str()).collect();
        match (named.is_empty(), urls.as_slice()) {
            (true, [only]) => Ok((*only).to_owned()),
            (true, _) => Err(to_status(&BrokerError::invalid(
                "invalid_client",
                "name the client's issuer: the daemon has more than one",
            ))),
            (false, _) if urls.contains(&named.as_str()) => Ok(named),
            (false, _) => Err(to_status(&BrokerError::invalid(
                "invalid_client",
                format!("no [[issuer]] with url {named:?}"),
            ))),
        }
    }

    async fn save_client(
        &self,
        entry: ClientEntry,
        peer: &PeerInfo,
    ) -> Result<Response<v1::SetClientResponse>, Status> {
        let (row, ended) = self
            .broker
            .set_client(entry, format!("operator:{}", peer.uid))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::SetClientResponse {
            client: Some(proto::client(&row.entry, "operator")),
            task_ids: ended.iter().map(|t| t.to_string()).collect(),
        }))
    }
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn filter(sel: Option<v1::Selector>) -> TaskFilter {
    let s = sel.unwrap_or_default();
    TaskFilter {
        jti: nonempty(s.jti),
        subject: nonempty(s.subject),
        client_id: nonempty(s.client_id),
        owner: nonempty(s.owner),
        grant: nonempty(s.grant),
        provider: nonempty(s.provider),
        workload: nonempty(s.workload),
        ..Default::default()
    }
}

fn journal_status(e: &crate::journal::JournalError) -> Status {
    to_status(&BrokerError::journal(e))
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn list_tasks(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        self.operator(&request)?;
        let req = request.into_inner();
        let mut f = filter(req.filter);
        f.include_ended = req.include_ended;
        f.limit = match req.limit {
            0 => 100,
            n => (n as usize).min(1000),
        };
        f.after = nonempty(req.after);
        let views = self
            .broker
            .journal()
            .read(move |c| read::tasks(c, &f))
            .await
            .map_err(|e| journal_status(&e))?;
        Ok(Response::new(v1::ListTasksResponse {
            tasks: views.iter().map(proto::task).collect(),
        }))
    }

    async fn get_task(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::GetTaskResponse>, Status> {
        self.operator(&request)?;
        let id = request.into_inner().task_id;
        crate::broker::check_task_id(&id).map_err(|e| to_status(&e))?;
        let lookup = id.clone();
        let view = self
            .broker
            .journal()
            .read(move |c| read::task(c, &lookup))
            .await
            .map_err(|e| journal_status(&e))?;
        match view {
            Some(v) => Ok(Response::new(v1::GetTaskResponse {
                task: Some(proto::task(&v)),
            })),
            None => Err(to_status(&BrokerError::new(
                ErrorKind::NotFound,
                "task_not_found",
                format!("no task {id:?}"),
            ))),
        }
    }

    async fn revoke_task(
        &self,
        request: Request<v1::RevokeTaskRequest>,
    ) -> Result<Response<v1::RevokeTaskResponse>, Status> {
        let peer = self.operator(&request)?;
        let req = request.into_inner();
        crate::broker::check_task_id(&req.task_id).map_err(|e| to_status(&e))?;
        let task = self
            .broker
            .end_task(
                &req.task_id,
                Ender::Operator {
                    peer: peer.record(),
                    reason: req.reason,
                },
            )
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::RevokeTaskResponse {
            task: Some(proto::task(&task)),
        }))
    }

    async fn revoke(
        &self,
        request: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let peer = self.operator(&request)?;
        let req = request.into_inner();
        let mut f = filter(req.selector);
        if f.is_empty_selector() {
            return Err(to_status(&BrokerError::invalid(
                "empty_selector",
                "name at least one selector field",
            )));
        }
        f.limit = 100_000;
        let views = self
            .broker
            .journal()
            .read(move |c| read::tasks(c, &f))
            .await
            .map_err(|e| journal_status(&e))?;
        // Concurrently: an incident responder revoking a user's thousands of tasks should wait
        // for the slowest provider, not for their sum. Each provider's own limit still applies.
        let ended = futures_util::stream::iter(views.into_iter().map(|v| {
            let ender = Ender::Operator {
                peer: peer.record(),
                reason: req.reason.clone(),
            };
            let broker = &self.broker;
            async move {
                let id = v.task.id;
                match broker.end_task(&id, ender).await {
                    Ok(_) => Some(id.to_string()),
                    Err(e) => {
                        tracing::warn!(task = %id, error = %e, "operator revoke of a task failed");
                        None
                    }
                }
            }
        }))
        .buffer_unordered(REVOKE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut ids: Vec<String> = ended.into_iter().flatten().collect();
        ids.sort_unstable();
        Ok(Response::new(v1::RevokeResponse { task_ids: ids }))
    }

    async fn list_blocks(
        &self,
        request: Request<v1::ListBlocksRequest>,
    ) -> Result<Response<v1::ListBlocksResponse>, Status> {
        self.operator(&request)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let rows = self
            .broker
            .list_blocks(req.all, limit)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::ListBlocksResponse {
            blocks: rows.iter().map(proto::block).collect(),
        }))
    }

    async fn add_block(
        &self,
        request: Request<v1::AddBlockRequest>,
    ) -> Result<Response<v1::AddBlockResponse>, Status> {
        let peer = self.operator(&request)?;
        let req = request.into_inner();
        let Some(kind) = BlockKind::parse(&req.kind) else {
            return Err(to_status(&BrokerError::invalid(
                "invalid_block",
                "kind must be jti, client, owner or subject",
            )));
        };
        if req.seconds == 0 || req.seconds > 30 * 86_400 {
            return Err(to_status(&BrokerError::invalid(
                "invalid_block",
                "a block lasts between 1 second and 30 days",
            )));
        }
        let ask = crate::broker::BlockAsk {
            kind,
            issuer: nonempty(req.issuer),
            value: req.value,
            until: self.broker.now() + std::time::Duration::from_secs(req.seconds),
            reason: req.reason,
            source: format!("operator:{}", peer.uid),
        };
        let (row, tasks) = self
            .broker
            .add_block(ask)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::AddBlockResponse {
            block: Some(proto::block(&row)),
            task_ids: tasks.iter().map(|t| t.to_string()).collect(),
        }))
    }

    async fn lift_block(
        &self,
        request: Request<v1::LiftBlockRequest>,
    ) -> Result<Response<v1::LiftBlockResponse>, Status> {
        let peer = self.operator(&request)?;
        let req = request.into_inner();
        if req.id.len() > 64 || req.reason.len() > 1024 || req.reason.chars().any(char::is_control)
        {
            return Err(to_status(&BrokerError::invalid(
                "invalid_block",
                "the block id or reason is malformed",
            )));
        }
        let by = if req.reason.is_empty() {
            format!("operator:{}", peer.uid)
        } else {
            format!("operator:{} ({})", peer.uid, req.reason)
        };
        let row = self
            .broker
            .lift_block(&req.id, by)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::LiftBlockResponse {
            block: Some(proto::block(&row)),
        }))
    }

    async fn list_clients(
        &self,
        request: Request<v1::ListClientsRequest>,
    ) -> Result<Response<v1::ListClientsResponse>, Status> {
        self.operator(&request)?;
        Ok(Response::new(v1::ListClientsResponse {
            clients: self
                .broker
                .list_clients()
                .iter()
                .map(|c| proto::client(&c.entry, c.source))
                .collect(),
        }))
    }

    async fn set_client(
        &self,
        request: Request<v1::SetClientRequest>,
    ) -> Result<Response<v1::SetClientResponse>, Status> {
        let peer = self.operator(&request)?;
        let c = request.into_inner().client.unwrap_or_default();
        let status = client_status(&c.status)?;
        let expires = match c.expires.as_str() {
            "" => None,
            t => Some(humantime::parse_rfc3339_weak(t).map_err(|e| {
                to_status(&BrokerError::invalid(
                    "invalid_client",
                    format!("expires is not an RFC 3339 time: {e}"),
                ))
            })?),
        };
        let rt = self.broker.runtime();
        for g in &c.grants {
            if !rt.config.grants.contains_key(g) {
                return Err(to_status(&BrokerError::invalid(
                    "invalid_client",
                    format!("no grant named {g:?}"),
                )));
            }
        }
        let entry = ClientEntry {
            issuer: self.issuer_of(c.issuer)?,
            client_id: c.client_id,
            owner: nonempty(c.owner),
            expires,
            grants: c.grants,
            status,
        };
        self.save_client(entry, &peer).await
    }

    async fn set_client_status(
        &self,
        request: Request<v1::SetClientStatusRequest>,
    ) -> Result<Response<v1::SetClientResponse>, Status> {
        let peer = self.operator(&request)?;
        let req = request.into_inner();
        let status = client_status(&req.status)?;
        let issuer = self.issuer_of(req.issuer)?;
        // An unregistered client can be suspended or retired too (an incident does not wait
        // for its paperwork): it is registered with that status.
        let mut entry = self
            .broker
            .client(&issuer, &req.client_id)
            .unwrap_or(ClientEntry {
                issuer,
                client_id: req.client_id,
                owner: None,
                expires: None,
                grants: Vec::new(),
                status,
            });
        entry.status = status;
        self.save_client(entry, &peer).await
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.operator(&request)?;
        let counts = self.broker.counts();
        let rt = self.broker.runtime();
        let issuers = self
            .broker
            .issuer_statuses()
            .into_iter()
            .map(|s| v1::IssuerStatus {
                url: s.url,
                keys: s.keys as u32,
                last_refresh: s.last_refresh.map(rfc3339).unwrap_or_default(),
                last_error: s.last_error.unwrap_or_default(),
            })
            .collect();
        let mut providers = Vec::new();
        for (name, instance) in rt.providers.iter() {
            let h = instance.provider.health().await;
            let backlog = counts.by_provider.get(name).map_or(0, |c| c.1);
            let (healthy, detail) =
                super::status::provider_health(h, instance.observed.failing(), backlog);
            providers.push(v1::ProviderStatus {
                name: name.clone(),
                kind: instance.config.kind.clone(),
                healthy,
                detail,
            });
        }
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.broker.uptime().as_secs(),
            active_tasks: counts.active_tasks,
            active_leases: counts.active_leases,
            revocation_backlog: counts.revocation_backlog,
            issuers,
            providers,
            config_loaded_at: rfc3339(rt.loaded_at),
        }))
    }
}
