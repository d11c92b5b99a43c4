//! Routes: Pushpin's routes-file syntax parsed into typed rules, and the
//! decision `(request facts) -> route` made exactly as Pushpin makes it
//! (its `DomainMap`), with the path rewrite. Pure policy: no sockets; the
//! only IO is reading a `sig_key=file:` key while a line is parsed.
//!
//! Parsing has two stages. [`parse_line_in`] reads everything Pushpin's
//! routes parser accepts into typed fields with Pushpin's meaning;
//! [`Route::unsupported`] then names what corepin cannot do yet, so such a
//! line is refused by name instead of being half-served. [`Routes::parse`]
//! runs both and the whole-file checks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::heads::{BackendRequest, ForwardPolicy, Purpose};
use crate::codec::http1::RequestHead;
use crate::codec::uri::normalize_path;

/// Which protocol a route condition accepts (`proto=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Any,
    Http,
    Ws,
}

/// Where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in test target (GRIP.md §5), answered locally.
    Test,
    /// An HTTP backend at `host:port`.
    Backend(Backend),
}

/// A `zhttp/SPEC` or `zhttpreq/SPEC` target: Pushpin speaks ZeroMQ to it.
/// Parsed so that it can be refused by name; never served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZhttpTarget {
    pub spec: String,
    /// `zhttpreq/`: the request-only variant.
    pub req: bool,
}

/// A target as written: one corepin can serve, or a zhttp one.
enum Parsed {
    Target(Target),
    Zhttp(ZhttpTarget),
}

/// Route-level settings that shape the request sent to every target of a
/// route, shared by its targets so that `write_request_head` finds them
/// on the target it is handed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// `as_host=`: the Host sent upstream (a target's `host=` wins).
    pub as_host: Option<String>,
    /// `header=NAME:VALUE`, in file order: the client's field of that name
    /// is replaced by this value, or removed when the value is empty.
    pub headers: Vec<HeaderEdit>,
    /// `orig_headers`: a copy of every client field, its name prefixed
    /// with [`ORIG_MARK`], goes upstream too; without it, client fields
    /// that carry the mark are dropped.
    pub orig_headers: bool,
    /// False with `no_grip`: no `Grip-Sig`/`Grip-Feature` upstream and the
    /// backend's answer is relayed as is, GRIP headers included.
    pub grip: bool,
}

pub use crate::codec::heads::{HeaderEdit, ORIG_MARK};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `host:port` (`[v6]:port` for an IPv6 address) as written; resolved
    /// when connecting.
    pub addr: String,
    /// WebSocket clients are converted to WebSocket-over-HTTP requests.
    pub over_http: bool,
    /// `host=`: the Host header sent to this target.
    pub host: Option<String>,
    /// `sub=CHANNEL` (repeatable): WebSocket connections to this target
    /// are subscribed to these channels (the route's prefix applies).
    pub sub: Vec<String>,
    /// `ssl`: TLS to the target.
    pub ssl: bool,
    /// `insecure`: with `ssl`, the certificate is not verified.
    pub insecure: bool,
    /// `trust_connect_host`: with `ssl`, the certificate is checked
    /// against (and SNI names) the host of `addr`, the address connected
    /// to, instead of `host=` (Pushpin: instead of the request's Host).
    pub trust_connect_host: bool,
    /// `untrusted`: the outbound address policy applies to this target
    /// and to the links its responses point to: no connection to a
    /// loopback, private or link-local address (`upstream::denied`), as
    /// Pushpin's connection manager refuses them for untrusted targets.
    pub untrusted: bool,
    /// `one_event`: WebSocket-over-HTTP requests carry one event each.
    pub one_event: bool,
    /// `ipc_file_mode=`: only meaningful for zhttp targets.
    pub ipc_file_mode: Option<u32>,
    /// The route's request edits.
    pub edits: Arc<RequestEdits>,
}

impl Backend {
    /// The name a TLS connection to this target is verified against (and
    /// sends as SNI) instead of the host of `addr`: `host=`, unless
    /// `trust_connect_host` asks for the address's own host.
    pub fn tls_name(&self) -> Option<&str> {
        if self.trust_connect_host {
            None
        } else {
            self.host.as_deref()
        }
    }

    /// The Host to send upstream instead of the client's, if any: the
    /// target's `host=`, else the route's `as_host=`.
    pub fn send_host(&self) -> Option<&str> {
        self.host.as_deref().or(self.edits.as_host.as_deref())
    }

    /// The head of a request to this target for a client's request
    /// (`path` after the route's rewrite), shaped by this target and its
    /// route's edits; `codec::heads` encodes it.
    pub fn request<'a>(
        &'a self,
        client: &'a RequestHead,
        purpose: Purpose<'a>,
        path: &'a str,
        peer_ip: &'a str,
        forwarding: ForwardPolicy,
        grip: Option<Option<&'a str>>,
    ) -> BackendRequest<'a> {
        BackendRequest {
            client,
            purpose,
            path,
            addr: &self.addr,
            send_host: self.send_host(),
            over_http: self.over_http,
            edits: &self.edits.headers,
            orig_headers: self.edits.orig_headers,
            peer_ip,
            forwarding,
            grip,
            grip_last: &[],
            connection_id: None,
        }
    }
}

/// JSON-P settings (`jsonp_mode`, `jsonp_cb`, `jsonp_body`, `jsonp_defcb`,
/// `jsonp_defmethod`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jsonp {
    /// `basic` or `extended` (Pushpin's default).
    pub basic: bool,
    pub callback_param: Option<String>,
    pub body_param: Option<String>,
    pub default_callback: Option<String>,
    pub default_method: Option<String>,
}

/// One routes line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None` for `*`; otherwise the host name, in lower case.
    pub host: Option<String>,
    pub proto: Proto,
    /// `ssl=yes|no`: a condition on the client connection's TLS.
    pub ssl: Option<bool>,
    pub path_beg: Option<String>,
    /// `id=`: the route's name in logs.
    pub id: Option<String>,
    /// The Grip-Sig key, decoded once when the line is parsed.
    pub sig_key: Option<Vec<u8>>,
    pub sig_iss: Option<String>,
    /// Prefix added to channel names of this route's subscriptions.
    pub prefix: Option<String>,
    /// `path_rem=N`: bytes removed from the start of the path.
    pub path_rem: usize,
    /// `replace_beg=`: replaces the matched `path_beg` (or, without one,
    /// is put in front of the path).
    pub replace_beg: Option<String>,
    /// `debug`: informative error answers.
    pub debug: bool,
    /// `aco`: automatic cross-origin (CORS) and JSON-P.
    pub aco: bool,
    pub jsonp: Option<Jsonp>,
    /// `session`: in Pushpin, session detection and storage through its
    /// optional inspect and state services; corepin has neither, so it
    /// changes nothing and start-up says so ([`Routes::warnings`]).
    pub session: bool,
    /// `sockjs=PATH` and `sockjs_as_path=PATH`.
    pub sockjs: Option<String>,
    pub sockjs_as_path: Option<String>,
    /// `log_level=N`: the most verbose level logged for requests on this
    /// route, in place of the process's level (Pushpin's numbers: 0
    /// error, 1 warn, 2 info, 3 and up debug). corepin applies it to the
    /// access-log line (an info line): logged when N >= 2.
    pub log_level: Option<u32>,
    /// What the request upstream looks like (shared with the targets).
    pub edits: Arc<RequestEdits>,
    /// Tried in order: later ones are failovers.
    pub targets: Vec<Target>,
    /// zhttp targets (refused: corepin does not speak zhttp).
    pub zhttp: Vec<ZhttpTarget>,
    /// The line as written, for logs and `check`.
    pub line: String,
}

/// A routes-line error: what was wrong, and in which token.
pub use crate::codec::Invalid as RouteError;

fn err<T>(msg: impl Into<String>) -> Result<T, RouteError> {
    Err(RouteError(msg.into()))
}

/// Longest routes line read (Pushpin has no limit; a line this long is a
/// mistake, not a route).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest `header=` value.
const MAX_HEADER_VALUE: usize = 8 * 1024;

// ---------------------------------------------------------------------
// The line tokenizer: Pushpin's `RoutesFile::parseLine`, rule for rule.

/// One space-separated section: its initial value and `,name[=value]`
/// properties (`None` value: written without `=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub value: String,
    pub props: Vec<(String, Option<String>)>,
}

/// Splits a line as Pushpin does. Sections are separated by spaces (a tab
/// is an ordinary character to Pushpin: corepin refuses it); outside
/// double quotes a `#` ends the line; inside them `\\` and `\"` are the
/// only escapes; quoted text joins the text around it. An initial value
/// holding `=` is read as a property of an empty value. A blank or
/// comment line gives no sections.
pub fn tokenize(line: &str) -> Result<Vec<Section>, RouteError> {
    #[derive(PartialEq)]
    enum State {
        Separator,
        Initial,
        Prop,
    }
    let chars: Vec<char> = line.chars().collect();
    let mut out: Vec<Section> = Vec::new();
    let mut state = State::Separator;
    let mut i = 0;
    let mut start = 0;
    // The text of the current part (quotes decoded), and where its first
    // `=` is, quoted or not (Pushpin looks at the decoded text).
    let mut part = String::new();
    let mut eq_at: Option<usize> = None;
    loop {
        if state == State::Separator {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            if i >= chars.len() || chars[i] == '#' {
                return Ok(out);
            }
            state = State::Initial;
            start = i;
            part.clear();
            eq_at = None;
            continue;
        }
        let c = chars.get(i).copied();
        match c {
            Some('"') => {
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err("unterminated quoted section"),
                        Some('\\') => {
                            i += 1;
                            match chars.get(i) {
                                None => return err("unterminated escape sequence"),
                                Some('\\') => part.push('\\'),
                                Some('"') => part.push('"'),
                                Some(other) => {
                                    return err(format!(
                                        "unexpected escape character '{}' (only \\\\ and \\\" are escapes)",
                                        other.escape_debug()
                                    ))
                                }
                            }
                        }
                        Some('"') => break,
                        Some(&ch) => {
                            if ch == '=' && eq_at.is_none() {
                                eq_at = Some(part.len());
                            }
                            part.push(ch);
                        }
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            Some('\t') => {
                return err("a tab is not a separator in Pushpin's routes syntax (Pushpin would read it as part of a value and skip the line): use spaces")
            }
            Some(ch) if ch != ',' && ch != ' ' && ch != '#' => {
                if ch == '=' && eq_at.is_none() {
                    eq_at = Some(part.len());
                }
                part.push(ch);
                i += 1;
                continue;
            }
            _ => {}
        }
        // A separator, a comma, `#` or the end: the part is complete.
        if state == State::Initial {
            if eq_at.is_some() {
                // `name=value` where a value was expected: an empty
                // initial value, and the text is read again as a prop.
                out.push(Section {
                    value: String::new(),
                    props: Vec::new(),
                });
                i = start;
                state = State::Prop;
                part.clear();
                eq_at = None;
                continue;
            }
            out.push(Section {
                value: std::mem::take(&mut part),
                props: Vec::new(),
            });
        } else {
            if part.is_empty() {
                return err("expecting a property after ','");
            }
            let (name, value) = match eq_at {
                Some(n) => (part[..n].to_string(), Some(part[n + 1..].to_string())),
                None => (part.clone(), None),
            };
            if name.is_empty() {
                return err(format!("empty property name in '{part}'"));
            }
            if let Some(last) = out.last_mut() {
                last.props.push((name, value));
            }
            part.clear();
        }
        eq_at = None;
        if c == Some(',') {
            i += 1;
            state = State::Prop;
            start = i;
        } else {
            state = State::Separator;
        }
    }
}

// ---------------------------------------------------------------------
// Sections to a typed route.

/// Properties still to be read, refusing repeats of single-valued ones.
struct Props {
    props: Vec<(String, Option<String>)>,
    what: &'static str,
}

impl Props {
    /// Takes the property `name`; `Err` when it is given twice.
    fn take(&mut self, name: &str) -> Result<Option<Option<String>>, RouteError> {
        let mut found = None;
        let mut i = 0;
        while i < self.props.len() {
            if self.props[i].0 == name {
                let (_, v) = self.props.remove(i);
                if found.is_some() {
                    return err(format!(
                        "{} property '{name}' is given twice (Pushpin would use the last one)",
                        self.what
                    ));
                }
                found = Some(v);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    /// Every value of a repeatable property.
    fn take_all(&mut self, name: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        self.props.retain(|(n, v)| {
            if n == name {
                out.push(v.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// A flag: present or not; a value is refused (Pushpin ignores it, so
    /// `debug=false` would turn debug on there).
    fn flag(&mut self, name: &str) -> Result<bool, RouteError> {
        match self.take(name)? {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => err(format!(
                "'{name}' takes no value (got '{name}={v}'; Pushpin would read it as plain '{name}')"
            )),
        }
    }

    /// A property that needs a non-empty value.
    fn value(&mut self, name: &str) -> Result<Option<String>, RouteError> {
        match self.take(name)? {
            None => Ok(None),
            Some(Some(v)) if !v.is_empty() => Ok(Some(v)),
            Some(_) => err(format!("'{name}' needs a value ({name}=...)")),
        }
    }

    /// Whatever is left is unknown: Pushpin ignores it, corepin refuses.
    fn finish(self) -> Result<(), RouteError> {
        match self.props.first() {
            Some((name, _)) => err(format!(
                "unknown {} property '{name}' (Pushpin ignores unknown properties; corepin refuses them so that a typo is not silently ignored)",
                self.what
            )),
            None => Ok(()),
        }
    }
}

/// Refuses text that must not reach a request head.
fn plain(what: &str, v: &str) -> Result<(), RouteError> {
    if v.chars().any(|c| c.is_control()) {
        return err(format!(
            "{what} '{}' holds a control character",
            v.escape_debug()
        ));
    }
    Ok(())
}

/// A Host value: `name[:port]`, `[v6][:port]`, no space or control.
fn host_value(what: &str, v: &str) -> Result<(), RouteError> {
    plain(what, v)?;
    let ok = v.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']' | b'~')
    });
    if !ok {
        return err(format!("{what} '{v}' is not a host name[:port]"));
    }
    Ok(())
}

/// RFC 9110 field-name characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Fields a `header=` may not set: corepin frames, forwards or signs them
/// itself (and Pushpin drops or rewrites most of them after `header=`).
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "expect",
    "host",
    "accept-encoding",
    "content-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-real-ip",
    "forwarded",
    "via",
    "connection-id",
    "pushpin-route",
];

/// `header=NAME:VALUE` (value left-trimmed of spaces, as Pushpin does).
fn parse_header(v: &str) -> Result<HeaderEdit, RouteError> {
    let Some((name, value)) = v.split_once(':').filter(|(n, _)| !n.is_empty()) else {
        return err(format!("header '{v}' is not NAME:VALUE"));
    };
    let value = value.trim_start_matches(' ');
    if !is_token(name) {
        return err(format!("header name '{name}' is not a field name"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str())
        || lower.starts_with("grip-")
        || lower.starts_with("meta-")
        || lower.starts_with("sec-websocket-")
        || lower.starts_with(ORIG_MARK)
    {
        return err(format!(
            "header '{name}' is set by corepin itself (use as_host= or the target's host= for Host)"
        ));
    }
    if value.len() > MAX_HEADER_VALUE {
        return err(format!(
            "header '{name}' value is longer than {MAX_HEADER_VALUE} bytes"
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return err(format!("header '{name}' value holds a control character"));
    }
    let cgi_name = lower.replace(['_', '.'], "-");
    Ok(HeaderEdit {
        name: name.to_string(),
        value: value.to_string(),
        cgi_name,
    })
}

/// Reads a signing key as Pushpin's `fromConfigString` does: `file:PATH`
/// (relative to `base`) holds a hex-encoded secret, or a PEM private key
/// (EC P-256: ES256, RSA: RS256) when it starts `-----BEGIN` (Pushpin
/// 1.41), `base64:TEXT` is decoded, anything else is the secret's bytes.
pub fn key_from_config(text: &str, base: &Path) -> Result<Vec<u8>, String> {
    let Some(file) = text.strip_prefix("file:") else {
        return crate::jwt::key_bytes(text);
    };
    let path = base.join(file);
    let data = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if crate::jwt::is_pem(&data) {
        // An EC (P-256) key signs ES256, an RSA key RS256, as in Pushpin.
        crate::jwt::check_signing_key(&data).map_err(|e| format!("{} {e}", path.display()))?;
        return Ok(data);
    }
    let hex = std::str::from_utf8(&data).map(str::trim).unwrap_or("\u{0}");
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format!(
            "{} is not a hex-encoded secret (Pushpin 1.41 reads a key file as hex)",
            path.display()
        ));
    }
    Ok((0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect())
}

fn parse_target(s: Section, edits: &Arc<RequestEdits>) -> Result<Parsed, RouteError> {
    let val = s.value;
    let mut props = Props {
        props: s.props,
        what: "target",
    };
    let kind = if val == "test" {
        Parsed::Target(Target::Test)
    } else if let Some(spec) = val.strip_prefix("zhttp/") {
        Parsed::Zhttp(ZhttpTarget {
            spec: spec.to_string(),
            req: false,
        })
    } else if let Some(spec) = val.strip_prefix("zhttpreq/") {
        Parsed::Zhttp(ZhttpTarget {
            spec: spec.to_string(),
            req: true,
        })
    } else {
        // host:port, or [v6]:port (Pushpin 1.41).
        let (host, port) = match val.strip_prefix('[') {
            Some(rest) => match rest.split_once("]:") {
                Some((h, p)) => (h, p),
                None => return err(format!("target '{val}' is not host:port or 'test'")),
            },
            None => match val.split_once(':') {
                Some((h, p)) => (h, p),
                None => return err(format!("target '{val}' is not host:port or 'test'")),
            },
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) || !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return err(format!("target '{val}': port '{port}' is not 1-65535"));
        }
        if host.is_empty() {
            return err(format!("target '{val}' has no host"));
        }
        host_value("target", host)?;
        Parsed::Target(Target::Backend(Backend {
            addr: val.clone(),
            over_http: false,
            host: None,
            sub: Vec::new(),
            ssl: false,
            insecure: false,
            trust_connect_host: false,
            untrusted: false,
            one_event: false,
            ipc_file_mode: None,
            edits: edits.clone(),
        }))
    };
    let ssl = props.flag("ssl")?;
    let untrusted = props.flag("untrusted")?;
    let trust_connect_host = props.flag("trust_connect_host")?;
    let insecure = props.flag("insecure")?;
    let host = props.value("host")?;
    if let Some(h) = &host {
        host_value("host", h)?;
    }
    let mut sub = Vec::new();
    for v in props.take_all("sub") {
        match v {
            Some(c) if !c.is_empty() => {
                plain("sub", &c)?;
                sub.push(c);
            }
            _ => {
                return err(
                    "'sub' needs a channel (sub=CHANNEL): a bare 'sub' subscribes to nothing in Pushpin",
                )
            }
        }
    }
    let over_http = props.flag("over_http")?;
    let one_event = props.flag("one_event")?;
    if insecure && !ssl {
        return err(format!("target '{val}': 'insecure' needs 'ssl'"));
    }
    if one_event && !over_http {
        return err(format!(
            "target '{val}': 'one_event' needs 'over_http' (it shapes WebSocket-over-HTTP requests)"
        ));
    }
    if trust_connect_host && !ssl {
        return err(format!("target '{val}': 'trust_connect_host' needs 'ssl'"));
    }
    let ipc_file_mode = match props.value("ipc_file_mode")? {
        Some(m) => Some(
            u32::from_str_radix(&m, 8)
                .map_err(|_| RouteError(format!("ipc_file_mode '{m}' is not an octal mode")))?,
        ),
        None => None,
    };
    props.finish()?;
    match kind {
        Parsed::Target(Target::Backend(mut b)) => {
            b.ssl = ssl;
            b.untrusted = untrusted;
            b.trust_connect_host = trust_connect_host;
            b.insecure = insecure;
            b.host = host;
            b.sub = sub;
            b.over_http = over_http;
            b.one_event = one_event;
            b.ipc_file_mode = ipc_file_mode;
            Ok(Parsed::Target(Target::Backend(b)))
        }
        Parsed::Target(Target::Test) => {
            let any = ssl
                || untrusted
                || trust_connect_host
                || insecure
                || host.is_some()
                || !sub.is_empty()
                || over_http
                || one_event
                || ipc_file_mode.is_some();
            if any {
                return err("target 'test' takes no properties");
            }
            Ok(Parsed::Target(Target::Test))
        }
        // Its properties were read (and checked) above; the target itself
        // is refused by name in `Route::unsupported`.
        Parsed::Zhttp(z) => Ok(Parsed::Zhttp(z)),
    }
}

/// Parses one routes line (keys in `sig_key=file:` relative to `base`)
/// into everything Pushpin's parser accepts, without asking whether
/// corepin supports it (see [`Route::unsupported`]). Blank and comment
/// lines give `Ok(None)`.
pub fn parse_line_in(line: &str, base: &Path) -> Result<Option<Route>, RouteError> {
    if line.len() > MAX_LINE {
        return err(format!("line longer than {MAX_LINE} bytes"));
    }
    if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
        return err(format!(
            "line holds the control character {}",
            c.escape_debug()
        ));
    }
    let mut sections = tokenize(line)?.into_iter();
    let Some(cond) = sections.next() else {
        return Ok(None);
    };
    let host = match cond.value.as_str() {
        "*" => None,
        "" => {
            return err(
                "the condition has no host: write '*' for any host, or a host name (Pushpin reaches such a line only through the Pushpin-Route header, which corepin does not support)",
            )
        }
        h => {
            host_value("route host", h)?;
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                return err(format!(
                    "route host '{h}' has capitals: request hosts are matched in lower case, so Pushpin never matches this line; write '{}'",
                    h.to_ascii_lowercase()
                ));
            }
            let v6 = h.parse::<std::net::Ipv6Addr>().is_ok();
            if h.contains(':') && !v6 || h.contains('[') || h.contains(']') {
                return err(format!(
                    "route host '{h}' carries a port or brackets: requests are matched on the host name alone, so Pushpin never matches this line"
                ));
            }
            Some(h.to_string())
        }
    };
    let mut props = Props {
        props: cond.props,
        what: "route",
    };
    let proto = match props.take("proto")? {
        None => Proto::Any,
        Some(Some(v)) if v == "http" => Proto::Http,
        Some(Some(v)) if v == "ws" => Proto::Ws,
        Some(v) => {
            return err(format!(
                "proto '{}' is not http or ws",
                v.unwrap_or_default()
            ))
        }
    };
    let ssl = match props.take("ssl")? {
        None => None,
        Some(Some(v)) if v == "yes" => Some(true),
        Some(Some(v)) if v == "no" => Some(false),
        Some(v) => return err(format!("ssl '{}' is not yes or no", v.unwrap_or_default())),
    };
    let id = props.value("id")?;
    if let Some(i) = &id {
        plain("id", i)?;
        if i.contains(' ') {
            return err(format!("id '{i}' holds a space"));
        }
    }
    let path_beg = match props.value("path_beg")? {
        Some(v) => {
            if !v.starts_with('/') {
                return err(format!("path_beg '{v}' must start with '/'"));
            }
            // Requests are matched in normal form: a prefix that is not
            // in it could never match (or would match differently).
            match normalize_path(v.as_bytes()) {
                Ok(n) if *n == *v.as_bytes() => {}
                Ok(n) => {
                    return err(format!(
                        "path_beg '{v}' is not in normal form (requests are matched as '{}')",
                        String::from_utf8_lossy(&n)
                    ))
                }
                Err(e) => return err(format!("path_beg '{v}': {e}")),
            }
            Some(v)
        }
        None => None,
    };
    let sig_iss = props.value("sig_iss")?;
    if let Some(i) = &sig_iss {
        plain("sig_iss", i)?;
    }
    let sig_key = match props.value("sig_key")? {
        Some(k) => {
            Some(key_from_config(&k, base).map_err(|e| RouteError(format!("sig_key: {e}")))?)
        }
        None => None,
    };
    let prefix = props.value("prefix")?;
    if let Some(p) = &prefix {
        plain("prefix", p)?;
    }
    let orig_headers = props.flag("orig_headers")?;
    let as_host = props.value("as_host")?;
    if let Some(h) = &as_host {
        host_value("as_host", h)?;
    }
    let path_rem = match props.value("path_rem")? {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| RouteError(format!("path_rem '{v}' is not a number")))?,
        None => 0,
    };
    let replace_beg = match props.take("replace_beg")? {
        None => None,
        Some(v) => {
            let v = v.unwrap_or_default();
            if !v.is_empty() && !v.starts_with('/') {
                return err(format!(
                    "replace_beg '{v}' must start with '/' (or be empty)"
                ));
            }
            plain("replace_beg", &v)?;
            if v.contains(' ') || v.contains('?') || v.contains('#') {
                return err(format!("replace_beg '{v}' is not a path"));
            }
            Some(v)
        }
    };
    if replace_beg.is_some() && path_rem > 0 {
        return err(
            "path_rem has no effect beside replace_beg (which removes path_beg): give one of them",
        );
    }
    let debug = props.flag("debug")?;
    let aco = props.flag("aco")?;
    let jsonp_mode = props.value("jsonp_mode")?;
    let basic = match jsonp_mode.as_deref() {
        None | Some("extended") => false,
        Some("basic") => true,
        Some(m) => return err(format!("jsonp_mode '{m}' is not basic or extended")),
    };
    let jsonp = Jsonp {
        basic,
        callback_param: props.value("jsonp_cb")?,
        body_param: props.value("jsonp_body")?,
        default_callback: props.value("jsonp_defcb")?,
        default_method: props.value("jsonp_defmethod")?,
    };
    let jsonp = (jsonp_mode.is_some() || jsonp != Jsonp::default()).then_some(jsonp);
    if let Some(j) = &jsonp {
        if !aco {
            return err(
                "jsonp_* options need aco on the same route (Pushpin answers JSON-P only with automatic cross-origin)",
            );
        }
        if let Some(cb) = &j.callback_param {
            if cb
                .bytes()
                .any(|b| !b.is_ascii_graphic() || b"&=%#+".contains(&b))
            {
                return err(format!("jsonp_cb '{cb}' is not a query parameter name"));
            }
        }
        if let Some(b) = &j.body_param {
            if b.is_empty()
                || b.bytes()
                    .any(|b| !b.is_ascii_graphic() || b"&=%#+".contains(&b))
            {
                return err(format!("jsonp_body '{b}' is not a query parameter name"));
            }
        }
        if let Some(cb) = &j.default_callback {
            if !crate::codec::jsonp::valid_callback(cb.as_bytes()) {
                return err(format!(
                    "jsonp_defcb '{cb}' is not a JavaScript name (identifiers joined by dots, at most {} bytes)",
                    crate::codec::jsonp::MAX_CALLBACK
                ));
            }
            if j.body_param.is_none() {
                return err(
                    "jsonp_defcb needs jsonp_body on the same route (Pushpin uses the default callback only for requests carrying the body parameter)",
                );
            }
        }
        if let Some(m) = &j.default_method {
            let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if !m.bytes().all(tchar) {
                return err(format!("jsonp_defmethod '{m}' is not an HTTP method"));
            }
        }
    }
    let session = props.flag("session")?;
    let sockjs = props.value("sockjs")?;
    let sockjs_as_path = props.value("sockjs_as_path")?;
    for (name, v) in [("sockjs", &sockjs), ("sockjs_as_path", &sockjs_as_path)] {
        if let Some(v) = v {
            if !v.starts_with('/')
                || v.bytes()
                    .any(|b| !b.is_ascii_graphic() || b"?#".contains(&b))
            {
                return err(format!(
                    "{name} '{v}' is not a path (it starts with / and has no space, control character, ? or #)"
                ));
            }
        }
    }
    if sockjs_as_path.is_some() && sockjs.is_none() {
        return err("sockjs_as_path needs sockjs on the same route (the SockJS prefix)");
    }
    let mut headers = Vec::new();
    for v in props.take_all("header") {
        headers.push(parse_header(&v.unwrap_or_default())?);
    }
    let grip = !props.flag("no_grip")?;
    let log_level = match props.value("log_level")? {
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| RouteError(format!("log_level '{v}' is not a number (0-3)")))?,
        ),
        None => None,
    };
    props.finish()?;
    let edits = Arc::new(RequestEdits {
        as_host,
        headers,
        orig_headers,
        grip,
    });
    let mut targets = Vec::new();
    let mut zhttp = Vec::new();
    for s in sections {
        match parse_target(s, &edits)? {
            Parsed::Target(t) => targets.push(t),
            Parsed::Zhttp(z) => zhttp.push(z),
        }
    }
    if targets.is_empty() && zhttp.is_empty() {
        return err(
            "the route has no target (condition and at least one target, separated by spaces)",
        );
    }
    Ok(Some(Route {
        host,
        proto,
        ssl,
        path_beg,
        id,
        sig_key,
        sig_iss,
        prefix,
        path_rem,
        replace_beg,
        debug,
        aco,
        jsonp,
        session,
        sockjs,
        sockjs_as_path,
        log_level,
        edits,
        targets,
        zhttp,
        line: line.trim_matches(' ').to_string(),
    }))
}

/// Parses one routes line and refuses what corepin does not support yet
/// (`sig_key=file:` relative to the current directory, as Pushpin reads
/// `--route` lines).
pub fn parse_line(line: &str) -> Result<Option<Route>, RouteError> {
    let route = parse_line_in(line, Path::new("."))?;
    if let Some(why) = route.as_ref().and_then(Route::unsupported) {
        return Err(RouteError(why));
    }
    Ok(route)
}

fn not_yet(kind: &str, name: &str, why: &str) -> Option<String> {
    Some(format!("{kind} `{name}` is not supported yet: {why}"))
}

impl Route {
    /// Why corepin cannot serve this line yet, naming the option; `None`
    /// when it can.
    pub fn unsupported(&self) -> Option<String> {
        if let Some(z) = self.zhttp.first() {
            let name = if z.req { "zhttpreq/..." } else { "zhttp/..." };
            return Some(format!(
                "target `{name}` is not supported: corepin speaks HTTP to backends, not zhttp over ZeroMQ"
            ));
        }
        for t in &self.targets {
            match t {
                Target::Test => {}
                Target::Backend(b) => {
                    // `ssl`, `insecure`, `trust_connect_host` and
                    // `untrusted` are served (`upstream`, `tls`).
                    if b.ipc_file_mode.is_some() {
                        return Some(
                            "target property `ipc_file_mode` applies only to zhttp targets".into(),
                        );
                    }
                    if b.over_http && !self.edits.grip {
                        return not_yet(
                            "route option",
                            "no_grip",
                            "with an over_http target (WebSocket-over-HTTP is GRIP)",
                        );
                    }
                }
            }
        }
        None
    }

    /// Does this condition accept the request?
    fn is_match(&self, f: &Request<'_>) -> bool {
        (match self.proto {
            Proto::Any => true,
            Proto::Http => !f.ws,
            Proto::Ws => f.ws,
        }) && self.ssl.is_none_or(|s| s == f.https)
            && self
                .path_beg
                .as_deref()
                .is_none_or(|b| f.path.starts_with(b))
    }

    /// Pushpin's `isMoreSpecificMatch`: a `proto` condition beats none;
    /// then a longer `path_beg` wins; then an `ssl` condition beats none.
    /// (Not a total order: which of two routes wins can depend on their
    /// order in the file, exactly as in Pushpin.)
    fn more_specific(&self, best: &Route, f: &Request<'_>) -> bool {
        if !self.is_match(f) {
            return false;
        }
        match (best.proto == Proto::Any, self.proto == Proto::Any) {
            (true, false) => return true,
            (false, true) => return false,
            _ => {}
        }
        let len = |r: &Route| r.path_beg.as_ref().map_or(0, String::len);
        if len(self) > len(best) {
            return true;
        }
        best.ssl.is_none() && self.ssl.is_some()
    }

    /// The condition Pushpin compares for duplicates (same host group).
    fn same_condition(&self, o: &Route) -> bool {
        self.proto == o.proto && self.ssl == o.ssl && self.path_beg == o.path_beg
    }

    /// The channels a WebSocket connected to the target at `addr` is
    /// subscribed to from the start: its `sub=` channels, with the route's
    /// prefix.
    pub fn implicit_channels(&self, addr: &str) -> Vec<String> {
        let prefix = self.prefix.as_deref().unwrap_or("");
        self.targets
            .iter()
            .find_map(|t| match t {
                Target::Backend(b) if b.addr == addr => Some(&b.sub),
                _ => None,
            })
            .map_or_else(Vec::new, |subs| {
                subs.iter().map(|c| format!("{prefix}{c}")).collect()
            })
    }

    /// True when requests on this route get GRIP processing (no `no_grip`).
    pub fn grip(&self) -> bool {
        self.edits.grip
    }

    /// The path (and query) sent to the backend for a client `target` (in
    /// normal form, see `codec::uri`): Pushpin's rewrite of the path alone
    /// (`replace_beg` removes `path_beg` and puts its value in front;
    /// `path_rem` removes that many bytes), then put back in normal form.
    /// Where Pushpin's cut leaves no leading `/` (it then answers 502),
    /// corepin adds one.
    pub fn rewrite(&self, target: &str) -> String {
        self.rewritten(target).into_owned()
    }

    /// [`Route::rewrite`], borrowing `target` when the route changes
    /// nothing (no allocation per proxied request on such routes).
    pub fn rewritten<'t>(&self, target: &'t str) -> Cow<'t, str> {
        let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
        let (remove, prepend) = match &self.replace_beg {
            Some(rep) => (self.path_beg.as_ref().map_or(0, String::len), rep.as_str()),
            None => (self.path_rem, ""),
        };
        if remove == 0 && prepend.is_empty() {
            return Cow::Borrowed(target);
        }
        let mut cut = remove.min(path.len());
        while !path.is_char_boundary(cut) {
            cut += 1;
        }
        let rest = &path[cut..];
        let mut out = String::with_capacity(prepend.len() + rest.len() + 1);
        out.push_str(prepend);
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Cow::Owned(match normalize_path(out.as_bytes()) {
            Ok(Cow::Owned(p)) => format!("{}{query}", String::from_utf8_lossy(&p)),
            _ => format!("{out}{query}"),
        })
    }
}

/// What route selection looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The Host without its port (`None`: no Host; Pushpin then uses
    /// `localhost`).
    pub host: Option<&'a str>,
    /// The path in normal form, without the query.
    pub path: &'a str,
    /// A WebSocket upgrade.
    pub ws: bool,
    /// The client connection is TLS (or counts as such).
    pub https: bool,
}

/// A routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
    /// Indices into `routes` of the routes naming each (lower-case) host.
    by_host: HashMap<String, Vec<usize>>,
    /// Indices of the `*` routes.
    any_host: Vec<usize>,
}

impl Routes {
    /// Parses and checks every line (keys relative to the current
    /// directory); errors name the line number (1-based).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Routes, RouteError> {
        Self::parse_in(lines, Path::new("."))
    }

    /// As [`Routes::parse`], with `sig_key=file:` paths relative to `base`.
    pub fn parse_in<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        base: &Path,
    ) -> Result<Routes, RouteError> {
        Self::parse_indexed_in(lines, base)
            .map_err(|(i, e)| RouteError(format!("line {}: {e}", i + 1)))
    }

    /// Parses and checks every line; an error comes with the index
    /// (0-based) of the line it is about, for the caller to name.
    pub fn parse_indexed<'a>(
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Routes, (usize, RouteError)> {
        Self::parse_indexed_in(lines, Path::new("."))
    }

    /// As [`Routes::parse_indexed`], with `sig_key=file:` relative to `base`.
    pub fn parse_indexed_in<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        base: &Path,
    ) -> Result<Routes, (usize, RouteError)> {
        let mut parsed = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            match parse_line_in(line, base) {
                Ok(Some(r)) => {
                    if let Some(why) = r.unsupported() {
                        return Err((i, RouteError(why)));
                    }
                    parsed.push((i, r));
                }
                Ok(None) => {}
                Err(e) => return Err((i, e)),
            }
        }
        Self::build(parsed)
    }

    /// Builds a table from lines already parsed with [`parse_line_in`]
    /// (with their 0-based line indices), without the support check: what
    /// Pushpin would load. Refuses what Pushpin skips with a warning: a
    /// second line with the same condition for the same host, and an
    /// explicit id given twice.
    pub fn build(parsed: Vec<(usize, Route)>) -> Result<Routes, (usize, RouteError)> {
        let mut t = Routes::default();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut lines = Vec::new();
        for (i, r) in parsed {
            let group = match &r.host {
                Some(h) => t.by_host.get(h).map(Vec::as_slice).unwrap_or(&[]),
                None => t.any_host.as_slice(),
            };
            if let Some(&other) = group.iter().find(|&&o| t.routes[o].same_condition(&r)) {
                return Err((
                    i,
                    RouteError(format!(
                        "same condition as line {} (Pushpin would skip this line)",
                        lines[other] + 1
                    )),
                ));
            }
            if let Some(id) = &r.id {
                if let Some(first) = ids.insert(id.clone(), i) {
                    return Err((
                        i,
                        RouteError(format!("id '{id}' is already given on line {}", first + 1)),
                    ));
                }
            }
            let n = t.routes.len();
            match &r.host {
                Some(h) => t.by_host.entry(h.clone()).or_default().push(n),
                None => t.any_host.push(n),
            }
            t.routes.push(r);
            lines.push(i);
        }
        Ok(t)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// What start-up (and a routes reload) warns about: options Pushpin
    /// accepts that do nothing here, each named with why. `session`: in
    /// Pushpin 1.41 it only asks the optional inspect service
    /// (`proxy/inspect_spec`) for a session and stores the backend's
    /// `Grip-Session-*` rules in the optional state service
    /// (`handler/state_spec`); without them (Pushpin's default) it does
    /// nothing there either, and corepin has neither service.
    pub fn warnings(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.session)
            .map(|r| {
                format!(
                    "warning: route '{}': option `session` has no effect: Pushpin uses it only with its inspect and state services (inspect_spec, state_spec), which corepin does not have",
                    r.line
                )
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for a request, as Pushpin's `DomainMap::entry` picks it:
    /// when some route names the request's host, only those routes are
    /// considered (a `*` route is not a fallback for them); otherwise the
    /// `*` routes. Among those, the first match in file order, replaced by
    /// any later match that is more specific ([`Route::more_specific`]).
    pub fn select_for(&self, f: &Request<'_>) -> Option<&Route> {
        let host = f.host.unwrap_or("localhost");
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let group = match self.by_host.get(host) {
            Some(g) => g,
            None => &self.any_host,
        };
        let mut best: Option<&Route> = None;
        for &i in group {
            let r = &self.routes[i];
            let take = match best {
                None => r.is_match(f),
                Some(b) => r.more_specific(b, f),
            };
            if take {
                best = Some(r);
            }
        }
        best
    }

    /// [`Routes::select_for`] for a plaintext client connection.
    pub fn select(&self, host: Option<&str>, path: &str, ws: bool) -> Option<&Route> {
        self.select_tls(host, path, ws, false)
    }

    /// [`Routes::select_for`] for a client connection that came over TLS
    /// (`tls`) or not.
    pub fn select_tls(
        &self,
        host: Option<&str>,
        path: &str,
        ws: bool,
        tls: bool,
    ) -> Option<&Route> {
        self.select_for(&Request {
            host,
            path,
            ws,
            https: tls,
        })
    }

    /// The first TLS-to-backend (`ssl`) target, if any route has one.
    pub fn first_ssl_target(&self) -> Option<(&Route, &Backend)> {
        self.routes.iter().find_map(|r| {
            r.targets.iter().find_map(|t| match t {
                Target::Backend(b) if b.ssl => Some((r, b)),
                _ => None,
            })
        })
    }
}

/// How a WebSocket client is served, by its route's first target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMode {
    /// The built-in test target: subscribed to `?channel=`.
    Test,
    /// Frames relayed to and from a WebSocket backend.
    Passthrough,
    /// WebSocket-over-HTTP: events POSTed to the backend.
    OverHttp,
}

/// What to do with a request, decided from its head and the routes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch<'a> {
    /// Answer `status` with `reason` without reading the body.
    Refuse { status: u16, reason: &'static str },
    /// A WebSocket handshake that fails: answer and close (a 426 names
    /// the version corepin speaks).
    BadHandshake { status: u16, reason: &'static str },
    /// A WebSocket client, served in `mode`.
    WebSocket(&'a Route, WsMode),
    /// An HTTP request for the built-in test target.
    Test(&'a Route),
    /// An HTTP request for a backend: proxied, or held if its answer
    /// carries GRIP instructions.
    Proxy(&'a Route),
}

/// Routes one request: the route chosen as Pushpin chooses it, then the
/// checks every request passes before anything is sent anywhere, in this
/// order — no route (404); a client's own WebSocket events to an
/// `over_http` target (403, as Pushpin); a body over `max_body` (413, 0 is
/// no limit); a WebSocket handshake corepin cannot accept.
pub fn decide<'a>(
    routes: &'a Routes,
    head: &RequestHead,
    tls: bool,
    max_body: u64,
) -> Dispatch<'a> {
    let ws = is_websocket(head);
    decide_routed(
        routes.select_tls(head.host(), head.path(), ws, tls),
        head,
        ws,
        max_body,
    )
}

/// A WebSocket upgrade request (`Connection: upgrade`, `Upgrade: websocket`).
pub fn is_websocket(head: &RequestHead) -> bool {
    head.is_upgrade()
        && head
            .fields
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
}

/// [`decide`] once the route is chosen (`route`, for a request that
/// [`is_websocket`] or not): for a caller that also needs the route of a
/// request it refuses.
pub fn decide_routed<'a>(
    route: Option<&'a Route>,
    head: &RequestHead,
    ws: bool,
    max_body: u64,
) -> Dispatch<'a> {
    use crate::codec::http1::{self, BodyKind};
    const NO_ROUTE: Dispatch<'static> = Dispatch::Refuse {
        status: 404,
        reason: "no route for this request",
    };
    let Some(route) = route else {
        return NO_ROUTE;
    };
    let over_http = |t: &Target| matches!(t, Target::Backend(b) if b.over_http);
    // Only corepin speaks WebSocket-over-HTTP to an over_http target: a
    // client's own events would reach the backend signed, as a session's
    // (Pushpin answers the same 403).
    let carries_events = head.fields.iter().any(|(name, value)| {
        http1::cgi_name_is(name, "content-type")
            && http1::trim(value.split(|&b| b == b';').next().unwrap_or(b""))
                .eq_ignore_ascii_case(b"application/websocket-events")
    });
    if !ws && carries_events && route.targets.iter().any(over_http) {
        return Dispatch::Refuse {
            status: 403,
            reason: "client not allowed to send WebSocket events directly",
        };
    }
    if let BodyKind::Length(n) = head.body {
        if max_body > 0 && n > max_body {
            return Dispatch::Refuse {
                status: 413,
                reason: "request body too large",
            };
        }
    }
    if ws {
        if let Err((status, reason)) = crate::codec::wshandshake::check_handshake(head) {
            return Dispatch::BadHandshake { status, reason };
        }
    }
    match (route.targets.first(), ws) {
        (None, _) => NO_ROUTE,
        (Some(Target::Test), true) => Dispatch::WebSocket(route, WsMode::Test),
        (Some(t), true) if over_http(t) => Dispatch::WebSocket(route, WsMode::OverHttp),
        (Some(_), true) => Dispatch::WebSocket(route, WsMode::Passthrough),
        (Some(Target::Test), false) => Dispatch::Test(route),
        (Some(Target::Backend(_)), false) => Dispatch::Proxy(route),
    }
}

/// The directory `sig_key=file:` paths of a routes file are relative to.
pub fn base_dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_table() {
        use crate::codec::http1::{parse_request, HeadLimits};
        let routes = Routes::parse([
            "api.example test",
            "*,path_beg=/ws/ 127.0.0.1:9001",
            "*,path_beg=/events/ 127.0.0.1:9002,over_http",
            "*,path_beg=/mixed/ 127.0.0.1:9003 127.0.0.1:9004,over_http",
            "*,path_beg=/app/ 127.0.0.1:9005",
        ])
        .unwrap();
        let r = |i: usize| &routes.routes[i];
        const UP: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let no_route = Dispatch::Refuse {
            status: 404,
            reason: "no route for this request",
        };
        let forbidden = Dispatch::Refuse {
            status: 403,
            reason: "client not allowed to send WebSocket events directly",
        };
        let cases: Vec<(String, Dispatch)> = vec![
            ("GET / HTTP/1.1\r\nHost: api.example\r\n\r\n".into(), Dispatch::Test(r(0))),
            ("GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), Dispatch::Proxy(r(4))),
            ("GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n".into(), no_route),
            (
                format!("GET /ws?channel=c HTTP/1.1\r\nHost: api.example\r\n{UP}\r\n"),
                Dispatch::WebSocket(r(0), WsMode::Test),
            ),
            (
                format!("GET /ws/chat HTTP/1.1\r\nHost: a\r\n{UP}\r\n"),
                Dispatch::WebSocket(r(1), WsMode::Passthrough),
            ),
            (
                format!("GET /events/1 HTTP/1.1\r\nHost: a\r\n{UP}\r\n"),
                Dispatch::WebSocket(r(2), WsMode::OverHttp),
            ),
            // The mode is the first target's.
            (
                format!("GET /mixed/1 HTTP/1.1\r\nHost: a\r\n{UP}\r\n"),
                Dispatch::WebSocket(r(3), WsMode::Passthrough),
            ),
            // An Upgrade to something else is plain HTTP.
            (
                "GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".into(),
                Dispatch::Proxy(r(1)),
            ),
            (
                "POST /events/1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/websocket-events\r\nContent-Length: 0\r\n\r\n".into(),
                forbidden,
            ),
            (
                "POST /mixed/1 HTTP/1.1\r\nHost: a\r\nContent-Type: Application/WebSocket-Events; x=1\r\nContent-Length: 0\r\n\r\n".into(),
                forbidden,
            ),
            (
                "POST /app/1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/websocket-events\r\nContent-Length: 0\r\n\r\n".into(),
                Dispatch::Proxy(r(4)),
            ),
            (
                "POST /app/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n".into(),
                Dispatch::Refuse {
                    status: 413,
                    reason: "request body too large",
                },
            ),
            (
                "POST /app/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n".into(),
                Dispatch::Proxy(r(4)),
            ),
            (
                "GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".into(),
                Dispatch::BadHandshake {
                    status: 426,
                    reason: "unsupported WebSocket version (13 is)",
                },
            ),
            (
                "GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".into(),
                Dispatch::BadHandshake {
                    status: 400,
                    reason: "missing or invalid Sec-WebSocket-Key",
                },
            ),
        ];
        for (raw, want) in &cases {
            let Ok(Some((_, head))) = parse_request(raw.as_bytes(), &HeadLimits::default()) else {
                panic!("{raw:?} does not parse");
            };
            assert_eq!(decide(&routes, &head, false, 100), *want, "{raw:?}");
        }
        // 0: no body limit.
        let raw = b"POST /app/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n";
        let Ok(Some((_, head))) = parse_request(raw, &HeadLimits::default()) else {
            panic!("does not parse");
        };
        assert_eq!(decide(&routes, &head, false, 0), Dispatch::Proxy(r(4)));
    }

    fn one(line: &str) -> Route {
        parse_line(line).expect("valid").expect("a route")
    }

    fn backend(r: &Route, i: usize) -> &Backend {
        match &r.targets[i] {
            Target::Backend(b) => b,
            t => panic!("not a backend: {t:?}"),
        }
    }

    #[test]
    fn tokenizes_like_pushpin() {
        let t = |l: &str| {
            tokenize(l)
                .expect(l)
                .into_iter()
                .map(|s| {
                    let props: Vec<String> = s
                        .props
                        .iter()
                        .map(|(n, v)| match v {
                            Some(v) => format!("{n}={v}"),
                            None => n.clone(),
                        })
                        .collect();
                    format!("{}[{}]", s.value, props.join("|"))
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (line, want) in [
            ("", ""),
            ("   ", ""),
            ("# comment", ""),
            ("  # comment", ""),
            ("* a:1", "*[] a:1[]"),
            ("   *,x=1,y    a:1,z   # c", "*[x=1|y] a:1[z]"),
            ("* a:1#glued", "*[] a:1[]"),
            ("*,p=/a#b a:1", "*[p=/a]"),
            ("\"ex am\",p=\"a,b#c\" a:1", "ex am[p=a,b#c] a:1[]"),
            (r#"*,h="x\\y\"z" a:1"#, r#"*[h=x\y"z] a:1[]"#),
            (r#"*,h=a"b c"d a:1"#, "*[h=ab cd] a:1[]"),
            (r#"*,"h=whole prop" a:1"#, "*[h=whole prop] a:1[]"),
            ("p=1 a:1", "[p=1] a:1[]"),
            (",p=1 a:1", "[p=1] a:1[]"),
            ("*,a=b=c x", "*[a=b=c] x[]"),
            (r#""a=b" x"#, "[a=b] x[]"),
        ] {
            assert_eq!(t(line), want, "{line:?}");
        }
        for (line, needle) in [
            ("*,,x a:1", "expecting a property"),
            ("*, a:1", "expecting a property"),
            ("*, ", "expecting a property"),
            ("*,=x a:1", "empty property name"),
            (r#"*,h="open a:1"#, "unterminated quoted section"),
            (r#"*,h="x\"#, "unterminated escape"),
            (r#"*,h="\n" a:1"#, "unexpected escape character 'n'"),
            ("*\ta:1", "tab"),
        ] {
            let e = tokenize(line).expect_err(line).0;
            assert!(e.contains(needle), "{line:?}: {e}");
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        let r = one("*  127.0.0.1:8000");
        assert_eq!(r.host, None);
        assert_eq!(backend(&r, 0).addr, "127.0.0.1:8000");
        assert!(!backend(&r, 0).over_http);
        let r = one("api.example.com,path_beg=/events/ 127.0.0.1:8000");
        assert_eq!(r.host.as_deref(), Some("api.example.com"));
        assert_eq!(r.path_beg.as_deref(), Some("/events/"));
        let r = one("*,proto=ws 127.0.0.1:8000,over_http");
        assert_eq!(r.proto, Proto::Ws);
        assert!(backend(&r, 0).over_http);
        assert_eq!(one("* test").targets, vec![Target::Test]);
        let r = one("*,sig_key=base64:c2VjcmV0,sig_iss=me,prefix=p- a:1,host=x.y b:2 # comment");
        assert_eq!(r.sig_key.as_deref(), Some(&b"secret"[..]));
        assert_eq!(
            one("*,sig_key=plain a:1").sig_key.as_deref(),
            Some(&b"plain"[..])
        );
        assert_eq!(r.sig_iss.as_deref(), Some("me"));
        assert_eq!(r.prefix.as_deref(), Some("p-"));
        assert_eq!(r.targets.len(), 2);
        assert_eq!(backend(&r, 0).host.as_deref(), Some("x.y"));
        assert_eq!(parse_line("  # only a comment"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
        let r = one("* [::1]:8000,sub=a,sub=b");
        assert_eq!(backend(&r, 0).addr, "[::1]:8000");
        assert_eq!(backend(&r, 0).sub, vec!["a", "b"]);
    }

    #[test]
    fn implemented_options_are_typed() {
        let r = one(
            r#"*,id=api,debug,orig_headers,no_grip,as_host=b.example:8080,header="X-A:  one",header=X-B: a:1"#,
        );
        assert_eq!(r.id.as_deref(), Some("api"));
        assert!(r.debug);
        assert!(!r.grip());
        let e = &backend(&r, 0).edits;
        assert!(e.orig_headers);
        assert_eq!(e.as_host.as_deref(), Some("b.example:8080"));
        let h: Vec<(&str, &str, &str)> = e
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str(), h.cgi_name.as_str()))
            .collect();
        assert_eq!(h, vec![("X-A", "one", "x-a"), ("X-B", "", "x-b")]);
        assert_eq!(backend(&r, 0).send_host(), Some("b.example:8080"));
        let r = one("*,header=X_Odd.Name:v a:1");
        assert_eq!(r.edits.headers[0].cgi_name, "x-odd-name");
        let r = one("*,as_host=a.example t:1,host=t.example");
        assert_eq!(backend(&r, 0).send_host(), Some("t.example"));
        assert!(one("* a:1").grip());
    }

    #[test]
    fn sig_key_file_is_hex_relative_to_the_routes_file() {
        let dir = std::env::temp_dir().join(format!("corepin-route-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("k.hex"), "736563726574\n").expect("write");
        std::fs::write(dir.join("k.pem"), "-----BEGIN PRIVATE KEY-----\n").expect("write");
        std::fs::write(dir.join("k.bad"), "xyz").expect("write");
        let r = parse_line_in("*,sig_key=file:k.hex a:1", &dir)
            .expect("valid")
            .expect("route");
        assert_eq!(r.sig_key.as_deref(), Some(&b"secret"[..]));
        for (file, needle) in [
            ("k.pem", "is not a PEM EC (P-256) or RSA private key"),
            ("k.bad", "not a hex-encoded secret"),
            ("missing", "cannot read"),
        ] {
            let e = parse_line_in(&format!("*,sig_key=file:{file} a:1"), &dir).expect_err(file);
            assert!(e.0.contains(needle), "{file}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_with_a_reason() {
        for (line, needle) in [
            ("*", "no target"),
            ("* localhost", "not host:port"),
            ("* localhost:0", "not 1-65535"),
            ("* localhost:99999", "not 1-65535"),
            ("* :80", "no host"),
            ("*,bogus=1 a:1", "unknown route property 'bogus'"),
            ("* a:1,bogus", "unknown target property 'bogus'"),
            ("*,proto=ftp a:1", "proto 'ftp'"),
            ("*,ssl=maybe a:1", "ssl 'maybe'"),
            ("*,path_beg=x a:1", "must start with '/'"),
            ("*,path_beg= a:1", "'path_beg' needs a value"),
            (
                "*,path_beg=/a//b a:1",
                "normal form (requests are matched as '/a/b')",
            ),
            ("*,path_beg=/a/../b a:1", "normal form"),
            ("*,path_beg=/%61 a:1", "matched as '/a'"),
            ("*,path_beg=/a%zz a:1", "invalid percent-encoding"),
            ("*,path_rem=x a:1", "not a number"),
            (
                "*,path_beg=/a,path_rem=1,replace_beg=/b a:1",
                "path_rem has no effect",
            ),
            ("*,path_beg=/a,path_beg=/b a:1", "given twice"),
            ("* test,over_http", "no properties"),
            (
                "*,sig_key=base64:!! a:1",
                "sig_key: key after 'base64:' is not valid base64",
            ),
            ("*,sig_key= a:1", "'sig_key' needs a value"),
            ("*,debug=false a:1", "'debug' takes no value"),
            ("*,ssl a:1", "ssl '' is not yes or no"),
            ("* a:1,ssl=1", "'ssl' takes no value"),
            ("* a:1,insecure", "'insecure' needs 'ssl'"),
            ("* a:1,insecure=yes,ssl", "'insecure' takes no value"),
            (
                "* a:1,trust_connect_host",
                "'trust_connect_host' needs 'ssl'",
            ),
            ("* a:1,over_http=yes", "'over_http' takes no value"),
            ("* a:1,sub", "bare 'sub'"),
            ("* a:1,sub=", "bare 'sub'"),
            ("Example.com a:1", "write 'example.com'"),
            ("example.com:8080 a:1", "carries a port"),
            (",path_beg=/a a:1", "no host"),
            ("path_beg=/a a:1", "no host"),
            ("*,header=NoColon a:1", "not NAME:VALUE"),
            ("*,header=:v a:1", "not NAME:VALUE"),
            ("*,header=Bad Name:v a:1", "header 'Bad' is not NAME:VALUE"),
            ("*,\"header=Bad Name:v\" a:1", "not a field name"),
            ("*,header=Host:x a:1", "set by corepin itself"),
            ("*,header=Grip-Sig:x a:1", "set by corepin itself"),
            ("*,header=X-Forwarded-For:x a:1", "set by corepin itself"),
            ("*,header=Content-Length:1 a:1", "set by corepin itself"),
            ("*,as_host=a\u{7f}b a:1", "control character"),
            ("*,\"prefix=a\tb\" a:1", "control character"),
            ("* a:1,host=bad/host", "not a host name"),
            ("*,log_level=loud a:1", "not a number"),
            ("*,aco,jsonp_mode=odd a:1", "basic or extended"),
            ("*,jsonp_mode=basic a:1", "need aco"),
            ("*,aco,jsonp_cb=a&b a:1", "not a query parameter name"),
            ("*,aco,jsonp_defmethod=a(b a:1", "not an HTTP method"),
            ("*,aco,jsonp_defcb=f a:1", "needs jsonp_body"),
            (
                "*,aco,jsonp_body=b,jsonp_defcb=a(1) a:1",
                "not a JavaScript name",
            ),
            ("*,aco,jsonp_body=a&b a:1", "not a query parameter name"),
            ("*\ta:1", "tab"),
            ("*,path_beg=/\u{1}x a:1", "control character"),
            ("* a:1,one_event", "'one_event' needs 'over_http'"),
        ] {
            let e = parse_line(line).expect_err(line).0;
            assert!(e.contains(needle), "{line}: {e}");
        }
        assert!(parse_line("* a:1,over_http,one_event").is_ok_and(|r| r.is_some()));
        let e = Routes::parse(["* a:1", "*,x=1 a:1"]).expect_err("bad line");
        assert!(e.0.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn pushpin_trust_and_logging_options_are_served() {
        let r = parse_line("*,log_level=1,session a:1,untrusted b:2,ssl,host=h.test,trust_connect_host c:3,ssl,host=h.test")
            .expect("served")
            .expect("a route");
        assert_eq!(r.log_level, Some(1));
        assert!(r.session);
        let b = |i: usize| match &r.targets[i] {
            Target::Backend(b) => b.clone(),
            t => panic!("{t:?}"),
        };
        assert!(b(0).untrusted && !b(1).untrusted);
        assert_eq!(b(1).tls_name(), None, "trust_connect_host: the address");
        assert_eq!(b(2).tls_name(), Some("h.test"), "else host=");
        let routes = Routes::parse(["*,session a:1", "*,path_beg=/x a:1"]).expect("valid");
        let w = routes.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("'*,session a:1'") && w[0].contains("`session` has no effect"));
        let e = parse_line("*,log_level=-1 a:1").expect_err("negative").0;
        assert!(e.contains("log_level '-1'"), "{e}");
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (line, name) in [
            ("* zhttp/tcp://127.0.0.1:5000", "target `zhttp/...`"),
            ("* zhttpreq/tcp://127.0.0.1:5000", "target `zhttpreq/...`"),
            ("* a:1,ipc_file_mode=777", "`ipc_file_mode` applies only"),
            ("*,no_grip a:1,over_http", "`no_grip`"),
        ] {
            let e = parse_line(line).expect_err(line).0;
            assert!(e.contains(name), "{line}: {e}");
            // ...and every one of them is Pushpin syntax corepin reads.
            assert!(
                parse_line_in(line, Path::new(".")).is_ok_and(|r| r.is_some()),
                "{line}"
            );
        }
    }

    #[test]
    fn duplicates_are_refused_as_pushpin_skips_them() {
        let e = Routes::parse(["*,path_beg=/a a:1", "*,path_beg=/a b:1"]).expect_err("dup");
        assert_eq!(
            e.0,
            "line 2: same condition as line 1 (Pushpin would skip this line)"
        );
        // Another host, or another protocol, is another condition.
        Routes::parse([
            "*,path_beg=/a a:1",
            "x.example,path_beg=/a a:1",
            "*,path_beg=/a,proto=ws a:1",
        ])
        .expect("distinct conditions");
        let e = Routes::parse(["*,id=a a:1", "*,path_beg=/x,id=a a:1"]).expect_err("dup id");
        assert!(e.0.contains("id 'a' is already given on line 1"), "{e}");
    }

    fn pick(routes: &Routes, h: Option<&str>, p: &str, ws: bool) -> Option<String> {
        routes.select(h, p, ws).map(|r| match &r.targets[0] {
            Target::Backend(b) => b.addr.clone(),
            t => format!("{t:?}"),
        })
    }

    #[test]
    fn selection_is_most_specific_whatever_the_order() {
        let lines = [
            "*,path_beg=/ a:1",
            "*,path_beg=/api b:1",
            "*,path_beg=/api/v2 c:1",
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let routes = Routes::parse(order.iter().map(|&i| lines[i])).expect("valid");
            assert_eq!(pick(&routes, None, "/api/x", false).as_deref(), Some("b:1"));
            assert_eq!(
                pick(&routes, None, "/api/v2/x", true).as_deref(),
                Some("c:1")
            );
            assert_eq!(pick(&routes, None, "/other", false).as_deref(), Some("a:1"));
        }
        let routes = Routes::parse([
            "*,path_beg=/api/long a:1",
            "*,proto=ws b:1",
            "*,proto=http,path_beg=/api c:1",
        ])
        .expect("valid");
        assert_eq!(
            pick(&routes, None, "/api/long/x", false).as_deref(),
            Some("c:1")
        );
        assert_eq!(
            pick(&routes, None, "/api/long/x", true).as_deref(),
            Some("b:1")
        );
        assert_eq!(pick(&routes, None, "/other", false), None);
    }

    #[test]
    fn host_routes_shadow_the_wildcard() {
        let routes = Routes::parse([
            "*,path_beg=/ws,proto=ws a:1,over_http",
            "*,path_beg=/api b:1",
            "api.example.com,path_beg=/v1 c:1",
            "* test",
        ])
        .expect("valid");
        assert_eq!(
            pick(&routes, Some("API.example.com"), "/v1/x", false).as_deref(),
            Some("c:1")
        );
        // A host with routes of its own never falls back to `*`.
        assert_eq!(
            pick(&routes, Some("api.example.com"), "/api/x", false),
            None
        );
        assert_eq!(
            pick(&routes, Some("other"), "/api/x", false).as_deref(),
            Some("b:1")
        );
        assert_eq!(pick(&routes, None, "/ws/1", true).as_deref(), Some("a:1"));
        assert_eq!(pick(&routes, None, "/ws/1", false).as_deref(), Some("Test"));
        // No Host is `localhost`, as in Pushpin.
        let local = Routes::parse(["localhost a:1", "* b:1"]).expect("valid");
        assert_eq!(pick(&local, None, "/", false).as_deref(), Some("a:1"));
    }

    #[test]
    fn ssl_conditions_follow_pushpin_including_its_order_quirk() {
        let parse = |lines: &[&str]| {
            let parsed = lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i, parse_line_in(l, Path::new(".")).expect(l).expect(l)))
                .collect();
            Routes::build(parsed).expect("valid")
        };
        let req = |path| Request {
            host: Some("x"),
            path,
            ws: false,
            https: false,
        };
        let first = parse(&["*,path_beg=/api a:1", "*,ssl=no b:1"]);
        assert_eq!(
            first.select_for(&req("/api/x")).map(|r| r.line.as_str()),
            Some("*,ssl=no b:1")
        );
        let second = parse(&["*,ssl=no b:1", "*,path_beg=/api a:1"]);
        assert_eq!(
            second.select_for(&req("/api/x")).map(|r| r.line.as_str()),
            Some("*,path_beg=/api a:1")
        );
        let tls = parse(&["*,ssl=yes a:1", "* b:1"]);
        let mut r = req("/");
        assert_eq!(tls.select_for(&r).map(|r| r.line.as_str()), Some("* b:1"));
        r.https = true;
        assert_eq!(
            tls.select_for(&r).map(|r| r.line.as_str()),
            Some("*,ssl=yes a:1")
        );
    }

    #[test]
    fn tls_condition_and_target_properties() {
        let r = one("*,ssl=yes a:443,ssl,host=api.example.com b:443,ssl,insecure c:80");
        assert_eq!(r.ssl, Some(true));
        let b = |i: usize| (backend(&r, i).ssl, backend(&r, i).insecure);
        assert_eq!(
            (b(0), b(1), b(2)),
            ((true, false), (true, true), (false, false))
        );
        assert_eq!(one("*,ssl=no a:1").ssl, Some(false));
        assert_eq!(one("* a:1").ssl, None);
        let routes = Routes::parse([
            "*,path_beg=/s,ssl=yes a:1",
            "*,path_beg=/s,ssl=no b:1",
            "* c:1",
        ])
        .expect("valid");
        let pick = |p: &str, tls: bool| {
            routes
                .select_tls(None, p, false, tls)
                .map(|r| r.line.split(' ').nth(1).unwrap_or("").to_string())
        };
        assert_eq!(pick("/s", true).as_deref(), Some("a:1"));
        assert_eq!(pick("/s", false).as_deref(), Some("b:1"));
        assert_eq!(pick("/x", true).as_deref(), Some("c:1"));
        assert_eq!(
            routes.select(None, "/s", false).map(|r| r.line.as_str()),
            Some("*,path_beg=/s,ssl=no b:1")
        );
        assert!(routes.first_ssl_target().is_none());
        let ssl = Routes::parse(["* a:1", "x.y b:1 c:2,ssl"]).expect("valid");
        let (r, b) = ssl.first_ssl_target().expect("one");
        assert_eq!(
            (r.line.as_str(), b.addr.as_str()),
            ("x.y b:1 c:2,ssl", "c:2")
        );
    }

    #[test]
    fn rewrites_paths() {
        let r = one("*,path_beg=/api/,replace_beg=/v2/ a:1");
        assert_eq!(r.rewrite("/api/items?x=1"), "/v2/items?x=1");
        let r = one("*,path_beg=/app,path_rem=4 a:1");
        assert_eq!(r.rewrite("/app/items"), "/items");
        assert_eq!(r.rewrite("/app"), "/");
        let r = one("* a:1");
        assert_eq!(r.rewrite("/x?y"), "/x?y");
        // Only the path is cut, never the query.
        let r = one("*,path_beg=/long,path_rem=99 a:1");
        assert_eq!(r.rewrite("/long/x?q=/long"), "/?q=/long");
        // replace_beg without path_beg puts its value in front.
        let r = one("*,replace_beg=/pre a:1");
        assert_eq!(r.rewrite("/any/path"), "/pre/any/path");
        // Cutting can leave a dot-segment: put back in normal form, so
        // the backend sees what the route meant.
        let r = one("*,path_beg=/ab,path_rem=3 a:1");
        assert_eq!(r.rewrite("/ab./c?q=/./"), "/c?q=/./");
        let r = one("*,path_beg=/api/,replace_beg=/v2// a:1");
        assert_eq!(r.rewrite("/api/x"), "/v2/x");
        // Where Pushpin's cut leaves no leading '/', corepin adds it.
        let r = one("*,path_beg=/two,path_rem=2 a:1");
        assert_eq!(r.rewrite("/two/x"), "/wo/x");
    }
}
