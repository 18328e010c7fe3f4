//! `prism.admin.v1.AdminService`: the live actor tree over gRPC, the same
//! answers as `/admin/actors`. Served only on the admin listener (HTTP/2
//! beside its HTTP/1 endpoints), never on the public gRPC port. Calls carry
//! the admin token as `authorization: Bearer <token>` (or
//! `x-admin-token`) metadata, checked by the listener like any request.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    actors::ActorNode,
    admin::tree,
    backends::sql_reader::json_to_value,
    proto::admin::v1::{self as pb, admin_service_server::AdminService},
};

/// The service; the admin listener's token check runs before it (see
/// [`super::router`]).
pub struct AdminApi {
    admin: Arc<super::AdminState>,
}

impl AdminApi {
    pub fn new(admin: Arc<super::AdminState>) -> Self {
        AdminApi { admin }
    }

    async fn tree(&self) -> Result<ActorNode, Status> {
        self.admin
            .tree()
            .await
            .map_err(|e| Status::unavailable(e.message))
    }
}

fn node(n: ActorNode) -> pb::ActorNode {
    let state = match json_to_value(n.state).kind {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    pb::ActorNode {
        kind: n.kind.name().to_string(),
        id: n.id,
        parent: n.parent.unwrap_or_default(),
        status: format!("{:?}", n.status).to_lowercase(),
        created: Some(n.created.into()),
        last_progress: Some(n.last_progress.into()),
        messages_handled: n.messages_handled,
        mailbox_depth: n.mailbox_depth,
        restarts: n.restarts,
        state,
        children: n.children.into_iter().map(node).collect(),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_actor_tree(
        &self,
        request: Request<pb::GetActorTreeRequest>,
    ) -> Result<Response<pb::GetActorTreeResponse>, Status> {
        let r = request.into_inner();
        if r.offset < 0 || r.limit < 0 {
            return Err(Status::invalid_argument(
                "offset and limit must not be negative",
            ));
        }
        let q = tree::TreeQuery {
            namespace: Some(r.namespace).filter(|s| !s.is_empty()),
            kind: Some(r.kind).filter(|s| !s.is_empty()),
            offset: r.offset as usize,
            limit: (r.limit > 0).then_some(r.limit as usize),
        };
        let tree = self.tree().await?;
        if !q.is_page() {
            return Ok(Response::new(pb::GetActorTreeResponse {
                total: tree.walk().len() as i32,
                root: Some(node(tree)),
                nodes: Vec::new(),
            }));
        }
        let page = tree::page(tree, &q);
        Ok(Response::new(pb::GetActorTreeResponse {
            root: None,
            total: page.total as i32,
            nodes: page.nodes.into_iter().map(node).collect(),
        }))
    }

    async fn get_actor(
        &self,
        request: Request<pb::GetActorRequest>,
    ) -> Result<Response<pb::ActorNode>, Status> {
        let id = request.into_inner().id;
        let tree = self.tree().await?;
        match tree.find(&id) {
            Some(n) => Ok(Response::new(node(n.clone()))),
            None => Err(Status::not_found(format!("no actor `{id}`"))),
        }
    }
}
