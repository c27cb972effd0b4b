//! What a room's timeline looks like as the pages' chat, sans-I/O: the HTML
//! allow-list (the client-server spec's subset for `org.matrix.custom.html`),
//! reply fallbacks stripped, the relations (`m.in_reply_to`, `m.thread`,
//! `m.replace`, `m.annotation`), media as paths of roomcast's media proxy, and
//! display names told apart as the spec says.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};

use serde_json::Value;

use crate::hub::ChatMessage;
pub use crate::hub::chat::{Media, Reaction, ReplyTo, Rich};

/// Longest relayed message body, in characters (Matrix allows ~64 KB events).
pub const MAX_BODY_CHARS: usize = 4000;
/// Longest `formatted_body` sanitized, and longest sanitized HTML kept, in bytes.
const MAX_HTML_BYTES: usize = 16_000;
/// Longest quoted context of a reply, in characters.
const MAX_QUOTE_CHARS: usize = 200;
/// Longest reaction key (an emoji or a short text), in characters.
const MAX_REACTION_KEY_CHARS: usize = 32;
/// Distinct reaction keys counted under one message.
const MAX_REACTION_KEYS: usize = 20;

/// How an event relates to another (`m.relates_to`).
#[derive(Debug, Clone, PartialEq)]
pub enum Relation {
    None,
    Reply(String),
    /// In a thread: kept out of the main chat.
    Thread,
    Replace(String),
    Annotation {
        target: String,
        key: String,
    },
}

pub fn relation(content: &Value) -> Relation {
    let rel = &content["m.relates_to"];
    let id = |v: &Value| v.as_str().map(str::to_string);
    match rel["rel_type"].as_str() {
        Some("m.thread") => Relation::Thread,
        Some("m.replace") => id(&rel["event_id"]).map_or(Relation::None, Relation::Replace),
        Some("m.annotation") => match (id(&rel["event_id"]), rel["key"].as_str()) {
            (Some(target), Some(key))
                if !key.is_empty() && key.chars().count() <= MAX_REACTION_KEY_CHARS =>
            {
                Relation::Annotation {
                    target,
                    key: key.to_string(),
                }
            }
            _ => Relation::None,
        },
        _ => id(&rel["m.in_reply_to"]["event_id"]).map_or(Relation::None, Relation::Reply),
    }
}

/// A message's text and rich parts from its content (a message's, or an
/// edit's `m.new_content`); `kind` is the event type. None for what the chat
/// does not show (unknown msgtypes, empty messages).
pub fn render(kind: &str, content: &Value) -> Option<(String, Rich)> {
    let msgtype = if kind == "m.sticker" {
        "m.sticker"
    } else {
        content["msgtype"].as_str()?
    };
    let is_reply = matches!(relation(content), Relation::Reply(_));
    let raw_body = content["body"].as_str().unwrap_or("");
    let body = if is_reply {
        strip_reply_fallback(raw_body)
    } else {
        raw_body
    };
    let body: String = body.trim_end().chars().take(MAX_BODY_CHARS).collect();
    let mut rich = Rich {
        msgtype: msgtype.to_string(),
        ..Rich::default()
    };
    match msgtype {
        "m.text" | "m.notice" | "m.emote" => {
            if body.trim().is_empty() {
                return None;
            }
            if content["format"].as_str() == Some("org.matrix.custom.html")
                && let Some(f) = content["formatted_body"].as_str()
            {
                rich.html = sanitize_html(f).filter(|h| !h.trim().is_empty());
            }
        }
        "m.image" | "m.sticker" => {
            let info = &content["info"];
            let path = content["url"].as_str().and_then(mxc_path);
            rich.media = path.map(|path| Media {
                path,
                // Stickers are small and may be animated: the file itself.
                thumbnail: msgtype == "m.image",
                w: dimension(&info["w"]),
                h: dimension(&info["h"]),
            });
        }
        "m.video" => {
            let info = &content["info"];
            rich.media = info["thumbnail_url"]
                .as_str()
                .and_then(mxc_path)
                .map(|path| Media {
                    path,
                    thumbnail: false,
                    w: dimension(&info["thumbnail_info"]["w"]),
                    h: dimension(&info["thumbnail_info"]["h"]),
                });
        }
        "m.audio" | "m.file" => {}
        _ => return None,
    }
    Some((body, rich))
}

fn dimension(v: &Value) -> Option<u32> {
    v.as_u64()
        .filter(|n| (1..=10_000).contains(n))
        .map(|n| n as u32)
}

/// `mxc://server/media_id` as the proxy's `server/media_id`, or None when
/// either part has characters the spec does not allow (so a path built from
/// it cannot walk anywhere else on the homeserver).
pub fn mxc_path(uri: &str) -> Option<String> {
    let (server, id) = uri.strip_prefix("mxc://")?.split_once('/')?;
    valid_media_ref(server, id).then(|| format!("{server}/{id}"))
}

/// A server name (host[:port], IPv6 literals in brackets) and a media id
/// (`[A-Za-z0-9_-]`), both non-empty and short.
pub fn valid_media_ref(server: &str, id: &str) -> bool {
    let server_ok = !server.is_empty()
        && server.len() <= 255
        && server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    let id_ok = !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    server_ok && id_ok
}

/// A reply's body without the quoted fallback: the leading `> ` lines and the
/// empty line after them.
pub fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with('>') {
        return body;
    }
    let mut rest = body;
    while rest.starts_with('>') {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

/// The spec's HTML subset (client-server API, "m.room.message msgtypes"),
/// without `img` (inline images would load from the homeserver, which the
/// pages' CSP forbids); links only to http, https and mailto, opened with
/// `rel="noopener noreferrer"`; `mx-reply` (the reply fallback), `script` and
/// `style` dropped with their content.
static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let tags: HashSet<&str> = [
        "font",
        "del",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "p",
        "a",
        "ul",
        "ol",
        "sup",
        "sub",
        "li",
        "b",
        "i",
        "u",
        "strong",
        "em",
        "s",
        "code",
        "hr",
        "br",
        "div",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "caption",
        "pre",
        "span",
        "details",
        "summary",
    ]
    .into();
    let attrs: HashMap<&str, HashSet<&str>> = [
        (
            "font",
            ["data-mx-bg-color", "data-mx-color", "color"].into(),
        ),
        (
            "span",
            ["data-mx-bg-color", "data-mx-color", "data-mx-spoiler"].into(),
        ),
        ("a", ["href"].into()),
        ("ol", ["start"].into()),
        ("code", ["class"].into()),
    ]
    .into();
    let mut b = ammonia::Builder::empty();
    b.tags(tags)
        .tag_attributes(attrs)
        .generic_attributes(HashSet::new())
        .generic_attribute_prefixes(HashSet::new())
        .url_schemes(["http", "https", "mailto"].into())
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer"))
        .set_tag_attribute_value("a", "target", "_blank")
        .clean_content_tags(["script", "style", "mx-reply"].into())
        .strip_comments(true)
        .attribute_filter(|_tag, attr, value| match attr {
            "data-mx-bg-color" | "data-mx-color" | "color" => {
                is_hex_color(value).then_some(Cow::Borrowed(value))
            }
            "class" => is_language_class(value).then_some(Cow::Borrowed(value)),
            "start" => value
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 100_000)
                .map(|_| Cow::Borrowed(value)),
            _ => Some(Cow::Borrowed(value)),
        });
    b
});

fn is_hex_color(v: &str) -> bool {
    v.len() == 7 && v.starts_with('#') && v[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_language_class(v: &str) -> bool {
    v.strip_prefix("language-").is_some_and(|l| {
        !l.is_empty()
            && l.len() <= 32
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+#-_".contains(&b))
    })
}

/// `formatted_body` through the allow-list; None when it is too long to keep.
pub fn sanitize_html(html: &str) -> Option<String> {
    if html.len() > MAX_HTML_BYTES {
        return None;
    }
    let out = SANITIZER.clean(html).to_string();
    (out.len() <= MAX_HTML_BYTES).then_some(out)
}

/// The quoted context of a reply to `original`.
pub fn quote(original: &ChatMessage) -> ReplyTo {
    ReplyTo {
        id: original.id.clone(),
        sender: Some(original.sender.clone()),
        body: Some(original.body.chars().take(MAX_QUOTE_CHARS).collect()),
    }
}

/// Applies an edit by `sender` of `target` with `new_content` to the
/// history: the message with its new text under its own id, or None (not in
/// the history, another sender's, or nothing to show).
pub fn apply_edit(
    history: &mut VecDeque<Arc<ChatMessage>>,
    sender: &str,
    target: &str,
    kind: &str,
    new_content: &Value,
) -> Option<Arc<ChatMessage>> {
    let slot = history
        .iter_mut()
        .find(|m| m.id == target && m.sender_id == sender)?;
    let (body, rich) = render(kind, new_content)?;
    let mut msg = (**slot).clone();
    msg.body = body;
    msg.rich.html = rich.html;
    if rich.media.is_some() {
        msg.rich.media = rich.media;
    }
    msg.rich.edited = true;
    *slot = Arc::new(msg);
    Some(slot.clone())
}

/// Adds `delta` (+1, or -1 for a redacted reaction) to the count of `key`
/// under `target`: the updated message, or None when it is not in the history.
pub fn apply_reaction(
    history: &mut VecDeque<Arc<ChatMessage>>,
    target: &str,
    key: &str,
    delta: i32,
) -> Option<Arc<ChatMessage>> {
    let slot = history.iter_mut().find(|m| m.id == target)?;
    let mut msg = (**slot).clone();
    let reactions = &mut msg.rich.reactions;
    match reactions.iter_mut().position(|r| r.key == key) {
        Some(i) => {
            let n = reactions[i].count as i64 + delta as i64;
            if n <= 0 {
                reactions.remove(i);
            } else {
                reactions[i].count = n as u32;
            }
        }
        None if delta > 0 && reactions.len() < MAX_REACTION_KEYS => reactions.push(Reaction {
            key: key.to_string(),
            count: delta as u32,
        }),
        None => return None,
    }
    *slot = Arc::new(msg);
    Some(slot.clone())
}

/// The name the chat shows for `user`: its display name, with the user id
/// added when another member of the room has the same one (the spec's
/// "disambiguate"), or the user id when it has none.
pub fn shown_name<'a>(
    user: &str,
    name: Option<&str>,
    members: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return user.to_string();
    };
    let clash = members
        .into_iter()
        .any(|(other, other_name)| other != user && other_name.trim() == name);
    // A name that looks like a user id is told apart too.
    if clash || (name.starts_with('@') && name.contains(':')) {
        format!("{name} ({user})")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(id: &str, sender: &str, body: &str) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            id: id.into(),
            sender: sender.into(),
            sender_id: format!("@{sender}:hs"),
            body: body.into(),
            ts: 1,
            guest: false,
            rich: Rich {
                msgtype: "m.text".into(),
                ..Rich::default()
            },
        })
    }

    #[test]
    fn sanitizer_keeps_the_spec_subset_and_drops_the_rest() {
        let s = |h: &str| sanitize_html(h).unwrap();
        assert_eq!(s("<b>bold</b> <em>x</em>"), "<b>bold</b> <em>x</em>");
        assert_eq!(s("<script>alert(1)</script>hi"), "hi");
        assert_eq!(s("<img src=x onerror=alert(1)>hi"), "hi");
        assert_eq!(
            s("<b onclick=\"x()\" style=\"color:red\">b</b>"),
            "<b>b</b>"
        );
        assert_eq!(s("<iframe src=//evil></iframe><svg onload=x>t</svg>"), "t");
        let js = s("<a href=\"javascript:alert(1)\">j</a>");
        assert!(
            !js.contains("href") && js.contains("rel=\"noopener noreferrer\""),
            "{js}"
        );
        let link = s("<a href=\"https://matrix.to/#/@a:b\" rel=\"opener\">a</a>");
        assert!(
            link.contains("href=\"https://matrix.to/#/@a:b\"")
                && link.contains("rel=\"noopener noreferrer\"")
                && link.contains("target=\"_blank\""),
            "{link}"
        );
        assert!(!s("<a href=\"/relative\">r</a>").contains("href"));
        assert!(!s("<a href=\"data:text/html,x\">r</a>").contains("href"));
        assert_eq!(
            s("<mx-reply><blockquote>quoted</blockquote></mx-reply>answer"),
            "answer"
        );
        assert_eq!(
            s("<span data-mx-color=\"#ff0000\" data-mx-bg-color=\"red;x\">c</span>"),
            "<span data-mx-color=\"#ff0000\">c</span>"
        );
        assert_eq!(
            s("<code class=\"language-rust\">x</code><code class=\"evil\">y</code>"),
            "<code class=\"language-rust\">x</code><code>y</code>"
        );
        assert_eq!(s("<p>unclosed <b>b"), "<p>unclosed <b>b</b></p>");
        assert!(sanitize_html(&"a".repeat(MAX_HTML_BYTES + 1)).is_none());
    }

    #[test]
    fn reply_fallbacks_are_stripped() {
        assert_eq!(
            strip_reply_fallback("> <@a:b> original\n> second\n\nthe answer"),
            "the answer"
        );
        assert_eq!(strip_reply_fallback("no quote"), "no quote");
        assert_eq!(strip_reply_fallback("> only a quote"), "");
        let content = json!({
            "msgtype": "m.text",
            "body": "> <@a:b> hi\n\nhello back",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>hi</blockquote></mx-reply>hello <b>back</b>",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$orig"}},
        });
        assert_eq!(relation(&content), Relation::Reply("$orig".into()));
        let (body, rich) = render("m.room.message", &content).unwrap();
        assert_eq!(body, "hello back");
        assert_eq!(rich.html.as_deref(), Some("hello <b>back</b>"));
        // Not a reply: a quote stays.
        let (body, _) = render(
            "m.room.message",
            &json!({"msgtype": "m.text", "body": "> quoted\n\nx"}),
        )
        .unwrap();
        assert_eq!(body, "> quoted\n\nx");
    }

    #[test]
    fn relations() {
        let rel = |r: Value| relation(&json!({ "m.relates_to": r }));
        assert_eq!(
            rel(
                json!({"rel_type": "m.thread", "event_id": "$root", "m.in_reply_to": {"event_id": "$x"}})
            ),
            Relation::Thread
        );
        assert_eq!(
            rel(json!({"rel_type": "m.replace", "event_id": "$e"})),
            Relation::Replace("$e".into())
        );
        assert_eq!(
            rel(json!({"rel_type": "m.annotation", "event_id": "$e", "key": "👍"})),
            Relation::Annotation {
                target: "$e".into(),
                key: "👍".into()
            }
        );
        assert_eq!(
            rel(json!({"rel_type": "m.annotation", "event_id": "$e", "key": "x".repeat(33)})),
            Relation::None
        );
        assert_eq!(relation(&json!({})), Relation::None);
    }

    #[test]
    fn media_paths_are_validated() {
        assert_eq!(
            mxc_path("mxc://hs.example:8448/AbC_-1").as_deref(),
            Some("hs.example:8448/AbC_-1")
        );
        assert_eq!(mxc_path("mxc://hs/../x"), None);
        assert_eq!(mxc_path("mxc://hs/a/b"), None);
        assert_eq!(mxc_path("mxc://hs/a?b"), None);
        assert_eq!(mxc_path("https://hs/a"), None);
        assert_eq!(mxc_path("mxc:///a"), None);
        let (_, rich) = render(
            "m.sticker",
            &json!({"body": "cat", "url": "mxc://hs/cat", "info": {"w": 128, "h": 99999}}),
        )
        .unwrap();
        assert_eq!(rich.msgtype, "m.sticker");
        assert_eq!(
            rich.media,
            Some(Media {
                path: "hs/cat".into(),
                thumbnail: false,
                w: Some(128),
                h: None
            })
        );
        let (_, rich) = render(
            "m.room.message",
            &json!({"msgtype": "m.video", "body": "v.mp4", "url": "mxc://hs/v",
                    "info": {"thumbnail_url": "mxc://hs/thumb"}}),
        )
        .unwrap();
        assert_eq!(rich.media.unwrap().path, "hs/thumb");
        assert!(
            render(
                "m.room.message",
                &json!({"msgtype": "m.location", "body": "x"})
            )
            .is_none()
        );
        assert!(
            render(
                "m.room.message",
                &json!({"msgtype": "m.text", "body": "  "})
            )
            .is_none()
        );
    }

    #[test]
    fn edits_apply_to_their_senders_messages_only() {
        let mut h: VecDeque<_> = [msg("$a", "alice", "tpyo")].into();
        let new = json!({"msgtype": "m.text", "body": "typo", "format": "org.matrix.custom.html", "formatted_body": "<i>typo</i>"});
        assert!(apply_edit(&mut h, "@mallory:hs", "$a", "m.room.message", &new).is_none());
        assert_eq!(h[0].body, "tpyo");
        let m = apply_edit(&mut h, "@alice:hs", "$a", "m.room.message", &new).unwrap();
        assert_eq!(
            (m.body.as_str(), m.rich.html.as_deref(), m.rich.edited),
            ("typo", Some("<i>typo</i>"), true)
        );
        assert_eq!(h[0].body, "typo");
        assert!(apply_edit(&mut h, "@alice:hs", "$missing", "m.room.message", &new).is_none());
    }

    #[test]
    fn reactions_count_and_uncount() {
        let mut h: VecDeque<_> = [msg("$a", "alice", "hi")].into();
        apply_reaction(&mut h, "$a", "👍", 1).unwrap();
        let m = apply_reaction(&mut h, "$a", "👍", 1).unwrap();
        assert_eq!(
            m.rich.reactions,
            vec![Reaction {
                key: "👍".into(),
                count: 2
            }]
        );
        apply_reaction(&mut h, "$a", "🎉", 1).unwrap();
        apply_reaction(&mut h, "$a", "👍", -1).unwrap();
        let m = apply_reaction(&mut h, "$a", "🎉", -1).unwrap();
        assert_eq!(
            m.rich.reactions,
            vec![Reaction {
                key: "👍".into(),
                count: 1
            }]
        );
        assert!(apply_reaction(&mut h, "$b", "👍", 1).is_none());
        assert!(
            apply_reaction(&mut h, "$a", "x", -1).is_none(),
            "nothing to uncount"
        );
        for i in 0..MAX_REACTION_KEYS + 5 {
            apply_reaction(&mut h, "$a", &format!("k{i}"), 1);
        }
        assert_eq!(h[0].rich.reactions.len(), MAX_REACTION_KEYS);
    }

    #[test]
    fn same_display_names_are_told_apart() {
        let members = [
            ("@alice:hs", "Alice"),
            ("@mallory:evil", "Alice"),
            ("@bob:hs", "Bob"),
        ];
        assert_eq!(shown_name("@bob:hs", Some("Bob"), members), "Bob");
        assert_eq!(
            shown_name("@alice:hs", Some("Alice"), members),
            "Alice (@alice:hs)"
        );
        assert_eq!(
            shown_name("@mallory:evil", Some("Alice "), members),
            "Alice (@mallory:evil)"
        );
        assert_eq!(shown_name("@x:hs", None, members), "@x:hs");
        assert_eq!(
            shown_name("@x:hs", Some("@alice:hs"), members),
            "@alice:hs (@x:hs)"
        );
    }
}
