//! Who may use the bot, in the mautrix style (sans-I/O): `[matrix.permissions]`
//! maps `"*"`, a server name or a full user ID to `none`, `user` or `admin`;
//! the most specific key wins (user ID > server name > `"*"`).

use std::collections::BTreeMap;

/// What a Matrix user may do with the bot. Ordered: `None < User < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing: commands are refused, invites declined.
    None,
    /// May create and own streams (up to `matrix.max_streams_per_user`) and
    /// manage them in rooms where they have power.
    User,
    /// Every command in every room, no stream quota.
    Admin,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "none" => Some(Level::None),
            "user" => Some(Level::User),
            "admin" => Some(Level::Admin),
            _ => None,
        }
    }
}

/// The resolved table. Without a table, users of the bot's own server are
/// `user` and everyone else `none`.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// `None`: the table is absent (the default above applies).
    table: Option<Table>,
    server_name: String,
}

#[derive(Debug, Clone, Default)]
struct Table {
    users: BTreeMap<String, Level>,
    servers: BTreeMap<String, Level>,
    any: Option<Level>,
}

impl Permissions {
    /// Validates the table. `Err((key, reason))` names the bad entry.
    pub fn parse(
        table: Option<&BTreeMap<String, String>>,
        server_name: &str,
    ) -> Result<Permissions, (String, String)> {
        let Some(raw) = table else {
            return Ok(Permissions {
                table: None,
                server_name: server_name.to_string(),
            });
        };
        let mut t = Table::default();
        for (key, value) in raw {
            let level = Level::parse(value.trim()).ok_or_else(|| {
                (
                    key.clone(),
                    format!("'{value}' is not a permission; use \"none\", \"user\" or \"admin\""),
                )
            })?;
            if key == "*" {
                t.any = Some(level);
            } else if let Some(rest) = key.strip_prefix('@') {
                let ok = rest
                    .split_once(':')
                    .is_some_and(|(local, server)| valid_localpart(local) && valid_server(server));
                if !ok {
                    return Err((
                        key.clone(),
                        "a user ID must look like \"@alice:example.org\"".into(),
                    ));
                }
                t.users.insert(key.clone(), level);
            } else if valid_server(key) {
                t.servers.insert(key.to_ascii_lowercase(), level);
            } else {
                return Err((
                    key.clone(),
                    "a key is \"*\", a server name (\"example.org\") or a full user ID \
                     (\"@alice:example.org\")"
                        .into(),
                ));
            }
        }
        Ok(Permissions {
            table: Some(t),
            server_name: server_name.to_string(),
        })
    }

    /// The level of `user` (a full user ID): its own entry, else its server's,
    /// else `"*"`, else `none`.
    pub fn level_of(&self, user: &str) -> Level {
        let server = server_of(user);
        let Some(t) = &self.table else {
            return if server.is_some_and(|s| s.eq_ignore_ascii_case(&self.server_name)) {
                Level::User
            } else {
                Level::None
            };
        };
        if let Some(l) = t.users.get(user) {
            return *l;
        }
        if let Some(l) = server.and_then(|s| t.servers.get(&s.to_ascii_lowercase())) {
            return *l;
        }
        t.any.unwrap_or(Level::None)
    }

    /// The users named with `admin`: they get power in rooms made on demand.
    pub fn admins(&self) -> Vec<String> {
        self.table
            .iter()
            .flat_map(|t| t.users.iter())
            .filter(|(_, l)| **l == Level::Admin)
            .map(|(u, _)| u.clone())
            .collect()
    }
}

/// The server part of `@local:server` (which may carry a port).
fn server_of(user: &str) -> Option<&str> {
    user.strip_prefix('@')?.split_once(':').map(|(_, s)| s)
}

/// Historical user IDs allow any printable ASCII but ':' (spec: appendix, user identifiers).
fn valid_localpart(local: &str) -> bool {
    !local.is_empty()
        && local
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b':')
}

/// A server name: a DNS name, an IPv4 address or a bracketed IPv6 literal,
/// with an optional port (spec: appendix, server name).
fn valid_server(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn perms(entries: &[(&str, &str)]) -> Permissions {
        Permissions::parse(Some(&table(entries)), "example.org").unwrap()
    }

    #[test]
    fn default_is_own_server_only() {
        let p = Permissions::parse(None, "example.org").unwrap();
        assert_eq!(p.level_of("@alice:example.org"), Level::User);
        assert_eq!(p.level_of("@alice:EXAMPLE.org"), Level::User);
        assert_eq!(p.level_of("@mallory:evil.example"), Level::None);
        assert_eq!(p.level_of("@x:example.org.evil"), Level::None);
        assert_eq!(p.level_of("garbage"), Level::None);
        assert!(p.admins().is_empty());
    }

    #[test]
    fn most_specific_key_wins() {
        let p = perms(&[
            ("*", "user"),
            ("evil.example", "none"),
            ("@friend:evil.example", "user"),
            ("@boss:example.org", "admin"),
            ("example.org", "user"),
        ]);
        assert_eq!(p.level_of("@anyone:other.net"), Level::User);
        assert_eq!(p.level_of("@mallory:evil.example"), Level::None);
        assert_eq!(p.level_of("@friend:evil.example"), Level::User);
        assert_eq!(p.level_of("@boss:example.org"), Level::Admin);
        assert_eq!(p.level_of("@alice:example.org"), Level::User);
        assert_eq!(p.admins(), vec!["@boss:example.org".to_string()]);
        // A user entry beats a more generous server entry too.
        let p = perms(&[("example.org", "admin"), ("@banned:example.org", "none")]);
        assert_eq!(p.level_of("@banned:example.org"), Level::None);
        assert_eq!(p.level_of("@ok:example.org"), Level::Admin);
    }

    #[test]
    fn a_table_replaces_the_default() {
        // No "*" and no server entry: unmatched users get none, local ones too.
        let p = perms(&[("@boss:example.org", "admin")]);
        assert_eq!(p.level_of("@alice:example.org"), Level::None);
        let p = perms(&[]);
        assert_eq!(p.level_of("@alice:example.org"), Level::None);
        // Servers with ports, IPv6 literals.
        let p = perms(&[("example.org:8448", "user"), ("[::1]:8448", "admin")]);
        assert_eq!(p.level_of("@a:example.org:8448"), Level::User);
        assert_eq!(p.level_of("@a:example.org"), Level::None);
        assert_eq!(p.level_of("@a:[::1]:8448"), Level::Admin);
    }

    #[test]
    fn bad_entries_are_named() {
        let bad = |k: &str, v: &str| {
            Permissions::parse(Some(&table(&[(k, v)])), "example.org").unwrap_err()
        };
        let (key, why) = bad("example.org", "superuser");
        assert_eq!(key, "example.org");
        assert!(
            why.contains("'superuser'") && why.contains("\"admin\""),
            "{why}"
        );
        assert!(bad("*", "Admin").1.contains("not a permission"));
        for k in [
            "@alice",
            "@:example.org",
            "@alice:",
            "@a b:example.org",
            "@alice:exa mple.org",
        ] {
            assert!(bad(k, "user").1.contains("user ID"), "{k}");
        }
        for k in [
            "",
            "#room:example.org",
            "exa mple.org",
            "example.org:",
            "a:b:c",
            "[::1",
            "**",
        ] {
            assert!(bad(k, "user").1.contains("server name"), "{k:?}");
        }
        // Surrounding spaces in a value are forgiven.
        assert!(Permissions::parse(Some(&table(&[("*", " user ")])), "x").is_ok());
    }
}
