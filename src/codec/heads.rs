//! Every HTTP head corepin writes, encoded here and nowhere else (hyper's
//! `proto/h1/role.rs` is the model): the request to a backend, a proxied
//! response, a refusal relayed unchanged, the WebSocket handshake answer, a
//! next-link request, the control API's answers. Heads that come from a
//! GRIP source (a held response, a published `http-response`) are built
//! by `codec::response`, which validates them; this module adds their
//! per-connection framing.
//!
//! One header filter decides what a forwarded message keeps
//! ([`forwardable`]): hop-by-hop and framing fields never pass (corepin
//! frames every message itself), nor does a field the message's own
//! `Connection` lists (except `Host`); toward a backend `Expect` and
//! `Grip-*` in any CGI spelling are dropped too, toward a client `Grip-*`
//! as spelled, unless the route passes GRIP through.

use std::io::Write;

use super::grip::GRIP_FEATURES;
use super::http1::{
    cgi_name_is, cgi_name_starts, reason_phrase, trim, write_decimal, write_field, write_framing,
    BodyKind, Fields, HopByHop, RequestHead, ResponseHead, Version,
};

/// The `Via` token corepin adds.
pub const VIA: &str = "1.1 corepin";

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The name prefix Pushpin gives the copies of a client's original fields
/// (`orig_headers`).
pub const ORIG_MARK: &str = "eb9bf0f5-";

/// Which way a message is forwarded, for [`forwardable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// A client's request to a backend: `Expect` and `Grip-*` (in any
    /// spelling a CGI server maps to one) are corepin's.
    Backend,
    /// A backend's answer to a client, `Grip-*` fields left out.
    Client,
    /// A backend's answer to a client on a `no_grip` route: GRIP fields
    /// pass as they are.
    ClientWithGrip,
}

/// True when the field `name` of a message with `fields` may be forwarded
/// `toward` the other side: the one filter every forwarded head goes
/// through.
pub fn forwardable(fields: &Fields, name: &[u8], toward: Toward) -> bool {
    forwardable_by(&HopByHop::of(fields), name, toward)
}

/// [`forwardable`] with the message's `Connection` fields looked at once
/// (`HopByHop::of`), for a loop over all of a head's fields.
fn forwardable_by(hop: &HopByHop<'_>, name: &[u8], toward: Toward) -> bool {
    if hop.drops(name) {
        return false;
    }
    match toward {
        Toward::Backend => !(cgi_name_is(name, "expect") || cgi_name_starts(name, "grip-")),
        Toward::Client => !is_grip_name(name),
        Toward::ClientWithGrip => true,
    }
}

/// `Via`: the values received (`earlier`, each followed by `, `), then
/// corepin's own, with no buffer between.
fn write_via(out: &mut Vec<u8>, earlier: &[u8]) {
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(earlier);
    out.extend_from_slice(VIA.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `Grip-*` as spelled (what a backend's answer carries to corepin).
pub fn is_grip_name(name: &[u8]) -> bool {
    name.len() >= 5 && name[..5].eq_ignore_ascii_case(b"grip-")
}

/// What to do with a client's `X-Forwarded-For` (Pushpin's rule syntax:
/// `truncate:N` keeps the last N entries the client sent, `append` adds the
/// peer's address; no `truncate` keeps every entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XffRule {
    pub truncate: Option<usize>,
    pub append: bool,
}

impl XffRule {
    /// The entries to forward: the client's (as this rule keeps them), then
    /// the peer's address when the rule appends.
    pub fn apply<'a>(&self, client: Vec<&'a [u8]>, peer: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = self.kept(&client).to_vec();
        if self.append {
            out.push(peer);
        }
        out
    }

    /// The client's entries this rule keeps (the peer's address, when it
    /// appends, goes after them).
    pub fn kept<'s, 'a>(&self, client: &'s [&'a [u8]]) -> &'s [&'a [u8]] {
        match self.truncate {
            Some(n) => &client[client.len().saturating_sub(n)..],
            None => client,
        }
    }
}

/// What the `[forwarding]` policy says for one request's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardPolicy {
    /// The peer is a trusted proxy: its `Forwarded`, `X-Real-IP`,
    /// `X-Forwarded-Host` and the like are kept.
    pub trusted: bool,
    /// The rule for the client's `X-Forwarded-For` from this peer.
    pub xff: XffRule,
    /// A client's `X-Forwarded-Proto: https` (or `wss`) counts.
    pub accept_x_forwarded_protocol: bool,
    /// The client connection itself is TLS: `X-Forwarded-Proto: https`.
    pub tls: bool,
}

impl ForwardPolicy {
    /// The policy for a client connection that is TLS (`tls`) or not.
    pub fn over_tls(self, tls: bool) -> ForwardPolicy {
        ForwardPolicy { tls, ..self }
    }
}

/// One `header=NAME:VALUE` route edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEdit {
    pub name: String,
    /// Empty: the field is removed.
    pub value: String,
    /// The name lower-cased with `_` and `.` as `-`: client fields that a
    /// CGI server would map to the same variable are replaced too.
    pub cgi_name: String,
}

/// Forwarding fields a client may not set: corepin writes its own, or
/// passes them only from a trusted proxy (`[forwarding]`). Compared under
/// the CGI mapping (`X_Real_IP` is `X-Real-IP`).
const FROM_TRUSTED_PROXIES_ONLY: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-client-ip",
    "true-client-ip",
];

/// Fields of a WebSocket-over-HTTP request that only corepin sets (the
/// session id, and `Meta-*`, which only the backend's `Set-Meta-*`
/// produce): never taken from a client toward an `over_http` target.
fn is_session_field(name: &[u8]) -> bool {
    cgi_name_is(name, "connection-id") || cgi_name_starts(name, "meta-")
}

/// What a request to a backend is for; decides its method, its framing
/// and the fields corepin writes itself.
#[derive(Debug, Clone, Copy)]
pub enum Purpose<'a> {
    /// The client's request, its body framed as the client framed it.
    Proxy,
    /// The client's WebSocket upgrade, passed through to a WebSocket
    /// backend (extensions are negotiated by corepin).
    WsUpgrade,
    /// One WebSocket-over-HTTP request: a POST of `content_length` bytes
    /// of events for session `connection_id`, with the session's `Meta-*`,
    /// `Content-Bytes-Replayed: replayed` when the request offers again
    /// content the backend kept back (`Content-Bytes-Accepted`), and
    /// `Sec-WebSocket-Extensions: grip` when `grip_ext` (a GRIP route, as
    /// Pushpin offers it).
    WsEvents {
        connection_id: &'a str,
        content_length: usize,
        meta: &'a [(String, Vec<u8>)],
        replayed: usize,
        grip_ext: bool,
    },
}

/// Fields corepin sets itself on every events request, under any spelling
/// a CGI server would map to them.
const EVENTS_OWN: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-type",
    "accept",
    "content-bytes-replayed",
];

impl Purpose<'_> {
    /// Client fields this purpose writes itself (besides the general ones).
    fn own(&self, name: &[u8]) -> bool {
        match self {
            Purpose::Proxy => false,
            Purpose::WsUpgrade => name.eq_ignore_ascii_case(b"sec-websocket-extensions"),
            Purpose::WsEvents { .. } => EVENTS_OWN.iter().any(|o| cgi_name_is(name, o)),
        }
    }
}

/// The request head sent to a backend for a client's request.
pub struct BackendRequest<'a> {
    pub client: &'a RequestHead,
    pub purpose: Purpose<'a>,
    /// The target after the route's rewrite.
    pub path: &'a str,
    /// The backend's `host:port`: the Host when the client sent none.
    pub addr: &'a str,
    /// The Host to send instead of the client's (a target's `host=`, a
    /// route's `as_host=`).
    pub send_host: Option<&'a str>,
    /// The target is `over_http`: a client's session fields never reach it.
    pub over_http: bool,
    /// The route's `header=` edits.
    pub edits: &'a [HeaderEdit],
    /// `orig_headers`: marked copies of the client's fields go too.
    pub orig_headers: bool,
    /// The client's address, as text.
    pub peer_ip: &'a str,
    pub forwarding: ForwardPolicy,
    /// `Grip-Sig` (when signing) and `Grip-Feature`, or nothing on a
    /// `no_grip` route.
    pub grip: Option<Option<&'a str>>,
    /// `Grip-Last: CHANNEL; last-id=ID` per entry (written only with the
    /// GRIP fields): a long-poll asked again says where its channels were,
    /// as Pushpin's retries do.
    pub grip_last: &'a [(String, String)],
    /// The client connection's Connection-Id (written with the GRIP fields
    /// on a proxied request or a WebSocket handshake, so a backend that
    /// holds the connection can target it; a client's own is dropped).
    pub connection_id: Option<&'a str>,
}

impl BackendRequest<'_> {
    /// The `Connection-Id` corepin writes (with the GRIP fields, on a
    /// proxied request or a WebSocket handshake), if any.
    fn own_connection_id(&self) -> Option<&str> {
        match self.purpose {
            Purpose::Proxy | Purpose::WsUpgrade if self.grip.is_some() => self.connection_id,
            _ => None,
        }
    }

    /// Appends the head: the client's fields minus what [`forwardable`]
    /// drops toward a backend, the forwarding fields the policy does not
    /// take from this peer, session fields toward an `over_http` target,
    /// the purpose's own fields, and fields marked or replaced by the
    /// route's edits; then the edits (`header=` values, copies of the
    /// client's fields for `orig_headers`), corepin's forwarding fields,
    /// the GRIP fields, the purpose's fields and the framing.
    pub fn write(&self, out: &mut Vec<u8>) {
        let head = self.client;
        let method = match self.purpose {
            Purpose::WsEvents { .. } => "POST",
            _ => head.method(),
        };
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let fwd = &self.forwarding;
        // Both stay empty, and allocate nothing, unless the client sent
        // `X-Forwarded-For` or `Via` (the common request sends neither).
        let mut xff: Vec<&[u8]> = Vec::new();
        let mut via: Vec<u8> = Vec::new();
        let hop = HopByHop::of(&head.fields);
        let mut https = fwd.tls;
        let mut real_ip = None;
        let mut forwarded_host = None;
        let mut host = None;
        let edited = |name: &[u8]| self.edits.iter().any(|h| cgi_name_is(name, &h.cgi_name));
        let marked = |name: &[u8]| cgi_name_starts(name, ORIG_MARK);
        let mut orig: Vec<u8> = Vec::new();
        for (name, value) in head.fields.iter() {
            if self.orig_headers && !edited(name) {
                // Pushpin marks the client's fields before it drops any.
                if !marked(name) {
                    orig.extend_from_slice(ORIG_MARK.as_bytes());
                }
                write_field(&mut orig, name, value);
            }
            if !forwardable_by(&hop, name, Toward::Backend)
                || (self.over_http && is_session_field(name))
                || (self.own_connection_id().is_some() && cgi_name_is(name, "connection-id"))
                || edited(name)
                || marked(name)
                || self.purpose.own(name)
            {
                continue;
            }
            // Only the exact spelling of a forwarding field is believed (and
            // only as the policy says); look-alikes are dropped.
            let exact = |canonical: &str| name.eq_ignore_ascii_case(canonical.as_bytes());
            if cgi_name_is(name, "x-forwarded-for") {
                if exact("x-forwarded-for") {
                    xff.extend(
                        value
                            .split(|&c| c == b',')
                            .map(trim)
                            .filter(|e| !e.is_empty()),
                    );
                }
                continue;
            }
            if cgi_name_is(name, "x-forwarded-proto") || cgi_name_is(name, "x-forwarded-protocol") {
                let v = trim(value);
                https |= fwd.accept_x_forwarded_protocol
                    && (exact("x-forwarded-proto") || exact("x-forwarded-protocol"))
                    && (v.eq_ignore_ascii_case(b"https") || v.eq_ignore_ascii_case(b"wss"));
                continue;
            }
            if let Some(f) = FROM_TRUSTED_PROXIES_ONLY
                .iter()
                .find(|f| cgi_name_is(name, f))
            {
                if fwd.trusted && exact(f) {
                    match *f {
                        "x-real-ip" => real_ip = real_ip.or(Some(value)),
                        "x-forwarded-host" => forwarded_host = forwarded_host.or(Some(value)),
                        _ => write_field(out, name, value),
                    }
                }
                continue;
            }
            if name.eq_ignore_ascii_case(b"via") {
                via.extend_from_slice(value);
                via.extend_from_slice(b", ");
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                host = Some(value);
                if self.send_host.is_some() {
                    continue;
                }
            }
            write_field(out, name, value);
        }
        if let Some(h) = self.send_host {
            write_field(out, b"Host", h.as_bytes());
        } else if host.is_none() {
            write_field(out, b"Host", self.addr.as_bytes());
        }
        for h in self.edits.iter().filter(|h| !h.value.is_empty()) {
            write_field(out, h.name.as_bytes(), h.value.as_bytes());
            if self.orig_headers {
                orig.extend_from_slice(ORIG_MARK.as_bytes());
                write_field(&mut orig, h.name.as_bytes(), h.value.as_bytes());
            }
        }
        out.extend_from_slice(&orig);
        // `XffRule::apply`'s entries, written straight into the head.
        let kept = fwd.xff.kept(&xff);
        if !kept.is_empty() || fwd.xff.append {
            out.extend_from_slice(b"X-Forwarded-For: ");
            for (i, e) in kept.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(e);
            }
            if fwd.xff.append {
                if !kept.is_empty() {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(self.peer_ip.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        let proto: &[u8] = if https { b"https" } else { b"http" };
        write_field(out, b"X-Forwarded-Proto", proto);
        if let Some(h) = forwarded_host.or(host) {
            write_field(out, b"X-Forwarded-Host", h);
        }
        write_field(
            out,
            b"X-Real-IP",
            real_ip.unwrap_or(self.peer_ip.as_bytes()),
        );
        write_via(out, &via);
        if let Some(sig) = self.grip {
            write_grip_fields(out, sig);
            for (channel, id) in self.grip_last {
                let _ = write!(out, "Grip-Last: {channel}; last-id={id}\r\n");
            }
        }
        if let Some(id) = self.own_connection_id() {
            write_field(out, b"Connection-Id", id.as_bytes());
        }
        match self.purpose {
            Purpose::Proxy => write_framing(out, head.body),
            Purpose::WsUpgrade => {
                out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
                // As Pushpin, a GRIP route offers the backend the `grip`
                // extension (the client's own extensions never go).
                if self.grip.is_some() {
                    out.extend_from_slice(b"Sec-WebSocket-Extensions: grip\r\n");
                }
                write_framing(out, head.body);
            }
            Purpose::WsEvents {
                connection_id,
                content_length,
                meta,
                replayed,
                grip_ext,
            } => {
                let _ = write!(
                    out,
                    "Content-Type: application/websocket-events\r\nAccept: application/websocket-events\r\nConnection-Id: {connection_id}\r\nContent-Length: {content_length}\r\n",
                );
                if replayed > 0 {
                    let _ = write!(out, "Content-Bytes-Replayed: {replayed}\r\n");
                }
                if grip_ext {
                    out.extend_from_slice(b"Sec-WebSocket-Extensions: grip\r\n");
                }
                for (k, v) in meta {
                    out.extend_from_slice(b"Meta-");
                    write_field(out, k.as_bytes(), v);
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `Grip-Sig` (with the token, when signing) and `Grip-Feature`.
pub fn write_grip_fields(out: &mut Vec<u8>, sig: Option<&str>) {
    if let Some(token) = sig {
        out.extend_from_slice(b"Grip-Sig: ");
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Grip-Feature: ");
    out.extend_from_slice(GRIP_FEATURES.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A stream's next-link request (`Grip-Link`): a GET of `path` with the
/// client's Host (or the link's), `Grip-Last` for each channel a
/// subscriber has seen an id on (named without the route's `prefix`), and
/// the GRIP fields.
pub fn write_link_request(
    out: &mut Vec<u8>,
    path: &str,
    host: &[u8],
    last_ids: &[(String, String)],
    prefix: &str,
    sig: Option<&str>,
) {
    let _ = write!(out, "GET {path} HTTP/1.1\r\n");
    write_field(out, b"Host", host);
    for (ch, id) in last_ids {
        let name = ch.strip_prefix(prefix).unwrap_or(ch);
        let _ = write!(out, "Grip-Last: {name}; last-id={id}\r\n");
    }
    write_grip_fields(out, sig);
    out.extend_from_slice(b"\r\n");
}

/// A `rel=gone` link's request: `POST`, no body, none of the client's
/// fields, signed like any request corepin makes.
pub fn write_gone_request(out: &mut Vec<u8>, path: &str, host: &[u8], sig: Option<&str>) {
    let _ = write!(out, "POST {path} HTTP/1.1\r\n");
    write_field(out, b"Host", host);
    out.extend_from_slice(b"Content-Length: 0\r\n");
    write_grip_fields(out, sig);
    out.extend_from_slice(b"\r\n");
}

/// The status line of a response relayed from a backend: its own reason
/// phrase, or the canonical one when it gave none.
fn relayed_status_line(out: &mut Vec<u8>, resp: &ResponseHead) {
    let reason = if resp.reason().is_empty() {
        reason_phrase(resp.status)
    } else {
        resp.reason()
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a proxied response's body reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    /// As the backend framed it (a length, or none).
    AsIs,
    /// Re-encoded as chunks (a chunked or close-delimited body to an
    /// HTTP/1.1 client).
    Chunked,
}

/// Appends the head of a backend's response proxied to a client: the
/// backend's fields that [`forwardable`] keeps toward a client (GRIP
/// fields included only where `toward` says so), `Via`, the framing and
/// the connection's fate.
pub fn write_proxied_response(
    out: &mut Vec<u8>,
    req: &RequestHead,
    resp: &ResponseHead,
    body: ClientBody,
    keep: bool,
    toward: Toward,
) {
    relayed_status_line(out, resp);
    let mut via: Vec<u8> = Vec::new();
    let hop = HopByHop::of(&resp.fields);
    for (name, value) in resp.fields.iter() {
        if !forwardable_by(&hop, name, toward) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via.extend_from_slice(value);
            via.extend_from_slice(b", ");
            continue;
        }
        write_field(out, name, value);
    }
    write_via(out, &via);
    match resp.body {
        BodyKind::Empty => {
            // HEAD and 304 keep the length the backend declared; other
            // empty bodies say so explicitly unless they never have one.
            let bodiless = (100..200).contains(&resp.status) || resp.status == 204;
            match resp.fields.get("content-length") {
                Some(v) if req.is_head() || resp.status == 304 => {
                    write_field(out, b"Content-Length", v)
                }
                _ if !bodiless && resp.status != 304 && !req.is_head() => {
                    out.extend_from_slice(b"Content-Length: 0\r\n")
                }
                _ => {}
            }
        }
        BodyKind::Length(_) => write_framing(out, resp.body),
        BodyKind::Chunked | BodyKind::UntilClose => {
            if body == ClientBody::Chunked {
                write_framing(out, BodyKind::Chunked);
            }
        }
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a backend's refusal of a WebSocket session (any answer but the
/// expected one) relayed to the client unchanged: status, the fields a
/// client may get, its body's length, and a close.
pub fn write_refusal(out: &mut Vec<u8>, resp: &ResponseHead, body_len: usize) {
    relayed_status_line(out, resp);
    for (n, v) in resp.fields.iter() {
        if forwardable(&resp.fields, n, Toward::Client) {
            write_field(out, n, v);
        }
    }
    write_framing(out, BodyKind::Length(body_len as u64));
    out.extend_from_slice(b"Connection: close\r\n\r\n");
}

/// Appends the 101 that completes a client's WebSocket handshake.
pub fn write_switching_protocols(
    out: &mut Vec<u8>,
    accept: &str,
    protocol: Option<&[u8]>,
    extensions: Option<&str>,
) {
    let _ = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        write_field(out, b"Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = extensions.filter(|e| !e.is_empty()) {
        write_field(out, b"Sec-WebSocket-Extensions", e.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the field that says what happens to the connection after a
/// response corepin writes: `close`, or keep-alive spelled out for an
/// HTTP/1.0 client; nothing for a kept HTTP/1.1 connection.
pub fn write_connection(out: &mut Vec<u8>, keep: bool, http10: bool) {
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

/// Appends an answer of the control API: a text (or given content type)
/// body with its length, `extra` fields, and a close when not `keep`.
pub fn write_control_answer(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    keep: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
        reason_phrase(status),
    );
    for (n, v) in extra {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests;
