//! How the relay tree is chosen: where a node pulls a stream from.
//!
//! By default every edge pulls from the stream's origin (one level). A node
//! with `cluster.upstream` pulls from that node instead, which pulls from
//! the origin: a two-level tree (origin → upstream → this node), chosen by
//! configuration, e.g. one upstream per region or rack so that the origin's
//! NIC carries one pull per upstream rather than one per edge. The rules
//! keep the tree at most two levels deep and free of loops:
//! - a node pulls from its upstream only while that node is alive, and from
//!   the origin otherwise (or when the upstream is the origin);
//! - a node with an upstream serves no other node's pull of a stream it does
//!   not publish itself ([`serves_relays`]), and a node answering another
//!   node's pull fetches the stream from the origin itself (its own upstream
//!   being unset, as the first rule's refusal guarantees).

use super::View;
use super::relay::OriginTarget;

/// Where `me` pulls `stream` from: its upstream if configured and alive,
/// else the stream's origin; nothing if the origin is `me`, or unknown or dead.
pub fn source_of(
    view: &View,
    stream: &str,
    me: &str,
    upstream: Option<&str>,
) -> Option<OriginTarget> {
    let origin = view.origin_of(stream, me)?;
    let Some(up) = upstream.filter(|u| *u != me && *u != origin.node_id) else {
        return Some(origin);
    };
    match view
        .nodes
        .iter()
        .find(|n| n.node_id == up && view.is_alive(n))
    {
        Some(node) => Some(OriginTarget {
            node_id: node.node_id.clone(),
            internal_url: node.internal_url.clone(),
            // The origin's session: a new publisher means a new pull.
            session: origin.session,
        }),
        None => Some(origin),
    }
}

/// Whether this node may answer another node's pull of a stream: always
/// without an upstream; with one, only for a stream it publishes itself
/// (else a chain could loop or grow past two levels).
pub fn serves_relays(upstream: Option<&str>, publishes_it: bool) -> bool {
    upstream.is_none() || publishes_it
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cluster::{NodeRow, OriginRow};

    fn node(id: &str, hb: i64) -> NodeRow {
        NodeRow::for_test(id, hb)
    }

    fn view(nodes: Vec<NodeRow>) -> View {
        View {
            nodes,
            origins: vec![OriginRow {
                stream: "t1".into(),
                node_id: "a".into(),
                session: "a:1".into(),
                since_ms: 0,
            }],
            read_ms: 10_000,
        }
    }

    #[test]
    fn an_edge_pulls_from_its_live_upstream_else_from_the_origin() {
        let v = view(vec![
            node("a", 10_000),
            node("b", 10_000),
            node("c", 10_000),
        ]);
        // No upstream: the origin.
        let s = source_of(&v, "t1", "c", None).unwrap();
        assert_eq!((s.node_id.as_str(), s.session.as_str()), ("a", "a:1"));
        // Upstream b: b, with the origin's session.
        let s = source_of(&v, "t1", "c", Some("b")).unwrap();
        assert_eq!(s.node_id, "b");
        assert_eq!(s.internal_url, "http://b");
        assert_eq!(s.session, "a:1");
        // The upstream is the origin, or this node: the origin.
        assert_eq!(source_of(&v, "t1", "c", Some("a")).unwrap().node_id, "a");
        assert_eq!(source_of(&v, "t1", "c", Some("c")).unwrap().node_id, "a");
        // A dead or unknown upstream: the origin.
        let v2 = view(vec![node("a", 10_000), node("b", 1_000), node("c", 10_000)]);
        assert_eq!(source_of(&v2, "t1", "c", Some("b")).unwrap().node_id, "a");
        assert_eq!(source_of(&v, "t1", "c", Some("zz")).unwrap().node_id, "a");
        // No live origin: nothing, whatever the upstream.
        let v3 = view(vec![node("a", 1_000), node("b", 10_000), node("c", 10_000)]);
        assert!(source_of(&v3, "t1", "c", Some("b")).is_none());
        // The origin never pulls its own stream.
        assert!(source_of(&v, "t1", "a", Some("b")).is_none());
    }

    #[test]
    fn only_nodes_without_an_upstream_serve_pulls_of_streams_they_relay() {
        assert!(serves_relays(None, false));
        assert!(serves_relays(Some("b"), true));
        assert!(!serves_relays(Some("b"), false));
    }
}
