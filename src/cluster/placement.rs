//! Viewer placement (`cluster.redirect_viewers`): a WHEP POST to a node
//! with less headroom than another answers `307 Temporary Redirect` to that
//! node (RFC 9725 lets a WHEP server do so; the client POSTs the same offer
//! there). The decision is pure; the WHEP handler asks it.
//!
//! Headroom is read from the registry (each node writes its viewers and its
//! `[limits] max_viewers` with its heartbeat, once a second), this node's
//! own viewers live. A node redirects when it is full, or when another has
//! clearly more room: with caps on both, [`MARGIN`] of the cap more free
//! places; without, [`MARGIN`] of its own viewers fewer viewers (and at
//! least two), so counts a second old do not send viewers back and forth.
//! A redirected request is marked ([`REDIRECTED_PARAM`]) and never
//! redirected again.

/// The query parameter a redirect adds to its `Location`.
pub const REDIRECTED_PARAM: &str = "rc_redirected";
/// How much more room another node must have (a quarter).
const MARGIN: f64 = 0.25;

/// A node's load as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLoad {
    pub node_id: String,
    /// Where viewers reach it; None: it cannot take redirects.
    pub public_url: Option<String>,
    pub viewers: i64,
    /// Its `[limits] max_viewers` (0: none).
    pub max_viewers: i64,
}

impl NodeLoad {
    fn free(&self) -> Option<i64> {
        (self.max_viewers > 0).then(|| self.max_viewers - self.viewers)
    }

    fn full(&self) -> bool {
        self.free().is_some_and(|f| f <= 0)
    }
}

/// Where to send a viewer arriving at `me`, if anywhere (`others`: the
/// other nodes alive).
pub fn redirect_target<'a>(me: &NodeLoad, others: &'a [NodeLoad]) -> Option<&'a NodeLoad> {
    let candidates = others
        .iter()
        .filter(|n| n.public_url.is_some() && !n.full());
    // The roomiest: most free places where capped, fewest viewers otherwise.
    let best = candidates.min_by_key(|n| (-n.free().unwrap_or(i64::MAX / 2), n.viewers))?;
    if me.full() {
        return Some(best);
    }
    let clearly_roomier = match (me.free(), best.free()) {
        (Some(mine), Some(theirs)) => {
            let margin = ((me.max_viewers as f64 * MARGIN).ceil() as i64).max(2);
            theirs >= mine + margin
        }
        _ => {
            let margin = ((me.viewers as f64 * MARGIN).ceil() as i64).max(2);
            best.viewers + margin <= me.viewers
        }
    };
    clearly_roomier.then_some(best)
}

/// The `Location` of a redirect: the same path and query on `base`, marked.
pub fn redirect_location(base: &str, path: &str, query: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{base}{path}?{q}&{REDIRECTED_PARAM}=1"),
        None => format!("{base}{path}?{REDIRECTED_PARAM}=1"),
    }
}

/// Whether a request was redirected here already.
pub fn was_redirected(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some(REDIRECTED_PARAM))
    })
}

/// The origin (`scheme://host[:port]`) of a node's public URL, for a page's
/// `connect-src`; None unless it is plainly one (the URL comes from another
/// node's row: nothing that could end a CSP directive gets through).
pub fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split('/').next()?;
    let plain = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then(|| format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, viewers: i64, max: i64) -> NodeLoad {
        NodeLoad {
            node_id: id.into(),
            public_url: Some(format!("http://{id}")),
            viewers,
            max_viewers: max,
        }
    }

    #[test]
    fn a_full_node_sends_viewers_to_the_roomiest() {
        let me = node("a", 10, 10);
        let others = [node("b", 9, 10), node("c", 2, 10), node("d", 0, 0)];
        // An uncapped node is the roomiest of all.
        assert_eq!(redirect_target(&me, &others).unwrap().node_id, "d");
        assert_eq!(redirect_target(&me, &others[..2]).unwrap().node_id, "c");
        // Nobody has room: no redirect (the caps answer 503).
        assert!(redirect_target(&me, &[node("b", 10, 10)]).is_none());
        // A node without a public URL takes no redirects.
        let mut hidden = node("b", 0, 10);
        hidden.public_url = None;
        assert!(redirect_target(&me, &[hidden]).is_none());
    }

    #[test]
    fn a_node_with_room_redirects_only_to_a_clearly_roomier_one() {
        // Capped: a quarter of the cap more free places.
        assert!(redirect_target(&node("a", 5, 20), &[node("b", 1, 20)]).is_none());
        assert!(redirect_target(&node("a", 6, 20), &[node("b", 1, 20)]).is_some());
        // Uncapped: a quarter of my viewers fewer, and at least two.
        assert!(redirect_target(&node("a", 1, 0), &[node("b", 0, 0)]).is_none());
        assert!(redirect_target(&node("a", 2, 0), &[node("b", 0, 0)]).is_some());
        assert!(redirect_target(&node("a", 100, 0), &[node("b", 80, 0)]).is_none());
        assert!(redirect_target(&node("a", 100, 0), &[node("b", 75, 0)]).is_some());
    }

    #[test]
    fn only_plain_origins_go_into_a_policy() {
        assert_eq!(
            origin_of_url("https://node-6.example.org:8443/x").as_deref(),
            Some("https://node-6.example.org:8443")
        );
        assert_eq!(
            origin_of_url("http://[::1]:80").as_deref(),
            Some("http://[::1]:80")
        );
        assert_eq!(origin_of_url("http://a; script-src *"), None);
        assert_eq!(origin_of_url("javascript://x"), None);
        assert_eq!(origin_of_url("http://"), None);
        assert_eq!(origin_of_url("http://a b"), None);
    }

    #[test]
    fn a_redirect_keeps_the_query_and_is_marked_once() {
        let l = redirect_location("http://b:8080/", "/whep/s", Some("access=x"));
        assert_eq!(l, "http://b:8080/whep/s?access=x&rc_redirected=1");
        assert!(was_redirected(Some("access=x&rc_redirected=1")));
        assert_eq!(
            redirect_location("http://b", "/whep/s", None),
            "http://b/whep/s?rc_redirected=1"
        );
        assert!(!was_redirected(Some("access=rc_redirected")));
        assert!(!was_redirected(None));
    }
}
