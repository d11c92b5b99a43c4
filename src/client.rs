//! The command-line client: `corepin publish`, `stats` and `channels` talk to
//! a running corepin over its control socket (or, for publish, its HTTP
//! publish API). Plain blocking IO: this runs in the CLI process.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{json, Value};

/// Which format `corepin publish` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFormat {
    /// `http-stream` content (the default), with a newline added.
    Stream,
    HttpResponse,
    WsMessage,
    /// `action: close` for streams and WebSockets.
    Close,
}

/// The publish body for the CLI's arguments.
pub fn publish_body(
    channel: &str,
    content: &str,
    format: PublishFormat,
    id: Option<&str>,
    prev_id: Option<&str>,
) -> Value {
    let formats = match format {
        PublishFormat::Stream => json!({"http-stream": {"content": format!("{content}\n")}}),
        PublishFormat::HttpResponse => json!({"http-response": {"body": format!("{content}\n")}}),
        PublishFormat::WsMessage => json!({"ws-message": {"content": content}}),
        PublishFormat::Close => {
            json!({"http-stream": {"action": "close"}, "ws-message": {"action": "close"}})
        }
    };
    let mut item = json!({"channel": channel, "formats": formats});
    if let Some(id) = id {
        item["id"] = json!(id);
    }
    if let Some(p) = prev_id {
        item["prev-id"] = json!(p);
    }
    json!({"items": [item]})
}

/// Sends one request line on the control socket and reads the answer.
pub fn socket_request(path: &Path, request: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "corepin is not running (no control socket at {}: {e})",
            path.display()
        )
    })?;
    let mut line = request.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    serde_json::from_str(&answer)
        .map_err(|e| format!("control socket {}: bad answer: {e}", path.display()))
}

/// POSTs a publish body to `url` (`http://host:port[/path]`; `/publish/`
/// is used when no path is given).
pub fn http_publish(url: &str, body: &Value) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--http: '{url}' is not an http:// URL"))?;
    let (hostport, path) = match rest.split_once('/') {
        Some((h, p)) if !p.is_empty() => (h, format!("/{p}")),
        Some((h, _)) => (h, "/publish/".to_string()),
        None => (rest, "/publish/".to_string()),
    };
    let mut s = std::net::TcpStream::connect(hostport)
        .map_err(|e| format!("corepin is not running (cannot connect to {hostport}: {e})"))?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{hostport}: {e}"))?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        let text = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        Err(format!(
            "publish refused: {} {text}",
            answer.lines().next().unwrap_or("no answer")
        ))
    }
}

/// Percent-encodes a query value (unreserved bytes as they are).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asks for channel counts on the control socket or, with `http` (the
/// control API's `http://host:port`), with `GET /channels`; the answer's
/// `channels` list.
pub fn channels(
    query: &crate::codec::counts::Query,
    http: Option<&str>,
    socket: &Path,
) -> Result<Vec<(String, u64)>, String> {
    use crate::codec::counts::Query;
    let answer = match http {
        None => {
            let req = match query {
                Query::Channel(c) => json!({"method": "channels", "channel": c}),
                Query::Top { prefix, top } if prefix.is_empty() => {
                    json!({"method": "channels", "top": top})
                }
                Query::Top { prefix, top } => {
                    json!({"method": "channels", "prefix": prefix, "top": top})
                }
            };
            let a = socket_request(socket, &req)?;
            if a.get("ok").and_then(Value::as_bool) != Some(true) {
                return Err(format!(
                    "channels refused: {}",
                    a.get("error").and_then(Value::as_str).unwrap_or("?")
                ));
            }
            a
        }
        Some(url) => {
            let hostport = url
                .strip_prefix("http://")
                .ok_or_else(|| format!("--http: '{url}' is not an http:// URL"))?
                .trim_end_matches('/');
            if hostport.contains('/') {
                return Err(format!(
                    "--http: '{url}' has a path (give http://host:port)"
                ));
            }
            let q = match query {
                Query::Channel(c) => format!("channel={}", url_encode(c)),
                Query::Top { prefix, top } if prefix.is_empty() => format!("top={top}"),
                Query::Top { prefix, top } => format!("prefix={}&top={top}", url_encode(prefix)),
            };
            let mut s = std::net::TcpStream::connect(hostport).map_err(|e| {
                format!("corepin is not running (cannot connect to {hostport}: {e})")
            })?;
            let req = format!(
                "GET /channels?{q} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .map_err(|e| format!("{hostport}: {e}"))?;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            if head.split(' ').nth(1) != Some("200") {
                return Err(format!(
                    "channels refused: {} {}",
                    head.lines().next().unwrap_or("no answer"),
                    body.trim()
                ));
            }
            serde_json::from_str(body).map_err(|e| format!("{hostport}: bad answer: {e}"))?
        }
    };
    Ok(answer
        .get("channels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("channel")?.as_str()?.to_string(),
                c.get("subscribers")?.as_u64()?,
            ))
        })
        .collect())
}

/// Sends a `connection` request (without `method`) to the control API's
/// `POST /connection` at `url` (`http://host:port`); the JSON answer, or
/// why there is none.
pub fn http_connection(url: &str, request: &Value) -> Result<Value, String> {
    let hostport = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--http: '{url}' is not an http:// URL"))?
        .trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!(
            "--http: '{url}' has a path (give http://host:port)"
        ));
    }
    let mut body = request.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("method");
    }
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(hostport)
        .map_err(|e| format!("corepin is not running (cannot connect to {hostport}: {e})"))?;
    let req = format!(
        "POST /connection HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{hostport}: {e}"))?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    serde_json::from_str(answer).map_err(|_| {
        format!(
            "connection refused: {} {}",
            head.lines().next().unwrap_or("no answer"),
            answer.trim()
        )
    })
}

/// Human-readable stats from the socket's `stats` answer.
pub fn format_stats(v: &Value) -> String {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "connections {}  streams {}  long-polls {}  websockets {}  subscriptions {}\nrequests {}  publishes {}  items {}  deliveries {}  drops {}  deduplicated {}  reordered {}\n",
        n("connections"), n("streams"), n("long_polls"), n("websockets"), n("subscriptions"),
        n("requests"), n("publishes"), n("published_items"), n("deliveries"), n("drops"), n("deduplicated"), n("reordered")
    );
    for c in v
        .get("cores")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let g = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!(
            "core {}: connections {} streams {} long-polls {} websockets {} deliveries {} drops {}\n",
            g("core"), g("connections"), g("streams"), g("long_polls"), g("websockets"), g("deliveries"), g("drops") + g("stalls")
        ));
    }
    out
}
