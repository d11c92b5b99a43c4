//! What travels through the broker: a publish body in Pushpin's format,
//! `{"items":[...]}`, exactly what `POST /publish/` takes, so a backend
//! may publish to the broker directly. A node that sends a publish puts a
//! `corepin` member first in the object:
//!
//! ```text
//! {"corepin":{"node":"web-1","run":"9f3c...","seq":17,"sent_us":1733...},"items":[...]}
//! ```
//!
//! `run` (random per process) and `seq` let the sending node recognise its
//! own message when it comes back from the stream, and deliver the items
//! it parsed already instead of parsing them again; `sent_us` (the sender's clock, microseconds since
//! the epoch) gives the receive lag. Sans-IO: building and reading only.

use serde::Deserialize;

use crate::codec::publish::root_member;

/// The most a node's envelope adds to a publish body: the `corepin` member
/// with a 64-byte node name, a 16-digit run id and two 20-digit numbers,
/// with room to spare.
pub const MAX_OVERHEAD: usize = 256;

/// The root members a broker message may hold besides `items`.
pub const EXTRA: &[&str] = &["corepin"];

/// Who sent a message, as the `corepin` member says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    pub node: String,
    pub run: String,
    pub seq: u64,
    pub sent_us: u64,
}

/// The broker payload for a publish whose `items` list is `items_json`
/// (the raw, already validated JSON text of the list).
pub fn build(node: &str, run: &str, seq: u64, sent_us: u64, items_json: &[u8]) -> Vec<u8> {
    // `node` and `run` are checked names (letters, digits, . _ -) and hex:
    // nothing in them needs escaping.
    let head = format!(
        "{{\"corepin\":{{\"node\":\"{node}\",\"run\":\"{run}\",\"seq\":{seq},\"sent_us\":{sent_us}}},\"items\":"
    );
    let mut out = Vec::with_capacity(head.len() + items_json.len() + 1);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(items_json);
    out.push(b'}');
    out
}

/// The `corepin` member of a payload: `Ok(None)` when there is none (a
/// publisher that wrote to the broker directly); an error names what is
/// wrong with one that is there.
pub fn origin(payload: &[u8]) -> Result<Option<Origin>, String> {
    match root_member(payload, "corepin") {
        None => Ok(None),
        Some(raw) => serde_json::from_slice::<Origin>(raw)
            .map(Some)
            .map_err(|e| format!("corepin: {e}")),
    }
}

/// A random instance id (hex), from the kernel's generator; the time and
/// process id stand in if it cannot be read.
pub fn run_id() -> String {
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    let v = if ok {
        u64::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    };
    format!("{v:016x}")
}

/// Microseconds since the epoch, by this machine's clock.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::publish::parse_with;

    #[test]
    fn built_payloads_parse_as_publishes_and_carry_their_origin() {
        let items = br#"[{"channel":"a","formats":{"http-stream":{"content":"x"}}}]"#;
        let p = build("web-1", "00ff", 7, 123, items);
        let parsed = parse_with(&p, EXTRA).expect("a valid publish");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].channel, "a");
        assert_eq!(
            origin(&p),
            Ok(Some(Origin {
                node: "web-1".into(),
                run: "00ff".into(),
                seq: 7,
                sent_us: 123
            }))
        );
        // Without the EXTRA name the member is refused by name.
        let e = parse_with(&p, &[]).expect_err("corepin is not a publish field");
        assert!(e.0.contains("corepin: unknown field"), "{e}");
    }

    #[test]
    fn direct_publishes_have_no_origin_and_bad_origins_are_named() {
        assert_eq!(origin(br#"{"items":[]}"#), Ok(None));
        for (body, why) in [
            (
                &br#"{"corepin":{"node":"n"},"items":[]}"#[..],
                "missing field",
            ),
            (
                br#"{"corepin":{"node":"n","run":"r","seq":-1,"sent_us":0},"items":[]}"#,
                "invalid value",
            ),
            (
                br#"{"corepin":{"node":"n","run":"r","seq":1,"sent_us":0,"x":1},"items":[]}"#,
                "unknown field",
            ),
            (br#"{"corepin":5,"items":[]}"#, "invalid type"),
        ] {
            let e = origin(body).expect_err(why);
            assert!(e.starts_with("corepin: ") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_envelope_fits_its_overhead() {
        let node = "n".repeat(crate::cluster::settings::MAX_NAME);
        let with = build(&node, &run_id(), u64::MAX, u64::MAX, b"[]");
        assert!(with.len() - br#"{"items":[]}"#.len() <= MAX_OVERHEAD);
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(run_id(), run_id());
        assert_eq!(run_id().len(), 16);
    }
}
