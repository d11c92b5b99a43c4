//! Prefix (wildcard) subscriptions: how one is told apart from a channel,
//! and which prefixes of a published channel to look up.
//!
//! A backend subscribes to every channel under a prefix with the `prefix`
//! parameter (`Grip-Channel: news.; prefix`, `"prefix": true` in the JSON
//! instruct and in a WebSocket `subscribe` control message). Inside
//! corepin such a subscription is the *key* `PREFIX + MARK`: the mark is a
//! NUL, which no channel name can hold (names are refused with control
//! characters wherever they enter), so a key never equals a channel, and a
//! route's `prefix` put in front of a key still gives the key of the longer
//! prefix.

use std::borrow::Cow;

/// Ends the key of a prefix subscription.
pub const MARK: char = '\0';

/// The key of a subscription to every channel starting with `prefix`.
pub fn key(prefix: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + 1);
    k.push_str(prefix);
    k.push(MARK);
    k
}

/// The prefix a key subscribes to, or `None` for a plain channel.
pub fn as_prefix(key: &str) -> Option<&str> {
    key.strip_suffix(MARK)
}

/// A key as people read it: `news.*` for the prefix `news.`.
pub fn display(key: &str) -> Cow<'_, str> {
    match as_prefix(key) {
        Some(p) => Cow::Owned(format!("{p}* (prefix)")),
        None => Cow::Borrowed(key),
    }
}

/// Calls `f(len)` for every prefix length of `channel` (0 up to and
/// including its whole length) at a character boundary, with `h` the
/// FNV-1a state after those bytes, in one pass over the name: the caller
/// turns it into a hash-table slot without hashing each prefix anew.
pub fn each_prefix(channel: &str, mut f: impl FnMut(usize, u64)) {
    let mut h = FNV_OFFSET;
    f(0, h);
    for (i, &b) in channel.as_bytes().iter().enumerate() {
        h = fnv_step(h, b);
        if channel.is_char_boundary(i + 1) {
            f(i + 1, h);
        }
    }
}

/// FNV-1a's starting state.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One byte of FNV-1a.
pub fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
}

/// FNV-1a of `bytes`.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| fnv_step(h, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_equal_a_channel() {
        assert_eq!(as_prefix(&key("news.")), Some("news."));
        assert_eq!(as_prefix("news."), None);
        assert_ne!(key("news."), "news.");
        // A route prefix in front of a key is the key of the longer prefix.
        assert_eq!(format!("r:{}", key("a.")), key("r:a."));
        assert_eq!(display(&key("a.")), "a.* (prefix)");
        assert_eq!(display("a."), "a.");
    }

    #[test]
    fn every_prefix_is_seen_once_with_its_hash() {
        for ch in ["", "a", "news.sport.x", "caf\u{e9}.1"] {
            let mut seen = Vec::new();
            each_prefix(ch, |len, h| {
                assert_eq!(h, fnv(&ch.as_bytes()[..len]), "{ch:?} at {len}");
                seen.push(len);
            });
            let want: Vec<usize> = (0..=ch.len()).filter(|&i| ch.is_char_boundary(i)).collect();
            assert_eq!(seen, want);
        }
    }
}
