//! The cluster's settings (`[cluster]`, `--cluster`, `--node`): broker
//! URLs, the subject prefix and the node name, checked once at start-up.
//! No IO here; `config` calls [`validate`].

use std::fmt;

/// Which broker carries the publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Nats,
    Redis,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Nats => "nats",
            BrokerKind::Redis => "redis",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            BrokerKind::Nats => 4222,
            BrokerKind::Redis => 6379,
        }
    }
}

/// One broker address: `nats://[user:password@]host[:port]` or
/// `redis://[user:password@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub kind: BrokerKind,
    pub host: String,
    pub port: u16,
    /// `user:password` (or `:password`), passed to the client library.
    pub userinfo: Option<String>,
}

impl BrokerUrl {
    /// The URL to hand to the client library (credentials included).
    pub fn full(&self) -> String {
        let auth = self
            .userinfo
            .as_deref()
            .map_or(String::new(), |u| format!("{u}@"));
        format!(
            "{}://{auth}{}:{}",
            self.kind.name(),
            self.host_for_url(),
            self.port
        )
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Shown in logs, metrics and answers: never the password.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.userinfo.as_deref() {
            Some(u) => match u.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{u}@"),
            },
            None => String::new(),
        };
        write!(
            f,
            "{}://{auth}{}:{}",
            self.kind.name(),
            self.host_for_url(),
            self.port
        )
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The validated cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub kind: BrokerKind,
    /// NATS: servers of one NATS cluster (the client fails over between
    /// them). Redis: exactly one server.
    pub brokers: Vec<BrokerUrl>,
    /// The subject (NATS) or channel (Redis) is `PREFIX.publish`.
    pub prefix: String,
    /// This node's name, in every message it sends and in its logs.
    pub node: String,
}

impl ClusterSettings {
    /// Where publishes travel: a NATS subject, a Redis channel.
    pub fn subject(&self) -> String {
        format!("{}.publish", self.prefix)
    }

    /// The brokers, comma-separated, for logs.
    pub fn brokers_text(&self) -> String {
        self.brokers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Longest prefix and node name accepted.
pub const MAX_NAME: usize = 64;

/// Parses one broker URL; the error says what is wrong with it.
pub fn parse_url(text: &str) -> Result<BrokerUrl, String> {
    let bad = |why: &str| Err(format!("'{}': {why}", text.escape_debug()));
    if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return bad("contains a space or control character");
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return bad("is not a URL like nats://HOST:PORT or redis://HOST:PORT");
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "nats" => BrokerKind::Nats,
        "redis" => BrokerKind::Redis,
        "tls" | "rediss" | "wss" | "ws" => {
            return bad("TLS and WebSocket connections to the broker are not supported (use nats:// or redis://)")
        }
        _ => return bad("the scheme must be nats:// or redis://"),
    };
    // Everything after the authority: only an empty path or "/" is taken.
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !tail.is_empty() && tail != "/" {
        return bad(match kind {
            // The stream lives in database 0; a number here would be
            // one more thing every node must agree on, for no gain.
            BrokerKind::Redis => {
                "a path, database number or query is not supported (the stream is in database 0)"
            }
            BrokerKind::Nats => "a path or query is not supported",
        });
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => return bad("an empty user before '@'"),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return bad("an unclosed '[' in the host");
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return bad("unexpected characters after the host"),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return bad("the host has characters a host name or address cannot have");
    }
    let port = match port {
        None => kind.default_port(),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return bad("the port must be a number from 1 to 65535"),
        },
    };
    Ok(BrokerUrl {
        kind,
        host: host.to_string(),
        port,
        userinfo,
    })
}

/// A prefix or node name: 1 to 64 of `A-Z a-z 0-9 . _ -`, no leading,
/// trailing or doubled dot (they would make empty NATS subject tokens).
fn check_name(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_NAME {
        return Err(format!(
            "{field}: '{}' must be 1 to {MAX_NAME} characters",
            v.escape_debug()
        ));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{field}: '{}' may hold only letters, digits, '.', '_' and '-'",
            v.escape_debug()
        ));
    }
    if v.starts_with('.') || v.ends_with('.') || v.contains("..") {
        return Err(format!(
            "{field}: '{}' must not start or end with '.' or hold '..'",
            v.escape_debug()
        ));
    }
    Ok(())
}

/// This machine's host name, as a default node name (cut to fit; `node`
/// if it has none corepin can use).
pub fn default_node() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_NAME)
        .collect();
    if check_name("node", &name).is_ok() {
        name
    } else {
        "node".into()
    }
}

/// What the file and the flags give, before checking.
#[derive(Debug, Default, Clone)]
pub struct Given {
    /// `(field, urls)`: `--cluster` when any flag was given, else
    /// `cluster.brokers`.
    pub brokers: (String, Vec<String>),
    pub prefix: Option<String>,
    /// `(field, name)`.
    pub node: Option<(String, String)>,
}

/// Checks the settings; `Ok(None)` when no broker is given (corepin runs
/// alone). Errors name the field or flag.
pub fn validate(g: Given) -> Result<Option<ClusterSettings>, String> {
    let (field, urls) = g.brokers;
    if urls.is_empty() {
        if let Some((f, _)) = g.node {
            return Err(format!(
                "{f}: a node name needs a broker (--cluster URL or cluster.brokers)"
            ));
        }
        if g.prefix.is_some() {
            return Err(
                "cluster.prefix: a prefix needs a broker (--cluster URL or cluster.brokers)".into(),
            );
        }
        return Ok(None);
    }
    let mut brokers = Vec::new();
    for u in &urls {
        let b = parse_url(u).map_err(|e| format!("{field}: {e}"))?;
        if brokers.contains(&b) {
            return Err(format!("{field}: {b} is given twice"));
        }
        brokers.push(b);
    }
    let kind = brokers[0].kind;
    if brokers.iter().any(|b| b.kind != kind) {
        return Err(format!(
            "{field}: every broker must be of one kind (nats:// or redis://), not both"
        ));
    }
    if kind == BrokerKind::Redis && brokers.len() > 1 {
        return Err(format!(
            "{field}: give one redis:// server (separate Redis servers do not share a stream; nodes on different servers would not see each other's publishes)"
        ));
    }
    let prefix = g.prefix.unwrap_or_else(|| "corepin".into());
    check_name("cluster.prefix", &prefix)?;
    let node = match g.node {
        Some((f, n)) => {
            check_name(&f, &n)?;
            n
        }
        None => default_node(),
    };
    Ok(Some(ClusterSettings {
        kind,
        brokers,
        prefix,
        node,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(urls: &[&str]) -> Given {
        Given {
            brokers: (
                "--cluster".into(),
                urls.iter().map(|s| s.to_string()).collect(),
            ),
            ..Given::default()
        }
    }

    #[test]
    fn urls() {
        for (text, want) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://localhost", "nats://localhost:4222"),
            ("NATS://h:1/", "nats://h:1"),
            ("redis://10.0.0.5", "redis://10.0.0.5:6379"),
            ("redis://:secret@h:7000", "redis://:***@h:7000"),
            ("nats://user:pw@h:1", "nats://user:***@h:1"),
            ("nats://token@h:1", "nats://token@h:1"),
            ("nats://[::1]:4222", "nats://[::1]:4222"),
            ("redis://[::1]", "redis://[::1]:6379"),
        ] {
            let u = parse_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(u.to_string(), want, "{text}");
        }
        let u = parse_url("redis://:secret@h:7000").expect("valid");
        assert_eq!(u.full(), "redis://:secret@h:7000", "credentials kept");
        for (text, why) in [
            ("127.0.0.1:4222", "not a URL"),
            ("http://h:1", "scheme must be"),
            ("tls://h:1", "TLS"),
            ("rediss://h:1", "TLS"),
            ("redis://h:1/2", "database number"),
            ("nats://h:1?x=1", "path or query"),
            ("nats://:1", "host is missing"),
            ("nats://h:0", "port must be"),
            ("nats://h:99999", "port must be"),
            ("nats://h:x", "port must be"),
            ("nats://h\r\n:1", "control character"),
            ("nats://h h:1", "space"),
            ("nats://@h:1", "empty user"),
            ("nats://[::1", "unclosed"),
            ("nats://h%2f:1", "characters"),
        ] {
            let e = parse_url(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn settings() {
        assert_eq!(validate(Given::default()), Ok(None), "alone");
        let s = validate(given(&["nats://a:1", "nats://b:2"]))
            .expect("valid")
            .expect("some");
        assert_eq!(s.kind, BrokerKind::Nats);
        assert_eq!(s.subject(), "corepin.publish");
        assert!(!s.node.is_empty());
        assert_eq!(s.brokers_text(), "nats://a:1, nats://b:2");
        let mut g = given(&["redis://r:1"]);
        g.prefix = Some("prod.eu-1".into());
        g.node = Some(("--node".into(), "web-3".into()));
        let s = validate(g).expect("valid").expect("some");
        assert_eq!((s.prefix.as_str(), s.node.as_str()), ("prod.eu-1", "web-3"));
        assert_eq!(s.subject(), "prod.eu-1.publish");

        let no_broker = Given {
            node: Some(("--node".into(), "n".into())),
            ..Given::default()
        };
        let prefix_only = Given {
            prefix: Some("p".into()),
            ..Given::default()
        };
        let mut bad_prefix = given(&["nats://a:1"]);
        bad_prefix.prefix = Some("a.*".into());
        let mut dotted = given(&["nats://a:1"]);
        dotted.prefix = Some("a..b".into());
        let mut long_node = given(&["nats://a:1"]);
        long_node.node = Some(("cluster.node".into(), "x".repeat(65)));
        let mut crlf_node = given(&["nats://a:1"]);
        crlf_node.node = Some(("--node".into(), "a\r\nb".into()));
        for (g, why) in [
            (given(&["nats://a:1", "redis://b:2"]), "one kind"),
            (
                given(&["redis://a:1", "redis://b:2"]),
                "one redis:// server",
            ),
            (given(&["nats://a:1", "nats://a:1"]), "given twice"),
            (given(&["nats://a:1/x"]), "--cluster: 'nats://a:1/x'"),
            (no_broker, "--node: a node name needs a broker"),
            (prefix_only, "cluster.prefix: a prefix needs a broker"),
            (bad_prefix, "cluster.prefix: 'a.*' may hold only"),
            (dotted, "must not start or end"),
            (long_node, "cluster.node: "),
            (crlf_node, "--node: 'a\\r\\nb'"),
        ] {
            let e = validate(g).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn default_node_is_a_valid_name() {
        assert!(check_name("node", &default_node()).is_ok());
    }
}
