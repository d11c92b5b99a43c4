//! Invariant: a publish body or a JSON GRIP instruction, whatever its
//! bytes, never panics the parser, and every response head it is accepted
//! into writes as exactly one well-formed head with the status, reason and
//! fields it was given (`codec::response::check_source_invariants`): no
//! source can split a client's response or add a header line.
//!
//! Each input is tried as is, and also cut at 0xFF bytes into the code,
//! reason, header names and values and body of one response, set into a
//! publish item and an instruction, so most runs reach the validator with
//! hostile strings rather than stopping at the JSON syntax.
#![no_main]

use corepin::codec::response::check_source_invariants;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    check_source_invariants(data);
    let mut parts = data.split(|&b| b == 0xff);
    let code = parts
        .next()
        .unwrap_or(b"")
        .iter()
        .fold(0u64, |a, &b| (a * 31 + u64::from(b)) % 100_000);
    let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let reason = parts.next().map(text);
    let body = parts.next().map(text).unwrap_or_default();
    let rest: Vec<String> = parts.map(text).collect();
    let pairs: Vec<[String; 2]> = rest
        .chunks(2)
        .map(|c| [c[0].clone(), c.get(1).cloned().unwrap_or_default()])
        .collect();
    let object: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|[n, v]| (n.clone(), json!(v)))
        .collect();
    for headers in [json!(pairs), json!(object)] {
        let response = json!({"code": code, "reason": reason, "headers": headers, "body": body});
        let publish = json!({"items": [{"channel": "c", "http-response": response}]});
        check_source_invariants(publish.to_string().as_bytes());
        let instruct = json!({"hold": {"channels": [{"name": "c"}]}, "response": response});
        check_source_invariants(instruct.to_string().as_bytes());
    }
});
