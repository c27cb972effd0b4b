//! Open Graph tags of the watch page, so a link pasted in a chat gets a
//! preview: the stream's title, description and live thumbnail. A private
//! stream's page names nothing (the tags are read without credentials).

use crate::hub::{Access, Stream};
use crate::matrix::html_escape as esc;

/// `<meta>` tags for `/watch/{name}` (`stream`: the stream, if it exists).
pub fn watch_tags(
    public_base: &str,
    name: &str,
    stream: Option<&Stream>,
    thumbnails: bool,
) -> String {
    let url = format!("{public_base}/watch/{name}");
    let Some(s) = stream.filter(|s| s.access() == Access::Public) else {
        return format!(
            "<meta property=\"og:type\" content=\"website\">\n<meta property=\"og:site_name\" content=\"roomcast\">\n<meta property=\"og:url\" content=\"{}\">\n",
            esc(&url)
        );
    };
    let title = s.title();
    let title = if title.is_empty() {
        name.to_string()
    } else {
        title
    };
    let description = s
        .description()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| {
            if s.is_live() {
                format!("{title} is live on roomcast")
            } else {
                format!("{title} on roomcast (offline)")
            }
        });
    let mut tags = format!(
        "<meta property=\"og:type\" content=\"video.other\">\n\
         <meta property=\"og:site_name\" content=\"roomcast\">\n\
         <meta property=\"og:url\" content=\"{}\">\n\
         <meta property=\"og:title\" content=\"{}\">\n\
         <meta property=\"og:description\" content=\"{}\">\n",
        esc(&url),
        esc(&title),
        esc(&description),
    );
    if thumbnails && s.is_live() {
        let image = format!("{public_base}/api/v1/streams/{name}/thumbnail.jpg");
        tags.push_str(&format!(
            "<meta property=\"og:image\" content=\"{}\">\n\
             <meta property=\"og:image:type\" content=\"image/jpeg\">\n\
             <meta name=\"twitter:card\" content=\"summary_large_image\">\n",
            esc(&image)
        ));
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;

    #[test]
    fn public_streams_get_a_preview_private_ones_nothing() {
        let hub = Hub::new();
        let s = hub.ensure_stream("demo", Some("A <b> show"));
        let tags = watch_tags("https://x", "demo", Some(&s), true);
        assert!(
            tags.contains("og:title\" content=\"A &lt;b&gt; show\""),
            "{tags}"
        );
        assert!(!tags.contains("og:image"), "offline: no live picture");
        s.set_access(Access::Private);
        let tags = watch_tags("https://x", "demo", Some(&s), true);
        assert!(
            !tags.contains("og:title") && !tags.contains("A &lt;b"),
            "{tags}"
        );
    }
}
