//! `http-response` `body-patch`: an RFC 6902 JSON Patch that a publish
//! applies to each long-poll's own held response body (Pushpin 1.41,
//! `httpsession.cpp` `applyBodyPatch`).
//!
//! As Pushpin: the held body must be a JSON object or array; the result is
//! compact JSON with object keys sorted, followed by the held body's line
//! ending (`\r\n` or `\n`) if it had one; and when the body is not JSON or
//! the patch does not apply, the subscriber gets an empty body (with the
//! published status and headers). Unlike Pushpin, corepin checks the
//! operations when the publish arrives (Pushpin only checks that
//! `body-patch` is a list), so a malformed patch is a 400, not a silent
//! empty body later; as Pushpin, a path must start with `/` and have no
//! empty reference token.

use bytes::Bytes;
use serde_json::Value;

/// A checked patch, ready to apply to any number of bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyPatch(json_patch::Patch);

impl Eq for BodyPatch {}

/// Checks one JSON Pointer as Pushpin's `JsonPointer` reads it.
fn check_pointer(p: &str) -> Result<(), String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "{:?}: a path must start with '/' (the whole document cannot be patched)",
            p
        ));
    };
    let mut chars = rest.split('/');
    if chars.any(str::is_empty) {
        return Err(format!("{p:?}: a reference token is empty"));
    }
    Ok(())
}

impl BodyPatch {
    /// Checks a `body-patch` value: a list of operations, each with a
    /// known `op`, the fields it needs, and paths Pushpin accepts.
    /// Errors name the operation (`[2].path: ...`).
    pub fn parse(v: Value) -> Result<BodyPatch, String> {
        let Value::Array(ops) = &v else {
            return Err("must be a list of JSON Patch operations".into());
        };
        for (i, op) in ops.iter().enumerate() {
            let Some(o) = op.as_object() else {
                return Err(format!("[{i}]: must be an object"));
            };
            let kind = match o.get("op") {
                Some(Value::String(k)) => k.as_str(),
                Some(_) => return Err(format!("[{i}].op: must be a string")),
                None => return Err(format!("[{i}].op: missing")),
            };
            let (needs_value, needs_from) = match kind {
                "add" | "replace" | "test" => (true, false),
                "remove" => (false, false),
                "move" | "copy" => (false, true),
                other => {
                    return Err(format!(
                        "[{i}].op: unknown operation '{}' (add, remove, replace, move, copy, test)",
                        other.escape_debug()
                    ))
                }
            };
            let mut known = vec!["op", "path"];
            if needs_value {
                known.push("value");
            }
            if needs_from {
                known.push("from");
            }
            if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(format!(
                    "[{i}].{}: unknown field for op '{kind}' (expected {})",
                    k.escape_debug(),
                    known.join(", ")
                ));
            }
            for (key, needed) in [("path", true), ("from", needs_from)] {
                match o.get(key) {
                    Some(Value::String(p)) => {
                        check_pointer(p).map_err(|e| format!("[{i}].{key}: {e}"))?
                    }
                    Some(_) => return Err(format!("[{i}].{key}: must be a string")),
                    None if needed => return Err(format!("[{i}].{key}: missing")),
                    None => {}
                }
            }
            if needs_value && !o.contains_key("value") {
                return Err(format!("[{i}].value: missing"));
            }
        }
        serde_json::from_value::<json_patch::Patch>(v)
            .map(BodyPatch)
            .map_err(|e| format!("is not a JSON Patch: {e}"))
    }

    /// The body a long-poll holding `held` is answered with: the patched
    /// document, or empty when `held` is not a JSON object or array or the
    /// patch does not apply to it.
    pub fn apply(&self, held: &[u8]) -> Bytes {
        let Ok(mut doc) = serde_json::from_slice::<Value>(held) else {
            return Bytes::new();
        };
        if !(doc.is_object() || doc.is_array()) {
            return Bytes::new();
        }
        if json_patch::patch_unsafe(&mut doc, &self.0).is_err() {
            return Bytes::new();
        }
        // serde_json's maps are sorted (the preserve_order feature is off),
        // so this is compact JSON with sorted keys, as Pushpin writes it.
        let Ok(mut out) = serde_json::to_vec(&doc) else {
            return Bytes::new();
        };
        if held.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        } else if held.ends_with(b"\n") {
            out.push(b'\n');
        }
        Bytes::from(out)
    }

    /// Bytes this patch holds, roughly (for publish memory accounting).
    pub fn cost(&self) -> usize {
        serde_json::to_vec(&self.0).map_or(0, |v| v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> Result<BodyPatch, String> {
        BodyPatch::parse(serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn applies_like_pushpin() {
        let p = patch(
            r#"[{"op":"replace","path":"/n","value":1},{"op":"add","path":"/a/-","value":2},
                {"op":"add","path":"/b~1c","value":{"z":1,"y":2}}]"#,
        )
        .expect("valid");
        for (held, want) in [
            (
                &b"{\"n\":0,\"a\":[1]}\n"[..],
                &b"{\"a\":[1,2],\"b/c\":{\"y\":2,\"z\":1},\"n\":1}\n"[..],
            ),
            (
                b"{\"n\":0,\"a\":[1]}\r\n",
                b"{\"a\":[1,2],\"b/c\":{\"y\":2,\"z\":1},\"n\":1}\r\n",
            ),
            (
                b" {\"a\":[], \"n\":null}",
                b"{\"a\":[2],\"b/c\":{\"y\":2,\"z\":1},\"n\":1}",
            ),
            // Not JSON, not a container, or the patch fails: empty.
            (b"not json\n", b""),
            (b"\"a string\"", b""),
            (b"{\"n\":0}", b""),
        ] {
            assert_eq!(
                &p.apply(held)[..],
                want,
                "{}",
                String::from_utf8_lossy(held)
            );
        }
        let t = patch(r#"[{"op":"test","path":"/n","value":0},{"op":"remove","path":"/n"}]"#)
            .expect("valid");
        assert_eq!(&t.apply(b"{\"n\":0,\"k\":1}")[..], b"{\"k\":1}");
        assert_eq!(&t.apply(b"{\"n\":5}")[..], b"", "a failed test empties");
        let mv = patch(
            r#"[{"op":"move","from":"/a","path":"/b"},{"op":"copy","from":"/b","path":"/c"}]"#,
        )
        .expect("valid");
        assert_eq!(&mv.apply(b"[0]")[..], b"", "no /a in an array");
        assert_eq!(&mv.apply(b"{\"a\":1}")[..], b"{\"b\":1,\"c\":1}");
    }

    #[test]
    fn refuses_what_pushpin_would_fail_later() {
        for (json, needle) in [
            (r#"{}"#, "must be a list"),
            (r#"[1]"#, "[0]: must be an object"),
            (r#"[{"path":"/a"}]"#, "[0].op: missing"),
            (
                r#"[{"op":"merge","path":"/a"}]"#,
                "[0].op: unknown operation 'merge'",
            ),
            (r#"[{"op":"add","path":"/a"}]"#, "[0].value: missing"),
            (r#"[{"op":"move","path":"/a"}]"#, "[0].from: missing"),
            (
                r#"[{"op":"add","path":"","value":1}]"#,
                "[0].path: \"\": a path must start with '/'",
            ),
            (r#"[{"op":"remove","path":"a"}]"#, "must start with '/'"),
            (
                r#"[{"op":"remove","path":"/"}]"#,
                "[0].path: \"/\": a reference token is empty",
            ),
            (
                r#"[{"op":"remove","path":"/a//b"}]"#,
                "a reference token is empty",
            ),
            (
                r#"[{"op":"copy","from":"","path":"/a"}]"#,
                "[0].from: \"\": a path must start",
            ),
            (
                r#"[{"op":"remove","path":5}]"#,
                "[0].path: must be a string",
            ),
            (
                r#"[{"op":"remove","path":"/a","value":1}]"#,
                "[0].value: unknown field for op 'remove'",
            ),
        ] {
            let e = patch(json).expect_err(json);
            assert!(e.contains(needle), "{json}: {e}");
        }
        assert!(patch("[]").is_ok(), "an empty patch re-serialises the body");
        assert_eq!(
            &patch("[]").expect("valid").apply(b"{\"b\":1, \"a\":2}\n")[..],
            b"{\"a\":2,\"b\":1}\n"
        );
    }
}
