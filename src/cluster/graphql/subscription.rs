//! Cluster subscriptions: node health and the cluster summary.

use super::*;

/// A node health event.
#[derive(SimpleObject)]
pub struct NodeHealthEvent {
    /// Heartbeat or status change.
    pub kind: NodeEventKind,
    /// The status before (status changes of known nodes).
    pub previous_status: Option<NodeStatus>,
    /// The node now.
    pub node: ClusterNode,
}

/// Cluster subscriptions.
#[derive(Default)]
pub struct ClusterSubscription;

#[Subscription]
impl ClusterSubscription {
    /// Node heartbeats (at most one per node per heartbeat interval) and status changes,
    /// for one node or all (platform admins).
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn node_health(
        &self,
        ctx: &Context<'_>,
        node_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = NodeHealthEvent> + use<>> {
        require_platform(principal(ctx)?)?;
        let only = node_id
            .as_ref()
            .map(|id| decode_expecting(id, RelayKind::ClusterNode, "node").map(|u| u.to_string()))
            .transpose()?;
        let a: Arc<App> = app(ctx)?.clone();
        let mut rx = a.bus.subscribe_cluster();
        let stop = a.shutdown.clone();
        Ok(async_stream::stream! {
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => {
                        if let ClusterEvent::Node { node, kind, previous } = ev.as_ref() {
                            let node: &NodeRow = node;
                            if only.as_ref().is_some_and(|o| o != &node.id) {
                                continue;
                            }
                            yield NodeHealthEvent {
                                kind: (*kind).into(),
                                previous_status: previous.map(Into::into),
                                node: ClusterNode::new(node.clone(), &a),
                            };
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    /// The cluster summary: first the current one, then each time it changes.
    #[graphql(guard = "Require(Permission::ClusterRead)")]
    async fn cluster_summary(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = ClusterSummary> + use<>> {
        let scope = scope_of(principal(ctx)?);
        let a: Arc<App> = app(ctx)?.clone();
        let mut rx = a.bus.subscribe_cluster();
        let stop = a.shutdown.clone();
        let first = summary(&a, scope).await?;
        Ok(async_stream::stream! {
            let mut last = first.clone();
            yield first;
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) if matches!(ev.as_ref(), ClusterEvent::Tick) => {
                        match summary(&a, scope).await {
                            Ok(s) if s != last => {
                                last = s.clone();
                                yield s;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = ?e, "cluster summary failed"),
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }
}
