//! Invariant: the WebSocket frame reader (both roles) never panics, never
//! consumes more than given, and yields the same events or error however
//! its input is split; the WebSocket-over-HTTP event decoder and the
//! `Content-Bytes-Accepted` parser never panic, and taking an accepted
//! count off decoded events keeps exactly the content not accepted.
#![no_main]

use corepin::codec::ws::{check_split_invariant, Role};
use corepin::codec::wsevents::{self, WsEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    check_split_invariant(Role::Server, input, cut as usize);
    check_split_invariant(Role::Client, input, cut as usize);
    let _ = wsevents::parse_bytes_accepted(input);
    if let Ok(events) = wsevents::decode(input) {
        // A request's shape: messages, pings, pongs, then at most a close.
        let mut sent: Vec<WsEvent> = events
            .iter()
            .filter(|e| !matches!(e, WsEvent::Open | WsEvent::Close(..) | WsEvent::Disconnect))
            .cloned()
            .collect();
        sent.extend(
            events
                .iter()
                .find(|e| matches!(e, WsEvent::Close(..)))
                .cloned(),
        );
        let offered: usize = sent.iter().map(wsevents::content_len).sum();
        let accepted = (cut != 0).then(|| usize::from(cut) - 1);
        if let Ok(k) = wsevents::take_accepted(sent, accepted, cut % 2 == 0) {
            let kept: usize = k.events.iter().map(wsevents::content_len).sum::<usize>()
                + k.close.as_ref().map_or(0, wsevents::content_len);
            // Exactly what was not accepted is kept.
            assert_eq!(kept, offered - accepted.unwrap_or(offered));
        }
    }
});
