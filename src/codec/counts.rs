//! The channel-count query: `GET /channels?channel=C`, `?prefix=P&top=N`,
//! `?top=N` on the control HTTP API and the control socket's `channels`
//! method. Parsed strictly: an unknown, repeated, empty or out-of-range
//! parameter is refused with a reason naming it.

/// Most channels one answer lists.
pub const MAX_TOP: usize = 10_000;
/// Channels listed when neither `channel` nor `top` is given.
pub const DEFAULT_TOP: usize = 100;
/// Longest channel name or prefix accepted in a query.
pub const MAX_NAME: usize = 4096;

/// What a count request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// One channel's subscribers (0 when it has none).
    Channel(String),
    /// The `top` channels with the most subscribers among those starting
    /// with `prefix` (every channel when it is empty).
    Top { prefix: String, top: usize },
}

impl Query {
    /// Builds a query from its parameters, each given at most once.
    pub fn build(
        channel: Option<&str>,
        prefix: Option<&str>,
        top: Option<&str>,
    ) -> Result<Query, String> {
        let name = |what: &str, v: &str| -> Result<String, String> {
            if v.is_empty() {
                return Err(format!("{what}: empty"));
            }
            if v.len() > MAX_NAME {
                return Err(format!("{what}: longer than {MAX_NAME} bytes"));
            }
            if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err(format!("{what}: control characters are not allowed"));
            }
            Ok(v.to_string())
        };
        let top = match top {
            None => None,
            Some(t) => match t.parse::<usize>() {
                Ok(n) if (1..=MAX_TOP).contains(&n) && t.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(n)
                }
                _ => {
                    return Err(format!(
                        "top: '{t}' is not a whole number from 1 to {MAX_TOP}"
                    ))
                }
            },
        };
        match (channel, prefix, top) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err("channel cannot be combined with prefix or top".into())
            }
            (Some(c), None, None) => Ok(Query::Channel(name("channel", c)?)),
            (None, p, top) => Ok(Query::Top {
                prefix: match p {
                    Some(p) => name("prefix", p)?,
                    None => String::new(),
                },
                top: top.unwrap_or(DEFAULT_TOP),
            }),
        }
    }

    /// Parses a URL query string (`None`: no `?`): `channel`, `prefix`,
    /// `top`, percent-encoded.
    pub fn from_url(query: Option<&str>) -> Result<Query, String> {
        let (mut channel, mut prefix, mut top) = (None, None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "channel" => &mut channel,
                "prefix" => &mut prefix,
                "top" => &mut top,
                _ => {
                    return Err(format!(
                        "unknown parameter '{}' (channel, prefix, top)",
                        k.escape_default()
                    ))
                }
            };
            if slot.is_some() {
                return Err(format!("{k}: given more than once"));
            }
            let v = super::jsonp::percent_decode(v)
                .ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            let v = String::from_utf8(v).map_err(|_| format!("{k}: not UTF-8"))?;
            *slot = Some(v);
        }
        Query::build(channel.as_deref(), prefix.as_deref(), top.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(prefix: &str, top: usize) -> Query {
        Query::Top {
            prefix: prefix.into(),
            top,
        }
    }

    #[test]
    fn url_queries() {
        let ok: &[(Option<&str>, Query)] = &[
            (None, top("", DEFAULT_TOP)),
            (Some(""), top("", DEFAULT_TOP)),
            (Some("channel=a"), Query::Channel("a".into())),
            (Some("channel=a%2Fb%20c"), Query::Channel("a/b c".into())),
            (Some("channel=a+b"), Query::Channel("a+b".into())),
            (Some("prefix=room."), top("room.", DEFAULT_TOP)),
            (Some("top=5"), top("", 5)),
            (Some("prefix=r&top=10000"), top("r", MAX_TOP)),
            (Some("top=3&prefix=x&"), top("x", 3)),
        ];
        for (q, want) in ok {
            assert_eq!(Query::from_url(*q).as_ref(), Ok(want), "{q:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("chan=a", "unknown parameter 'chan'"),
            ("channel=a&channel=b", "channel: given more than once"),
            ("channel=", "channel: empty"),
            ("channel", "channel: empty"),
            ("prefix=", "prefix: empty"),
            ("channel=a&top=3", "channel cannot be combined"),
            ("channel=a&prefix=b", "channel cannot be combined"),
            ("top=0", "top: '0' is not a whole number"),
            ("top=10001", "top: '10001'"),
            ("top=-1", "top: '-1'"),
            ("top=+1", "top: '+1'"),
            ("top=x", "top: 'x'"),
            ("top=99999999999999999999999", "top: '9999"),
            ("channel=%zz", "channel: bad percent-encoding"),
            ("channel=%ff", "channel: not UTF-8"),
            ("channel=a%0Ab", "channel: control characters"),
            ("channel=a%00", "channel: control characters"),
        ];
        for (q, why) in bad {
            match Query::from_url(Some(q)) {
                Err(e) => assert!(e.starts_with(why), "{q}: {e}"),
                Ok(v) => panic!("{q}: accepted as {v:?}"),
            }
        }
        let long = format!("channel={}", "a".repeat(MAX_NAME + 1));
        assert!(Query::from_url(Some(&long)).is_err());
        let max = format!("channel={}", "a".repeat(MAX_NAME));
        assert!(Query::from_url(Some(&max)).is_ok());
    }

    #[test]
    fn any_query_string_is_answered_without_panic() {
        // Every prefix of a few queries (cut mid-escape, mid-name).
        for q in ["channel=a%2Fb&top=3", "prefix=r%C3%A9&top=12", "top=7&x=%"] {
            for i in 0..=q.len() {
                if q.is_char_boundary(i) {
                    let _ = Query::from_url(Some(&q[..i]));
                }
            }
        }
    }
}
