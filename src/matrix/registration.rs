//! registration.yaml: what the homeserver needs to know about roomcast, written
//! by `roomcast registration` and read at start-up.

use std::path::Path;

use rand::Rng;
use ruma::api::appservice::Registration;

/// Localpart prefix of puppet users (guests of the watch page).
pub const PUPPET_PREFIX: &str = "_roomcast_";

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "cannot read the appservice registration {path}: {source}. Create it with \
         `roomcast registration --config <roomcast.toml>` (or `--url <URL the homeserver reaches roomcast at> \
         --server-name <server_name>`) and add its path to the homeserver's app_service_config_files"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the appservice registration {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "{path} exists; pass --force to replace it (the homeserver must then load the new tokens)"
    )]
    Exists { path: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..48)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Escapes regex metacharacters of a server name ("example.org" → "example\.org").
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The URL the homeserver reaches roomcast at, from the config when `--url`
/// is not given: `public_url` first (a reverse proxy in front of roomcast),
/// else `http.listen`. Returns the URL and a sentence saying where it came from.
pub fn url_from_config(public_url: Option<&str>, listen: std::net::SocketAddr) -> (String, String) {
    if let Some(u) = public_url {
        let u = u.trim_end_matches('/').to_string();
        return (u.clone(), format!("url {u} from public_url"));
    }
    let ip = listen.ip();
    if ip.is_unspecified() {
        // A wildcard is no address to connect to; the loopback of the same
        // family reaches it when the homeserver runs on this machine.
        let lo: std::net::IpAddr = if ip.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        let url = format!("http://{}", std::net::SocketAddr::new(lo, listen.port()));
        let why = format!(
            "url {url} from http.listen {listen}: {ip} listens on every address, so the \
             homeserver on this machine reaches it on the loopback; if the homeserver runs \
             elsewhere, pass --url or set public_url"
        );
        return (url, why);
    }
    let url = format!("http://{listen}");
    (url.clone(), format!("url {url} from http.listen"))
}

pub struct NewRegistration<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub server_name: &'a str,
    pub sender_localpart: &'a str,
    pub alias_prefix: &'a str,
}

/// The registration file text, with comments explaining each field.
pub fn render(n: &NewRegistration<'_>) -> String {
    let server = regex_escape(n.server_name);
    format!(
        "# roomcast's application service registration. Add this file's path to the
# homeserver's configuration (Synapse: app_service_config_files) and restart it.
# Keep it secret: the tokens let anyone act as roomcast.

# Unique, never-changing id of this appservice (used in /appservice/{{id}}/ping).
id: \"{id}\"
# Where the homeserver reaches roomcast's HTTP listener (http.listen).
url: \"{url}\"
# roomcast → homeserver secret (roomcast sends it as its access token).
as_token: \"{as_token}\"
# homeserver → roomcast secret (checked on every transaction).
hs_token: \"{hs_token}\"
# The bot users talk to: @{bot}:{server_name}. DM it `!live help`.
sender_localpart: \"{bot}\"
# roomcast's users and aliases, reserved for it (exclusive):
#  - guests of the watch page post as puppets @{puppet}…
#  - stream rooms have aliases #{alias_prefix}<stream>; joining an unknown one
#    creates the room on demand.
namespaces:
  users:
    - exclusive: true
      regex: '@{puppet_re}.*:{server}'
  aliases:
    - exclusive: true
      regex: '#{alias_re}.*:{server}'
  rooms: []
# roomcast sends chat for guests itself, with its own per-guest and per-IP
# limits; the homeserver's limits would only delay go-live notices.
rate_limited: false
# No typing notifications or receipts needed.
receive_ephemeral: false
",
        id = n.id,
        url = n.url,
        as_token = random_token(),
        hs_token = random_token(),
        bot = n.sender_localpart,
        server_name = n.server_name,
        puppet = PUPPET_PREFIX,
        puppet_re = regex_escape(PUPPET_PREFIX),
        alias_prefix = n.alias_prefix,
        alias_re = regex_escape(n.alias_prefix),
    )
}

/// Writes a new registration file, readable by its owner only (it holds the
/// tokens); refuses to replace one unless `force`.
pub fn write(path: &Path, n: &NewRegistration<'_>, force: bool) -> Result<(), RegistrationError> {
    use std::io::Write;
    let p = path.display().to_string();
    if path.exists() && !force {
        return Err(RegistrationError::Exists { path: p });
    }
    let werr = |source| RegistrationError::Write {
        path: p.clone(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(werr)?;
    // `mode` applies to a new file only: a replaced one may have been wider.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(werr)?;
    }
    f.write_all(render(n).as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)
}

/// Shortest token accepted: `roomcast registration` writes 48 characters.
pub const MIN_TOKEN_LEN: usize = 32;

/// Why a token cannot be a secret (None when it looks random enough).
fn weak_token(token: &str) -> Option<&'static str> {
    let lower = token.to_ascii_lowercase();
    if [
        "replace",
        "changeme",
        "change-me",
        "placeholder",
        "example",
        "secret",
        "token",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return Some("is a placeholder (like the example registration's)");
    }
    if token.chars().count() < MIN_TOKEN_LEN {
        return Some("is too short");
    }
    let distinct: std::collections::HashSet<char> = token.chars().collect();
    if distinct.len() < 12 {
        return Some("repeats too few characters to be random");
    }
    None
}

pub fn load(path: &Path) -> Result<Registration, RegistrationError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RegistrationError::Read {
        path: p.clone(),
        source,
    })?;
    let reg: Registration =
        serde_yaml_ng::from_str(&text).map_err(|e| RegistrationError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    let invalid = |reason: &str| RegistrationError::Invalid {
        path: p.clone(),
        reason: reason.to_string(),
    };
    for (field, token) in [("as_token", &reg.as_token), ("hs_token", &reg.hs_token)] {
        if let Some(why) = weak_token(token) {
            return Err(invalid(&format!(
                "{field} {why}. Generate real tokens with `roomcast registration --url <URL the \
                 homeserver reaches roomcast at> --server-name <server_name> --output {p} --force` \
                 (or `--config <roomcast.toml>`), then restart the homeserver so it loads them"
            )));
        }
    }
    if reg.as_token == reg.hs_token {
        return Err(invalid(
            "as_token and hs_token must differ; generate new ones with `roomcast registration --force`",
        ));
    }
    if reg.id.is_empty() || reg.sender_localpart.is_empty() {
        return Err(invalid("id and sender_localpart must not be empty"));
    }
    Ok(reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_loads_with_the_namespaces() {
        let dir = std::env::temp_dir().join(format!("roomcast-reg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registration.yaml");
        let n = NewRegistration {
            id: "roomcast",
            url: "http://127.0.0.1:8080",
            server_name: "example.org",
            sender_localpart: "roomcast",
            alias_prefix: "live_",
        };
        write(&path, &n, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
            // A replaced file that was world-readable is narrowed too.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            write(&path, &n, true).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        assert!(matches!(
            write(&path, &n, false),
            Err(RegistrationError::Exists { .. })
        ));
        let reg = load(&path).unwrap();
        assert_eq!(reg.id, "roomcast");
        assert_eq!(reg.url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(reg.rate_limited, Some(false));
        assert_ne!(reg.as_token, reg.hs_token);
        assert_eq!(reg.namespaces.users[0].regex, "@_roomcast_.*:example\\.org");
        assert_eq!(reg.namespaces.aliases[0].regex, "#live_.*:example\\.org");
        assert!(reg.namespaces.users[0].exclusive);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The documented example at the repository root parses, and its
    /// placeholder tokens are refused with the way to make real ones.
    #[test]
    fn example_is_refused_for_its_placeholders() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("registration.yaml");
        let text = std::fs::read_to_string(&p).unwrap();
        let reg: Registration = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(reg.sender_localpart, "roomcast");
        assert_eq!(reg.namespaces.aliases[0].regex, "#live_.*:example\\.org");
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("as_token is a placeholder") && e.contains("roomcast registration"),
            "{e}"
        );
    }

    #[test]
    fn url_from_the_config() {
        let l = |s: &str| s.parse().unwrap();
        let (u, why) = url_from_config(Some("https://live.example.org/"), l("0.0.0.0:8080"));
        assert_eq!(u, "https://live.example.org");
        assert!(why.contains("public_url"), "{why}");
        let (u, why) = url_from_config(None, l("10.0.0.5:9000"));
        assert_eq!(u, "http://10.0.0.5:9000");
        assert!(why.contains("http.listen"), "{why}");
        let (u, why) = url_from_config(None, l("0.0.0.0:8080"));
        assert_eq!(u, "http://127.0.0.1:8080");
        assert!(
            why.contains("every address") && why.contains("--url"),
            "{why}"
        );
        let (u, _) = url_from_config(None, l("[::]:8081"));
        assert_eq!(u, "http://[::1]:8081");
        let (u, _) = url_from_config(None, l("[2001:db8::2]:80"));
        assert_eq!(u, "http://[2001:db8::2]:80");
    }

    #[test]
    fn weak_tokens() {
        let good = "q8Vd0XcL2mRt7YbN4kWs9HjP1eFz6AuG3oIy5TvB0nMx";
        assert_eq!(weak_token(good), None);
        assert!(
            weak_token("REPLACE-with-48-random-characters-from-roomcast-registration").is_some()
        );
        assert!(weak_token("as_secret_token_as_secret_token_as_secret").is_some());
        assert_eq!(weak_token("abcdefghij0123456789"), Some("is too short"));
        assert!(weak_token(&"ab".repeat(30)).unwrap().contains("too few"));
    }
}
