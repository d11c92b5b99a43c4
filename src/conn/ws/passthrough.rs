//! Passthrough: frame-by-frame proxying to a WebSocket backend, with GRIP
//! control messages when the backend enables the `grip` extension.

use std::rc::Rc;

use bytes::Bytes;

use super::subscriber::control;
use super::{
    bad_gateway, close_frame, drop_client, from_client, mask_key, outcome, read_response_head,
    relay_refusal, wait, ws_sub, Io, MAX_MESSAGE,
};
use crate::codec::heads::Purpose;
use crate::codec::http1::RequestHead;
use crate::codec::ws::{
    self, MessageKind as WsKind, Opcode, Reader, Received as WsFrameEvent, Role,
};
use crate::codec::wshandshake::{classify, grip_extension, switching, FromBackend, GripExt};
use crate::codec::wssession::{echo_code, Pings, ServerSession, Step};
use crate::conn::grip::{deliver, read_body, HoldEnd, Written};
use crate::conn::http::{grip_key, Client};
use crate::route::{Backend, Route};
use crate::shard::Shard;
use crate::subs::{Msg, Sub};
use crate::upstream::{Reuse, Upstream};

/// Writes the upgrade request for a WebSocket backend.
fn upgrade_request(
    shard: &Shard,
    head: &RequestHead,
    path: &str,
    b: &Backend,
    c: &Client,
    route: &Route,
    cid: &str,
) -> Vec<u8> {
    let (peer, tls) = (&c.peer, c.conn.is_tls());
    let token = route
        .grip()
        .then(|| grip_key(&shard.signer, route))
        .flatten()
        .map(|k| shard.signer.token(&k));
    let mut out = Vec::with_capacity(512);
    let peer_ip = peer.ip().to_string();
    let fwd = shard.cfg.forwarding.policy(peer.ip()).over_tls(tls);
    let grip = route.grip().then_some(token.as_deref());
    crate::codec::heads::BackendRequest {
        connection_id: Some(cid),
        ..b.request(head, Purpose::WsUpgrade, path, &peer_ip, fwd, grip)
    }
    .write(&mut out);
    out
}

/// Sends the backend a close (masked, as a client's frames are).
async fn close_backend(up: &mut Upstream, code: u16, reason: &str) {
    let _ = up
        .conn
        .write_all(&close_frame(code, reason, Some(mask_key())))
        .await;
}

/// Frame-by-frame proxying to a WebSocket backend.
pub(super) async fn passthrough(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    let timeout = shard.cfg.timeouts.upstream_connect;
    let Ok((_, mut up, backend)) = shard
        .pool
        .connect_first(&route.targets, 0, Reuse::Fresh, timeout)
        .await
    else {
        return bad_gateway(c, "upstream unreachable", "-").await;
    };
    let target = backend.addr.clone();
    // On a GRIP route the backend learns the connection's Connection-Id,
    // by which a publisher can target it (`crate::targets`).
    let cid = shard.next_connection_id();
    let req = upgrade_request(
        shard,
        head,
        &route.rewrite(head.target()),
        backend,
        c,
        route,
        &cid,
    );
    if up.conn.write_all(&req).await.is_err() {
        return bad_gateway(c, "upstream closed the connection", &target).await;
    }
    let Some(resp) = read_response_head(shard, &mut up, false).await else {
        return bad_gateway(c, "invalid response from upstream", &target).await;
    };
    if resp.status != 101 {
        let body = read_body(&mut up, resp.body).await.unwrap_or_default();
        let n = relay_refusal(c, &resp, &body).await;
        return outcome(resp.status, n, &target);
    }
    let extensions = resp.fields.get("sec-websocket-extensions");
    let (grip, other_ext) = if route.grip() {
        grip_extension(extensions)
    } else {
        // `no_grip`: the backend's extensions reach the client unread.
        (
            None,
            String::from_utf8_lossy(extensions.unwrap_or(b"")).into_owned(),
        )
    };
    let protocol = resp
        .fields
        .get("sec-websocket-protocol")
        .map(<[u8]>::to_vec);
    if c.conn
        .write_all(&switching(head, protocol.as_deref(), Some(&other_ext)))
        .await
        .is_err()
    {
        return outcome(101, 0, &target);
    }
    up.conn.set_read_timeout(None);
    let prefix = route.prefix.clone().unwrap_or_default();
    let sub = ws_sub(&shard.subs, route, route.implicit_channels(&backend.addr));
    let _target = route
        .grip()
        .then(|| crate::targets::Registered::new(&shard.held, cid, &sub));
    let end = relay(shard, c, &mut up, &sub, &grip, &prefix, &target).await;
    end
}

async fn relay(
    shard: &Rc<Shard>,
    c: &mut Client,
    up: &mut Upstream,
    sub: &Rc<Sub>,
    grip: &Option<GripExt>,
    prefix: &str,
    target: &str,
) -> HoldEnd {
    let mut reader = Reader::new(Role::Server, MAX_MESSAGE);
    let mut session = ServerSession::new(Pings::Forward);
    let mut from_backend = Reader::new(Role::Client, MAX_MESSAGE);
    let mut bytes = 0u64;
    let mut detached = false;
    // Frames may have arrived with the handshakes: handle those first.
    let mut first = Some(if up.conn.has_input() {
        Io::Backend
    } else if c.conn.has_input() {
        Io::Client
    } else {
        Io::Timer
    });
    loop {
        let io = match first.take() {
            Some(io) => io,
            None => wait(c, Some(&mut *up), Some(sub), None).await,
        };
        if c.conn.has_input() && first.is_none() && matches!(io, Io::Backend) {
            first = Some(Io::Client);
        }
        match io {
            Io::Client => {
                // The client's frames go to the backend, masked; its close
                // is passed on too, a protocol error ends both sides.
                let mut out = Vec::new();
                for step in from_client(c, &mut reader, &mut session).await {
                    let m = Some(mask_key());
                    match step {
                        Step::Message(k, d) => {
                            let op = if k == WsKind::Text {
                                Opcode::Text
                            } else {
                                Opcode::Binary
                            };
                            ws::write_frame(&mut out, true, op, &d, m);
                        }
                        Step::Ping(p) => ws::write_frame(&mut out, true, Opcode::Ping, &p, m),
                        Step::Pong(p) => ws::write_frame(&mut out, true, Opcode::Pong, &p, m),
                        Step::Closed(code, reason) => {
                            ws::write_close(&mut out, code.unwrap_or(1000), &reason, m)
                        }
                        Step::Failed(_) => {
                            ws::write_close(&mut out, 1001, "client protocol error", m)
                        }
                    }
                }
                let sent = detached || out.is_empty() || up.conn.write_all(&out).await.is_ok();
                if session.closed() {
                    return outcome(101, bytes, target);
                }
                if !sent {
                    let _ = c
                        .conn
                        .write_all(&close_frame(1011, "upstream went away", None))
                        .await;
                    return outcome(101, bytes, target);
                }
            }
            Io::Backend => {
                let mut out = Vec::new();
                loop {
                    let r = from_backend.read(up.conn.input());
                    let (n, ev) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(
                                "core {}: backend {target} broke the WebSocket protocol: {}",
                                shard.index, e.reason
                            );
                            let _ = c
                                .conn
                                .write_all(&close_frame(1011, "upstream protocol error", None))
                                .await;
                            return outcome(101, bytes, target);
                        }
                    };
                    up.conn.consume(n);
                    match ev {
                        Some(WsFrameEvent::Message(k, d)) => match classify(grip, k, &d) {
                            FromBackend::Control(json) => {
                                control(shard, sub, prefix, json, &mut detached)
                            }
                            FromBackend::Client(payload) => {
                                let op = if k == WsKind::Text {
                                    Opcode::Text
                                } else {
                                    Opcode::Binary
                                };
                                ws::write_frame(&mut out, true, op, payload, None);
                            }
                            FromBackend::Drop => {}
                        },
                        Some(WsFrameEvent::Ping(p)) => {
                            let _ = up
                                .conn
                                .write_all(&{
                                    let mut f = Vec::new();
                                    ws::write_frame(
                                        &mut f,
                                        true,
                                        Opcode::Pong,
                                        &p,
                                        Some(mask_key()),
                                    );
                                    f
                                })
                                .await;
                        }
                        Some(WsFrameEvent::Pong(_)) => {}
                        Some(WsFrameEvent::Close(code, reason)) => {
                            ws::write_close(&mut out, echo_code(code), &reason, None);
                            let _ = c.conn.write_all(&out).await;
                            return outcome(101, bytes, target);
                        }
                        None if n == 0 || !up.conn.has_input() => break,
                        None => {}
                    }
                }
                if !out.is_empty() {
                    bytes += out.len() as u64;
                    match deliver(shard, c, sub, Bytes::from(out), <[u8]>::len)
                        .await
                        .0
                    {
                        Written::Done => {}
                        Written::Gone => return outcome(101, bytes, target),
                        Written::Dropped => {
                            drop_client(shard, c);
                            return outcome(101, bytes, target);
                        }
                    }
                }
            }
            Io::Sub(Msg::Data(b)) => match deliver(shard, c, sub, b, <[u8]>::len).await.0 {
                Written::Done => {}
                Written::Gone => return outcome(101, bytes, target),
                Written::Dropped => {
                    drop_client(shard, c);
                    close_backend(up, 1001, "client went away").await;
                    return outcome(101, bytes, target);
                }
            },
            Io::Sub(Msg::WsClose(code, reason)) => {
                let _ = c.conn.write_all(&close_frame(code, &reason, None)).await;
                close_backend(up, 1000, "").await;
                return outcome(101, bytes, target);
            }
            Io::Sub(_) | Io::Timer => {}
            Io::Dropped => {
                drop_client(shard, c);
                close_backend(up, 1001, "client went away").await;
                return outcome(101, bytes, target);
            }
            Io::ClientGone => {
                close_backend(up, 1001, "client went away").await;
                return outcome(101, bytes, target);
            }
            Io::BackendGone => {
                let _ = c
                    .conn
                    .write_all(&close_frame(1011, "upstream went away", None))
                    .await;
                return outcome(101, bytes, target);
            }
        }
    }
}
