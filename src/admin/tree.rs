//! Queries over the live actor tree, shared by the admin HTTP listener and
//! the gRPC AdminService: the whole tree, or the nodes of one namespace
//! and/or kind as a flat page.

use crate::actors::ActorNode;

/// Most nodes one page holds.
pub const MAX_PAGE: usize = 5000;

#[derive(Debug, Default, Clone)]
pub struct TreeQuery {
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub offset: usize,
    pub limit: Option<usize>,
}

impl TreeQuery {
    /// Whether the answer is a flat page rather than the tree.
    pub fn is_page(&self) -> bool {
        self.namespace.is_some() || self.kind.is_some() || self.limit.is_some() || self.offset > 0
    }
}

pub struct Page {
    pub total: usize,
    /// Matching nodes in tree order (depth first), without their children.
    pub nodes: Vec<ActorNode>,
}

/// The namespace a node belongs to: its namespace supervisor's, or a
/// relay's own; backend pools and the root belong to none.
fn own_namespace(node: &ActorNode) -> Option<String> {
    if let Some(ns) = node.id.strip_prefix("namespace/") {
        return Some(ns.to_string());
    }
    node.state
        .get("namespace")
        .and_then(|v| v.as_str())
        .filter(|_| node.id.starts_with("relay/"))
        .map(str::to_string)
}

/// Every node of the tree with its namespace, depth first, children taken
/// off.
pub fn flatten(root: ActorNode) -> Vec<(Option<String>, ActorNode)> {
    let mut out = Vec::new();
    flatten_into(root, None, &mut out);
    out
}

fn flatten_into(
    node: ActorNode,
    inherited: Option<String>,
    out: &mut Vec<(Option<String>, ActorNode)>,
) {
    let ns = own_namespace(&node).or(inherited);
    let mut node = node;
    let children = std::mem::take(&mut node.children);
    out.push((ns.clone(), node));
    for child in children {
        flatten_into(child, ns.clone(), out);
    }
}

/// The nodes `q` selects, paged.
pub fn page(tree: ActorNode, q: &TreeQuery) -> Page {
    let matching: Vec<ActorNode> = flatten(tree)
        .into_iter()
        .filter(|(ns, node)| {
            q.namespace
                .as_ref()
                .is_none_or(|want| ns.as_ref() == Some(want))
                && q.kind
                    .as_ref()
                    .is_none_or(|want| node.kind.name() == want.as_str())
        })
        .map(|(_, node)| node)
        .collect();
    let total = matching.len();
    let limit = q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    Page {
        total,
        nodes: matching.into_iter().skip(q.offset).take(limit).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::{ActorKind, ActorStatus};

    fn node(kind: ActorKind, id: &str, children: Vec<ActorNode>) -> ActorNode {
        ActorNode {
            kind,
            id: id.into(),
            parent: None,
            status: ActorStatus::Running,
            created: std::time::SystemTime::UNIX_EPOCH,
            last_progress: std::time::SystemTime::UNIX_EPOCH,
            messages_handled: 0,
            mailbox_depth: 0,
            restarts: 0,
            supervision: Default::default(),
            state: serde_json::json!({}),
            children,
        }
    }

    fn tree() -> ActorNode {
        node(
            ActorKind::Root,
            "root",
            vec![
                node(
                    ActorKind::NamespaceSupervisor,
                    "namespace/a",
                    vec![
                        node(
                            ActorKind::Session,
                            "s1",
                            vec![node(ActorKind::Transaction, "t1", vec![])],
                        ),
                        node(ActorKind::Session, "s2", vec![]),
                    ],
                ),
                node(
                    ActorKind::NamespaceSupervisor,
                    "namespace/b",
                    vec![node(ActorKind::Session, "s3", vec![])],
                ),
                node(ActorKind::BackendPool, "backend/pg", vec![]),
            ],
        )
    }

    #[test]
    fn filters_by_namespace_and_kind_and_pages() {
        let q = |ns: Option<&str>, kind: Option<&str>, offset, limit| TreeQuery {
            namespace: ns.map(str::to_string),
            kind: kind.map(str::to_string),
            offset,
            limit,
        };
        let ids = |p: Page| p.nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(
            ids(page(tree(), &q(Some("a"), None, 0, None))),
            vec!["namespace/a", "s1", "t1", "s2"]
        );
        assert_eq!(
            ids(page(tree(), &q(None, Some("session"), 0, None))),
            vec!["s1", "s2", "s3"]
        );
        let p = page(tree(), &q(None, Some("session"), 1, Some(1)));
        assert_eq!(p.total, 3);
        assert_eq!(ids(p), vec!["s2"]);
        assert!(page(tree(), &q(Some("a"), None, 0, None))
            .nodes
            .iter()
            .all(|n| n.children.is_empty()));
        assert_eq!(page(tree(), &q(Some("zz"), None, 0, None)).total, 0);
    }
}
