//! Subscription filters, with Pushpin 1.41's meaning: what a subscriber
//! declares per channel (`Grip-Channel: room; filter=skip-self`, the JSON
//! instruct's `channels[].filters`, a WebSocket `subscribe` control
//! message) and how a published message is judged for that subscriber.
//!
//! Pure functions over the subscriber's meta, the publish's meta and the
//! subscriber's channels: no IO. A filter either drops the message or lets
//! it through; `build-id` and `var-subst` may also rewrite its content,
//! and only then is a new buffer made: a message no filter changes is
//! delivered from the bytes every subscriber shares.
//!
//! Where corepin differs from Pushpin 1.41 (README "GRIP"): an unknown
//! filter name is refused rather than ignored; `http-check` and
//! `http-modify` (disabled in 1.41, a 2.0 feature) are refused by name;
//! `require-sub` on a WebSocket tests the channels it is subscribed to (as
//! Pushpin after 1.41; 1.41 itself dropped every such message).

use bytes::Bytes;

/// Most filters one channel of one subscriber may list (Pushpin's
/// `MESSAGEFILTERSTACK_SIZE_MAX`).
pub const MAX_PER_CHANNEL: usize = 5;

/// A filter corepin knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Name {
    /// Drop when the publish meta `sender` is the subscriber's `user`.
    SkipSelf,
    /// Drop when the subscriber's `user` is in the publish meta
    /// `skip_users` (a comma list).
    SkipUsers,
    /// Drop unless the subscriber is on the channel named by the publish
    /// meta `require_sub`.
    RequireSub,
    /// Expand `%I` / `%(id)I` in the content into the subscriber's ID,
    /// built from its meta `id_format` (and `id_encoding=hex`).
    BuildId,
    /// Replace `%(name)s` in the content with the subscriber's meta `name`.
    VarSubst,
}

impl Name {
    pub const ALL: [Name; 5] = [
        Name::SkipSelf,
        Name::SkipUsers,
        Name::RequireSub,
        Name::BuildId,
        Name::VarSubst,
    ];

    /// The filter called `name`; unknown names and the Pushpin 2.0 HTTP
    /// filters are refused with a reason that names them.
    pub fn parse(name: &str) -> Result<Name, String> {
        match name {
            "skip-self" => Ok(Name::SkipSelf),
            "skip-users" => Ok(Name::SkipUsers),
            "require-sub" => Ok(Name::RequireSub),
            "build-id" => Ok(Name::BuildId),
            "var-subst" => Ok(Name::VarSubst),
            "http-check" | "http-modify" => Err(format!(
                "filter '{name}' is not supported (a Pushpin 2.0 filter, disabled in Pushpin 1.41)"
            )),
            other => Err(format!(
                "unknown filter '{}' (skip-self, skip-users, require-sub, build-id, var-subst)",
                other.escape_debug()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Name::SkipSelf => "skip-self",
            Name::SkipUsers => "skip-users",
            Name::RequireSub => "require-sub",
            Name::BuildId => "build-id",
            Name::VarSubst => "var-subst",
        }
    }

    /// True for the filters that may rewrite a message's content (what a
    /// publish's `content-filters` is compared with).
    pub fn rewrites(self) -> bool {
        matches!(self, Name::BuildId | Name::VarSubst)
    }
}

/// One channel's filters, in the order the subscriber listed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(Vec<Name>);

impl Filters {
    pub const NONE: Filters = Filters(Vec::new());

    /// Parses the names listed for `channel`: at most [`MAX_PER_CHANNEL`],
    /// each known. A name listed twice is kept twice (as Pushpin runs it).
    pub fn parse<'a>(
        names: impl IntoIterator<Item = &'a str>,
        channel: &str,
    ) -> Result<Filters, String> {
        let mut out = Vec::new();
        for n in names {
            if out.len() == MAX_PER_CHANNEL {
                return Err(format!(
                    "too many filters for channel '{}' (at most {MAX_PER_CHANNEL})",
                    channel.escape_debug()
                ));
            }
            out.push(Name::parse(n)?);
        }
        Ok(Filters(out))
    }

    pub fn from_names(names: Vec<Name>) -> Filters {
        Filters(names)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> &[Name] {
        &self.0
    }

    /// True when some filter may change content (so delivery must run the
    /// filters per subscriber rather than share one encoding).
    pub fn rewrites(&self) -> bool {
        self.0.iter().any(|n| n.rewrites())
    }

    /// A publish's `content-filters` says which content filters its
    /// content was written for: it is delivered only to subscribers whose
    /// content filters are exactly those, in that order.
    pub fn matches_content_filters(&self, declared: &[Name]) -> bool {
        self.0
            .iter()
            .copied()
            .filter(|n| n.rewrites())
            .eq(declared.iter().copied())
    }
}

/// No filters, as a `'static` (for lookups that find no channel entry).
pub static NO_FILTERS: Filters = Filters::NONE;

/// The channels a subscriber is on (names as the backend gave them,
/// without the route's `prefix`), each with its current prev-id.
pub trait Subscribed {
    /// `Some(prev_id)` when subscribed to `channel` (`Some(None)`: no
    /// prev-id); `None` when not subscribed.
    fn prev_id(&self, channel: &str) -> Option<Option<&str>>;
    /// Every channel and its prev-id.
    fn each(&self, f: &mut dyn FnMut(&str, Option<&str>));
}

impl Subscribed for Vec<(String, Option<String>)> {
    fn prev_id(&self, channel: &str) -> Option<Option<&str>> {
        self.iter()
            .find(|(c, _)| c == channel)
            .map(|(_, p)| p.as_deref())
    }
    fn each(&self, f: &mut dyn FnMut(&str, Option<&str>)) {
        for (c, p) in self {
            f(c, p.as_deref());
        }
    }
}

/// What the filters see of one delivery.
pub struct Context<'a> {
    /// The subscriber's meta (`Grip-Set-Meta`, `hold.meta`, `set-meta`).
    pub sub_meta: &'a [(String, String)],
    /// The published item's `meta`.
    pub pub_meta: &'a [(String, String)],
    /// The subscriber's channels and prev-ids; `None` where there are none
    /// to tell (an initial or next-link response body, as in Pushpin).
    pub channels: Option<&'a dyn Subscribed>,
}

/// Looks `key` up in a meta list (the last one given wins).
pub fn meta<'a>(list: &'a [(String, String)], key: &str) -> Option<&'a str> {
    list.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A filter that could not run (a missing meta, a bad directive): the
/// message is not delivered to this subscriber.
pub use super::Invalid as FilterError;

/// What the filters decided for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver the content as published (the shared encoding).
    Send,
    /// Deliver this content instead.
    Rewritten(Bytes),
    /// Do not deliver.
    Drop,
}

/// Runs `filters` in order over `content`: the first that drops ends the
/// chain; a content filter's output is the next one's input.
pub fn run(filters: &Filters, ctx: &Context, content: &Bytes) -> Result<Verdict, FilterError> {
    let mut out: Option<Vec<u8>> = None;
    for &f in filters.names() {
        let keep = match f {
            Name::SkipSelf => skip_self(ctx),
            Name::SkipUsers => skip_users(ctx),
            Name::RequireSub => require_sub(ctx),
            Name::BuildId | Name::VarSubst => {
                let input = out.as_deref().unwrap_or(content);
                let changed = match f {
                    Name::BuildId => build_id(ctx, input),
                    _ => var_subst(ctx, input),
                }
                .map_err(|e| FilterError(format!("{}: {e}", f.as_str())))?;
                if let Some(c) = changed {
                    out = Some(c);
                }
                true
            }
        };
        if !keep {
            return Ok(Verdict::Drop);
        }
    }
    Ok(match out {
        Some(c) if c[..] != content[..] => Verdict::Rewritten(Bytes::from(c)),
        _ => Verdict::Send,
    })
}

fn nonempty<'a>(list: &'a [(String, String)], key: &str) -> Option<&'a str> {
    meta(list, key).filter(|v| !v.is_empty())
}

fn skip_self(ctx: &Context) -> bool {
    match (
        nonempty(ctx.sub_meta, "user"),
        nonempty(ctx.pub_meta, "sender"),
    ) {
        (Some(user), Some(sender)) => user != sender,
        _ => true,
    }
}

fn skip_users(ctx: &Context) -> bool {
    let (Some(user), Some(list)) = (
        nonempty(ctx.sub_meta, "user"),
        meta(ctx.pub_meta, "skip_users"),
    ) else {
        return true;
    };
    !list
        .split(',')
        .map(str::trim)
        .any(|u| !u.is_empty() && u == user)
}

fn require_sub(ctx: &Context) -> bool {
    let Some(need) = nonempty(ctx.pub_meta, "require_sub") else {
        return true;
    };
    ctx.channels.is_some_and(|c| c.prev_id(need).is_some())
}

/// Expands one directive: its letter and its `(argument)`, if any.
pub type Directive<'h> = dyn FnMut(u8, Option<&[u8]>) -> Result<Vec<u8>, String> + 'h;

/// Expands the directives of `input` (`%%`, `%X`, `%(ARG)X`) through
/// `handle(X, ARG)`. `Ok(None)` when the input has no `%` at all (nothing
/// to copy).
pub fn render(input: &[u8], handle: &mut Directive) -> Result<Option<Vec<u8>>, String> {
    let Some(first) = input.iter().position(|&b| b == b'%') else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(input.len() + 16);
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    while i < input.len() {
        let c = input[i];
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&d) = input.get(i + 1) else {
            return Err(format!("expected a directive after '%' at position {i}"));
        };
        if d == b'%' {
            out.push(b'%');
            i += 2;
        } else if d == b'(' {
            let open = i + 1;
            let mut arg = Vec::new();
            let mut j = open + 1;
            let mut closed = false;
            while j < input.len() {
                match input[j] {
                    b'\\' => {
                        let Some(&e) = input.get(j + 1) else {
                            return Err(format!("expected a character after '\\' at position {j}"));
                        };
                        arg.push(e);
                        j += 2;
                    }
                    b')' => {
                        closed = true;
                        break;
                    }
                    b => {
                        arg.push(b);
                        j += 1;
                    }
                }
            }
            if !closed {
                return Err(format!("unterminated field starting at position {open}"));
            }
            let Some(&kind) = input.get(j + 1) else {
                return Err(format!("expected a directive after ')' at position {j}"));
            };
            let v = handle(kind, Some(&arg)).map_err(|e| format!("{e} at position {}", j + 1))?;
            out.extend_from_slice(&v);
            i = j + 2;
        } else if d.is_ascii_alphabetic() {
            let v = handle(d, None).map_err(|e| format!("{e} at position {}", i + 1))?;
            out.extend_from_slice(&v);
            i += 2;
        } else {
            return Err(format!(
                "unknown directive '{}' at position {}",
                (d as char).escape_default(),
                i + 1
            ));
        }
    }
    Ok(Some(out))
}

fn directive_s<'a>(
    kind: u8,
    arg: Option<&[u8]>,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<Vec<u8>, String> {
    if kind != b's' {
        return Err(format!(
            "unknown directive '{}'",
            (kind as char).escape_default()
        ));
    }
    let Some(arg) = arg else {
        return Err("directive 's' requires an argument".into());
    };
    let name = String::from_utf8_lossy(arg);
    lookup(&name)
        .map(|v| v.as_bytes().to_vec())
        .ok_or_else(|| format!("no such variable '{}'", name.escape_debug()))
}

fn var_subst(ctx: &Context, input: &[u8]) -> Result<Option<Vec<u8>>, String> {
    render(input, &mut |kind, arg| {
        directive_s(kind, arg, |n| meta(ctx.sub_meta, n))
    })
}

/// The pieces of `build-id` that do not depend on the content: the
/// default ID (`id_format` rendered with the channels' prev-ids) and the
/// encoding. Errors as Pushpin words them.
fn id_settings(ctx: &Context) -> Result<(Option<Vec<u8>>, bool), String> {
    let Some(format) = meta(ctx.sub_meta, "id_format") else {
        return Err("no sub meta 'id_format'".into());
    };
    let mut vars: Vec<(String, Option<String>)> = Vec::new();
    if let Some(c) = ctx.channels {
        c.each(&mut |name, prev| vars.push((name.to_string(), prev.map(str::to_string))));
    }
    let default = if vars.is_empty() {
        None
    } else {
        let rendered = render(format.as_bytes(), &mut |kind, arg| {
            directive_s(kind, arg, |n| {
                vars.iter()
                    .find(|(c, _)| c == n)
                    .and_then(|(_, p)| p.as_deref())
            })
        })
        .map_err(|e| format!("failed to render ID: {e}"))?;
        Some(rendered.unwrap_or_else(|| format.as_bytes().to_vec()))
    };
    let hex = match meta(ctx.sub_meta, "id_encoding") {
        None => false,
        Some("hex") => true,
        Some(other) => return Err(format!("unsupported encoding: {}", other.escape_debug())),
    };
    Ok((default, hex))
}

fn hex_of(b: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    b.iter()
        .flat_map(|&x| [DIGITS[usize::from(x >> 4)], DIGITS[usize::from(x & 15)]])
        .collect()
}

fn expand_ids(input: &[u8], default: Option<&[u8]>, hex: bool) -> Result<Option<Vec<u8>>, String> {
    render(input, &mut |kind, arg| {
        if kind != b'I' {
            return Err(format!(
                "unknown directive '{}'",
                (kind as char).escape_default()
            ));
        }
        let id = match (arg, default) {
            (Some(a), _) => a,
            (None, Some(d)) => d,
            (None, None) => return Err("no ID specified and no default ID in context".into()),
        };
        Ok(if hex { hex_of(id) } else { id.to_vec() })
    })
}

fn build_id(ctx: &Context, input: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let (default, hex) = id_settings(ctx)?;
    expand_ids(input, default.as_deref(), hex)
}

/// `build-id` over a body that arrives in pieces (a next link's streamed
/// response): a directive split between pieces is held back until it is
/// complete.
pub struct IdRenderer {
    default: Option<Vec<u8>>,
    hex: bool,
    held: Vec<u8>,
}

impl IdRenderer {
    pub fn new(ctx: &Context) -> Result<IdRenderer, FilterError> {
        let (default, hex) = id_settings(ctx).map_err(|e| FilterError(format!("build-id: {e}")))?;
        Ok(IdRenderer {
            default,
            hex,
            held: Vec::new(),
        })
    }

    /// The output for `piece`, holding back an incomplete directive at its
    /// end.
    pub fn update(&mut self, piece: &[u8]) -> Result<Vec<u8>, FilterError> {
        self.held.extend_from_slice(piece);
        let cut = complete_prefix(&self.held);
        let rest = self.held.split_off(cut);
        let done = std::mem::replace(&mut self.held, rest);
        self.expand(&done)
    }

    /// The output for what is still held at the end of the body.
    pub fn finish(&mut self) -> Result<Vec<u8>, FilterError> {
        let done = std::mem::take(&mut self.held);
        self.expand(&done)
    }

    fn expand(&self, b: &[u8]) -> Result<Vec<u8>, FilterError> {
        expand_ids(b, self.default.as_deref(), self.hex)
            .map(|o| o.unwrap_or_else(|| b.to_vec()))
            .map_err(|e| FilterError(format!("build-id: {e}")))
    }
}

/// Pushpin's "response content" filters over a response body (a stream
/// hold's own body, a no-hold response's, a next link's): `build-id`, run
/// once when any of the response's channels lists it, with the response's
/// meta and no channel prev-ids, so only `%(id)I` has an ID (`%I` is an
/// error there, as in Pushpin). `Ok(None)`: the body is unchanged.
/// Published messages go through [`run`] instead; a long-poll's timeout
/// body is sent as the backend gave it (Pushpin does not filter it).
pub fn response_body<'a>(
    channels: impl IntoIterator<Item = &'a Filters>,
    meta: &[(String, String)],
    body: &[u8],
) -> Result<Option<Vec<u8>>, FilterError> {
    if !channels
        .into_iter()
        .any(|f| f.names().contains(&Name::BuildId))
    {
        return Ok(None);
    }
    let ctx = Context {
        sub_meta: meta,
        pub_meta: &[],
        channels: None,
    };
    let mut r = IdRenderer::new(&ctx)?;
    let mut out = r.update(body)?;
    out.extend_from_slice(&r.finish()?);
    Ok((out[..] != body[..]).then_some(out))
}

/// How much of `b` ends with complete directives: a trailing `%`, `%(...`
/// or `%(...)` without its letter is left for the next piece.
fn complete_prefix(b: &[u8]) -> usize {
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            None => return i,
            Some(b'(') => {
                let mut j = i + 2;
                loop {
                    match b.get(j) {
                        None => return i,
                        Some(b'\\') => {
                            if j + 1 >= b.len() {
                                return i;
                            }
                            j += 2;
                        }
                        Some(b')') => break,
                        Some(_) => j += 1,
                    }
                }
                if j + 1 >= b.len() {
                    return i;
                }
                i = j + 2;
            }
            Some(_) => i += 2,
        }
    }
    b.len()
}

/// Fuzz invariant over the GRIP inputs of subscription filters: whatever
/// the bytes, nothing panics; a filter chain's verdict is deterministic;
/// `build-id` gives the same output piece by piece as whole; a control
/// message or a Grip-Set-Meta / Grip-Channel parameter list is accepted or
/// refused with a one-line reason; a body patch applies to any body.
#[doc(hidden)]
pub fn check_fuzz_invariants(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xff);
    let text = |p: Option<&[u8]>| String::from_utf8_lossy(p.unwrap_or(b"")).into_owned();
    let content = Bytes::copy_from_slice(parts.next().unwrap_or(b""));
    let (k, v) = (text(parts.next()), text(parts.next()));
    let rest = parts.next().unwrap_or(b"");
    let sub = vec![
        (k.clone(), v.clone()),
        ("id_format".to_string(), v.clone()),
        ("user".to_string(), k.clone()),
    ];
    let publ = vec![
        ("sender".to_string(), k.clone()),
        ("skip_users".to_string(), v.clone()),
        ("require_sub".to_string(), k.clone()),
    ];
    let chans: Vec<(String, Option<String>)> = vec![(k.clone(), Some(v.clone()))];
    let ctx = Context {
        sub_meta: &sub,
        pub_meta: &publ,
        channels: Some(&chans),
    };
    for names in [
        &[Name::VarSubst][..],
        &[Name::BuildId],
        &[Name::SkipSelf, Name::SkipUsers, Name::RequireSub],
        &[Name::BuildId, Name::VarSubst],
    ] {
        let f = Filters::from_names(names.to_vec());
        let a = run(&f, &ctx, &content);
        assert_eq!(a, run(&f, &ctx, &content));
        if let Ok(Verdict::Rewritten(b)) = &a {
            assert_ne!(b[..], content[..]);
        }
        if let Err(e) = &a {
            assert!(!e.0.is_empty());
        }
    }
    if let Ok(mut whole) = IdRenderer::new(&ctx) {
        let all = whole.update(&content).and_then(|mut a| {
            whole.finish().map(|b| {
                a.extend(b);
                a
            })
        });
        let cut = rest.first().map_or(0, |&c| usize::from(c)) % (content.len() + 1);
        let mut split = IdRenderer::new(&ctx).expect("same settings");
        let pieces = split.update(&content[..cut]).and_then(|mut a| {
            a.extend(split.update(&content[cut..])?);
            a.extend(split.finish()?);
            Ok(a)
        });
        if let (Ok(a), Ok(b)) = (&all, &pieces) {
            assert_eq!(a, b, "split at {cut}");
        }
        assert_eq!(all.is_ok(), pieces.is_ok(), "split at {cut}");
    }
    for input in [&content[..], rest] {
        match super::wscontrol::parse(input) {
            Ok(_) => {}
            Err(e) => assert!(!e.is_empty() && !e.contains('\n')),
        }
        let s = String::from_utf8_lossy(input);
        for part in super::grip::split_list(&s) {
            if let Err(e) = super::grip::parse_params(part) {
                assert!(!e.is_empty());
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
            if let Ok(p) = super::bodypatch::BodyPatch::parse(v) {
                let _ = p.apply(&content);
                let _ = p.apply(rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn chans(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(c, p)| (c.to_string(), p.map(str::to_string)))
            .collect()
    }

    fn filters(names: &[&str]) -> Filters {
        Filters::parse(names.iter().copied(), "c").expect("known filters")
    }

    fn verdict(
        names: &[&str],
        sub: &[(&str, &str)],
        publ: &[(&str, &str)],
        channels: &[(&str, Option<&str>)],
        content: &str,
    ) -> Result<Verdict, FilterError> {
        let (sub, publ, ch) = (m(sub), m(publ), chans(channels));
        let ctx = Context {
            sub_meta: &sub,
            pub_meta: &publ,
            channels: Some(&ch),
        };
        run(
            &filters(names),
            &ctx,
            &Bytes::copy_from_slice(content.as_bytes()),
        )
    }

    fn text(v: Result<Verdict, FilterError>) -> String {
        match v {
            Ok(Verdict::Send) => "SEND".into(),
            Ok(Verdict::Drop) => "DROP".into(),
            Ok(Verdict::Rewritten(b)) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("ERR {e}"),
        }
    }

    #[test]
    fn names_parse_and_refuse_by_name() {
        for n in Name::ALL {
            assert_eq!(Name::parse(n.as_str()), Ok(n));
        }
        for (name, needle) in [
            ("http-check", "filter 'http-check' is not supported"),
            (
                "http-modify",
                "'http-modify' is not supported (a Pushpin 2.0 filter",
            ),
            ("Skip-Self", "unknown filter 'Skip-Self'"),
            ("", "unknown filter ''"),
            ("a\nb", "unknown filter 'a\\nb'"),
        ] {
            let e = Name::parse(name).expect_err(name);
            assert!(e.contains(needle), "{name}: {e}");
            assert!(!e.contains('\n'));
        }
        let six = ["skip-self"; 6];
        let e = Filters::parse(six.iter().copied(), "room").expect_err("six");
        assert_eq!(e, "too many filters for channel 'room' (at most 5)");
        assert_eq!(
            Filters::parse(["skip-self"; 5].iter().copied(), "room")
                .expect("five")
                .names()
                .len(),
            5
        );
    }

    #[test]
    fn table() {
        let none: &[(&str, &str)] = &[];
        let room: &[(&str, Option<&str>)] = &[("room", None)];
        for (names, sub, publ, channels, content, want) in [
            // skip-self
            (
                &["skip-self"][..],
                &[("user", "alice")][..],
                &[("sender", "alice")][..],
                room,
                "x",
                "DROP",
            ),
            (
                &["skip-self"],
                &[("user", "bob")],
                &[("sender", "alice")],
                room,
                "x",
                "SEND",
            ),
            (
                &["skip-self"],
                &[("user", "")],
                &[("sender", "")],
                room,
                "x",
                "SEND",
            ),
            (
                &["skip-self"],
                none,
                &[("sender", "alice")],
                room,
                "x",
                "SEND",
            ),
            (
                &["skip-self"],
                &[("user", "Alice")],
                &[("sender", "alice")],
                room,
                "x",
                "SEND",
            ),
            // skip-users
            (
                &["skip-users"],
                &[("user", "bob")],
                &[("skip_users", "alice, bob ,carol")],
                room,
                "x",
                "DROP",
            ),
            (
                &["skip-users"],
                &[("user", "dave")],
                &[("skip_users", "alice, bob")],
                room,
                "x",
                "SEND",
            ),
            (
                &["skip-users"],
                &[("user", "")],
                &[("skip_users", ",,")],
                room,
                "x",
                "SEND",
            ),
            (
                &["skip-users"],
                none,
                &[("skip_users", "alice")],
                room,
                "x",
                "SEND",
            ),
            // require-sub
            (
                &["require-sub"],
                none,
                &[("require_sub", "vip")],
                room,
                "x",
                "DROP",
            ),
            (
                &["require-sub"],
                none,
                &[("require_sub", "vip")],
                &[("room", None), ("vip", Some("3"))][..],
                "x",
                "SEND",
            ),
            (
                &["require-sub"],
                none,
                &[("require_sub", "")],
                room,
                "x",
                "SEND",
            ),
            (&["require-sub"], none, none, room, "x", "SEND"),
            // var-subst
            (
                &["var-subst"],
                &[("name", "Ann")],
                none,
                room,
                "hello %(name)s\n",
                "hello Ann\n",
            ),
            (
                &["var-subst"],
                &[("name", "Ann")],
                none,
                room,
                "100%% sure",
                "100% sure",
            ),
            (
                &["var-subst"],
                &[("name", "Ann")],
                none,
                room,
                "no directives",
                "SEND",
            ),
            (
                &["var-subst"],
                none,
                none,
                room,
                "%(nope)s",
                "ERR var-subst: no such variable 'nope' at position 7",
            ),
            (
                &["var-subst"],
                &[("a", "1")],
                none,
                room,
                "%s",
                "ERR var-subst: directive 's' requires an argument at position 1",
            ),
            (
                &["var-subst"],
                &[("a", "1")],
                none,
                room,
                "%(a)d",
                "ERR var-subst: unknown directive 'd' at position 4",
            ),
            (
                &["var-subst"],
                &[("a", "1")],
                none,
                room,
                "50%",
                "ERR var-subst: expected a directive after '%' at position 2",
            ),
            (
                &["var-subst"],
                &[("a", "1")],
                none,
                room,
                "%(a",
                "ERR var-subst: unterminated field starting at position 1",
            ),
            (
                &["var-subst"],
                &[("a", "1")],
                none,
                room,
                "%(a)",
                "ERR var-subst: expected a directive after ')' at position 3",
            ),
            (
                &["var-subst"],
                &[("a", "1")],
                none,
                room,
                "%1",
                "ERR var-subst: unknown directive '1' at position 1",
            ),
            (
                &["var-subst"],
                &[("a)b", "x")],
                none,
                room,
                "%(a\\)b)s",
                "x",
            ),
            // build-id
            (
                &["build-id"],
                &[("id_format", "%(c)s")],
                none,
                &[("c", Some("7"))][..],
                "id=%I\n",
                "id=7\n",
            ),
            (
                &["build-id"],
                &[("id_format", "%(c)s"), ("id_encoding", "hex")],
                none,
                &[("c", Some("7"))][..],
                "id=%I",
                "id=37",
            ),
            (
                &["build-id"],
                &[("id_format", "%(c)s")],
                none,
                &[("c", Some("7"))][..],
                "id=%(lit)I",
                "id=lit",
            ),
            (
                &["build-id"],
                &[("id_format", "x-%(a)s-%(b)s")],
                none,
                &[("a", Some("1")), ("b", Some("2"))][..],
                "%I",
                "x-1-2",
            ),
            (
                &["build-id"],
                &[("id_format", "%(c)s")],
                none,
                &[("c", None)][..],
                "%I",
                "ERR build-id: failed to render ID: no such variable 'c' at position 4",
            ),
            (
                &["build-id"],
                &[("id_format", "%(d)s")],
                none,
                &[("c", Some("1"))][..],
                "%I",
                "ERR build-id: failed to render ID: no such variable 'd' at position 4",
            ),
            (
                &["build-id"],
                none,
                none,
                room,
                "plain",
                "ERR build-id: no sub meta 'id_format'",
            ),
            (
                &["build-id"],
                &[("id_format", "x"), ("id_encoding", "b64")],
                none,
                room,
                "%I",
                "ERR build-id: unsupported encoding: b64",
            ),
            (
                &["build-id"],
                &[("id_format", "%(c)s")],
                none,
                &[("c", Some("7"))][..],
                "%s",
                "ERR build-id: unknown directive 's' at position 1",
            ),
            // chains: order matters, a drop ends the chain before an error
            (
                &["skip-self", "var-subst"],
                &[("user", "a")],
                &[("sender", "a")],
                room,
                "%(nope)s",
                "DROP",
            ),
            (
                &["var-subst", "skip-self"],
                &[("user", "a")],
                &[("sender", "a")],
                room,
                "%(nope)s",
                "ERR var-subst: no such variable 'nope' at position 7",
            ),
            (
                &["var-subst", "build-id"],
                &[("fmt", "%I"), ("id_format", "%(c)s")],
                none,
                &[("c", Some("9"))][..],
                "%(fmt)s",
                "9",
            ),
            (
                &["build-id", "var-subst"],
                &[("id_format", "%(c)s"), ("n", "N")],
                none,
                &[("c", Some("9"))][..],
                "%I %%(n)s",
                "9 N",
            ),
        ] {
            let got = text(verdict(names, sub, publ, channels, content));
            assert_eq!(got, want, "{names:?} {sub:?} {publ:?} {content:?}");
        }
    }

    #[test]
    fn build_id_without_channels_needs_an_explicit_id() {
        let sub = m(&[("id_format", "%(c)s")]);
        let ctx = Context {
            sub_meta: &sub,
            pub_meta: &[],
            channels: None,
        };
        let f = filters(&["build-id"]);
        let run_on = |s: &str| text(run(&f, &ctx, &Bytes::copy_from_slice(s.as_bytes())));
        assert_eq!(run_on("%(abc)I"), "abc");
        assert_eq!(
            run_on("%I"),
            "ERR build-id: no ID specified and no default ID in context at position 1"
        );
    }

    #[test]
    fn unchanged_content_is_not_copied() {
        let sub = m(&[("name", "x")]);
        let ctx = Context {
            sub_meta: &sub,
            pub_meta: &[],
            channels: None,
        };
        // Directives that expand to themselves are still "Send".
        let same = Bytes::from_static(b"%(name)s");
        let sub2 = m(&[("name", "%(name)s")]);
        let ctx2 = Context {
            sub_meta: &sub2,
            ..ctx
        };
        assert_eq!(
            run(&filters(&["var-subst"]), &ctx2, &same),
            Ok(Verdict::Send)
        );
        let plain = Bytes::from_static(b"plain");
        assert_eq!(
            run(&filters(&["var-subst", "skip-self"]), &ctx2, &plain),
            Ok(Verdict::Send)
        );
        assert_eq!(run(&Filters::NONE, &ctx2, &plain), Ok(Verdict::Send));
    }

    #[test]
    fn content_filters_must_match_exactly() {
        use Name::*;
        let f = filters(&["skip-self", "var-subst", "build-id"]);
        assert!(f.matches_content_filters(&[VarSubst, BuildId]));
        assert!(!f.matches_content_filters(&[BuildId, VarSubst]));
        assert!(!f.matches_content_filters(&[VarSubst]));
        assert!(!f.matches_content_filters(&[]));
        assert!(filters(&["skip-self"]).matches_content_filters(&[]));
        assert!(Filters::NONE.matches_content_filters(&[]));
        assert!(!Filters::NONE.matches_content_filters(&[VarSubst]));
        assert!(f.rewrites() && !filters(&["skip-users"]).rewrites());
    }

    #[test]
    fn fuzz_invariant_holds_on_samples() {
        for sample in [
            &b""[..],
            b"%I %(x)s \xffuser\xff%(c)s\xff\x03",
            b"{\"type\":\"subscribe\",\"channel\":\"c\"}\xffk\xffv\xff[{\"op\":\"add\",\"path\":\"/a\",\"value\":1}]",
            b"%(\\\xff\xff\xff%",
            b"a=\"b, c\"; d\xff\xff\xff",
        ] {
            check_fuzz_invariants(sample);
        }
    }

    /// The piecewise renderer gives what the whole body gives, wherever
    /// the body is split.
    #[test]
    fn id_renderer_split_at_every_offset() {
        let sub = m(&[("id_format", "%(c)s")]);
        let ch = chans(&[("c", Some("42"))]);
        let ctx = Context {
            sub_meta: &sub,
            pub_meta: &[],
            channels: Some(&ch),
        };
        let body = b"a %I b %(x\\)y)I c %% d %(z)I".as_slice();
        let mut whole = IdRenderer::new(&ctx).expect("settings");
        let mut want = whole.update(body).expect("whole");
        want.extend(whole.finish().expect("end"));
        assert_eq!(want, b"a 42 b x)y c % d z");
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let mut r = IdRenderer::new(&ctx).expect("settings");
                let mut got = r.update(&body[..a]).expect("1");
                got.extend(r.update(&body[a..b]).expect("2"));
                got.extend(r.update(&body[b..]).expect("3"));
                got.extend(r.finish().expect("end"));
                assert_eq!(got, want, "split at {a},{b}");
            }
        }
        let mut r = IdRenderer::new(&ctx).expect("settings");
        assert_eq!(r.update(b"x %(").expect("held"), b"x ");
        assert!(r.finish().is_err(), "an unterminated directive at the end");
    }

    /// A response body goes through `build-id` alone, once, without
    /// channel prev-ids: `%(id)I` works, `%I` is an error, as in Pushpin.
    #[test]
    fn response_bodies_take_build_id_without_prev_ids() {
        let run = |lists: &[&[&str]], meta: &[(&str, &str)], body: &str| {
            let f: Vec<Filters> = lists.iter().map(|l| filters(l)).collect();
            match response_body(&f, &m(meta), body.as_bytes()) {
                Ok(None) => "SAME".to_string(),
                Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => format!("ERR {e}"),
            }
        };
        let fmt = [("id_format", "%(c)s")];
        let hex = [("id_format", "x"), ("id_encoding", "hex")];
        for (lists, meta, body, want) in [
            (&[][..], &fmt[..], "%(7)I", "SAME"),
            (
                &[&["var-subst", "skip-self"][..]][..],
                &fmt[..],
                "%(7)I",
                "SAME",
            ),
            (&[&["build-id"][..]][..], &fmt[..], "id=%(7)I\n", "id=7\n"),
            (
                &[&["skip-self"][..], &["build-id", "build-id"][..]][..],
                &fmt[..],
                "%(a)I%(b)I",
                "ab",
            ),
            (&[&["build-id"][..]][..], &hex[..], "%(7)I", "37"),
            (&[&["build-id"][..]][..], &fmt[..], "no directive", "SAME"),
            (&[&["build-id"][..]][..], &fmt[..], "%%", "%"),
            (
                &[&["build-id"][..]][..],
                &fmt[..],
                "%I",
                "ERR build-id: no ID specified and no default ID in context at position 1",
            ),
            (
                &[&["build-id"][..]][..],
                &[][..],
                "x",
                "ERR build-id: no sub meta 'id_format'",
            ),
            (
                &[&["build-id"][..]][..],
                &[("id_format", "a"), ("id_encoding", "b64")][..],
                "x",
                "ERR build-id: unsupported encoding: b64",
            ),
            (
                &[&["build-id"][..]][..],
                &fmt[..],
                "%(x",
                "ERR build-id: unterminated field starting at position 1",
            ),
        ] {
            assert_eq!(run(lists, meta, body), want, "{lists:?} {body:?}");
        }
    }
}
