//! The request fingerprint: what makes a retry "the same request".

use std::fmt;

use http::{Method, Uri};
use sha2::{Digest, Sha256};

/// SHA-256 over a request's method, path, canonical query, content type and body.
///
/// Every field is framed with its length (and the query as a count of pairs, each name and
/// value framed alone, with a marker telling `a` from `a=`), so no two different requests can
/// produce the same byte stream: `?a=&a=b` and `?a=&b=` differ, and so do a body that ends where
/// the content type begins and one that does not.
///
/// - **Query**: split on `&`, each pair percent-decoded (`+` as a space, as HTML forms and
///   axum's `Query` read it), then sorted by name. Pairs with the same name keep their order,
///   since `?tag=a&tag=b` may mean a list. Empty pairs (`&&`) are dropped.
/// - **Content type**: lower-cased, whitespace removed.
/// - **Body**: the bytes, or with [canonical JSON](FingerprintOptions::canonical_json) the JSON
///   value re-serialized with sorted keys and no whitespace, so key order and formatting do not
///   matter (numbers are kept as parsed: `1` and `1.0` still differ).
///
/// ```
/// use idempotency::{Fingerprint, FingerprintOptions};
/// use http::{Method, Uri};
///
/// let options = FingerprintOptions::new().canonical_json(true);
/// let json = Some(&b"application/json"[..]);
/// let uri: Uri = "/orders?b=2&a=1".parse()?;
/// let same_uri: Uri = "/orders?a=1&b=2".parse()?;
/// let a = Fingerprint::compute(&Method::POST, &uri, json, br#"{"x": 1, "y": [true]}"#, options);
/// let b = Fingerprint::compute(&Method::POST, &same_uri, json, br#"{"y":[true],"x":1}"#, options);
/// assert_eq!(a, b);
/// # Ok::<(), http::uri::InvalidUri>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// How request bodies enter the [`Fingerprint`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FingerprintOptions {
    canonical_json: bool,
}

impl FingerprintOptions {
    /// Raw bodies: every byte counts.
    pub const fn new() -> Self {
        Self {
            canonical_json: false,
        }
    }

    /// Whether a JSON body (content type `application/json` or `*/*+json`) that parses is
    /// fingerprinted as canonical JSON, so key order and whitespace do not matter. A body that
    /// does not parse is fingerprinted raw. Default: `false`.
    pub const fn canonical_json(mut self, on: bool) -> Self {
        self.canonical_json = on;
        self
    }
}

impl Fingerprint {
    /// Fingerprints a request from its parts.
    pub fn compute(
        method: &Method,
        uri: &Uri,
        content_type: Option<&[u8]>,
        body: &[u8],
        options: FingerprintOptions,
    ) -> Self {
        let mut h = Framed(Sha256::new());
        h.bytes(b"idempotency-fingerprint-v1");
        h.bytes(method.as_str().as_bytes());
        h.bytes(uri.path().as_bytes());

        let pairs = canonical_query(uri.query().unwrap_or(""));
        h.len(pairs.len());
        for (name, value) in &pairs {
            h.bytes(name);
            match value {
                Some(value) => {
                    h.0.update([1]);
                    h.bytes(value);
                }
                None => h.0.update([0]),
            }
        }

        let content_type = content_type.map(|ct| {
            ct.iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(u8::to_ascii_lowercase)
                .collect::<Vec<u8>>()
        });
        match &content_type {
            Some(ct) => {
                h.0.update([1]);
                h.bytes(ct);
            }
            None => h.0.update([0]),
        }

        let canonical = options
            .canonical_json
            .then(|| content_type.as_deref().filter(|ct| is_json(ct)))
            .flatten()
            .and_then(|_| canonical_json(body));
        match canonical {
            Some(json) => {
                h.0.update([1]);
                h.bytes(&json);
            }
            None => {
                h.0.update([0]);
                h.bytes(body);
            }
        }
        Self(h.0.finalize().into())
    }

    /// A fingerprint from its 32 bytes (as a store returns it).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Length-prefixed writes into a hasher.
struct Framed(Sha256);

impl Framed {
    fn len(&mut self, n: usize) {
        self.0.update((n as u64).to_be_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.0.update(bytes);
    }
}

type Pair = (Vec<u8>, Option<Vec<u8>>);

fn canonical_query(query: &str) -> Vec<Pair> {
    let mut pairs: Vec<Pair> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (decode(name), Some(decode(value))),
            None => (decode(pair), None),
        })
        .collect();
    // Stable: repeated names keep their relative order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a malformed
/// escape is kept as written.
fn decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/json`, or any `type/subtype+json`, with or without parameters.
fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type.split(|&b| b == b';').next().unwrap_or(b"");
    essence == b"application/json" || essence.ends_with(b"+json")
}

/// The body as canonical JSON (sorted keys, no whitespace), or `None` if it does not parse.
fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&value, &mut out);
    Some(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            // Sorted explicitly: `serde_json::Map` keeps insertion order when another crate
            // enables its `preserve_order` feature.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Serializing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(method: Method, uri: &str, ct: Option<&str>, body: &str, json: bool) -> Fingerprint {
        Fingerprint::compute(
            &method,
            &uri.parse().expect("uri"),
            ct.map(str::as_bytes),
            body.as_bytes(),
            FingerprintOptions::new().canonical_json(json),
        )
    }

    fn post(uri: &str) -> Fingerprint {
        fp(Method::POST, uri, None, "", false)
    }

    #[test]
    fn query_framing_is_unambiguous() {
        assert_ne!(post("/x?a=&a=b"), post("/x?a=&b="));
        assert_ne!(post("/x?a"), post("/x?a="));
        assert_ne!(post("/x?a=b&c"), post("/x?a=b%26c"));
        assert_ne!(post("/x?ab=c"), post("/x?a=bc"));
        assert_ne!(post("/x?a=1&a=2"), post("/x?a=2&a=1"));
    }

    #[test]
    fn query_is_canonical() {
        assert_eq!(post("/x?b=2&a=1"), post("/x?a=1&b=2"));
        assert_eq!(post("/x?a=1&&b=2&"), post("/x?a=1&b=2"));
        assert_eq!(post("/x?a=%41+b"), post("/x?a=A%20b"));
        assert_eq!(post("/x?"), post("/x"));
        assert_eq!(post("/x?a=%zz"), post("/x?a=%25zz"));
        assert_eq!(post("/x?a=%4"), post("/x?a=%254"));
    }

    #[test]
    fn every_part_counts() {
        let base = fp(Method::POST, "/x?q=1", Some("text/plain"), "body", false);
        assert_eq!(
            base,
            fp(Method::POST, "/x?q=1", Some("Text/Plain "), "body", false)
        );
        for other in [
            fp(Method::PUT, "/x?q=1", Some("text/plain"), "body", false),
            fp(Method::POST, "/y?q=1", Some("text/plain"), "body", false),
            fp(Method::POST, "/x?q=2", Some("text/plain"), "body", false),
            fp(Method::POST, "/x?q=1", Some("text/csv"), "body", false),
            fp(Method::POST, "/x?q=1", None, "body", false),
            fp(Method::POST, "/x?q=1", Some("text/plain"), "body!", false),
        ] {
            assert_ne!(base, other);
        }
        // The content type and body cannot trade bytes.
        assert_ne!(
            fp(Method::POST, "/x", Some("a"), "bc", false),
            fp(Method::POST, "/x", Some("ab"), "c", false)
        );
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace_only() {
        let ct = Some("application/json; charset=utf-8");
        let a = fp(
            Method::POST,
            "/x",
            ct,
            r#"{"b": [1, {"d": 2, "c": null}], "a": "é"}"#,
            true,
        );
        let b = fp(
            Method::POST,
            "/x",
            ct,
            r#"{"a":"é","b":[1,{"c":null,"d":2}]}"#,
            true,
        );
        assert_eq!(a, b);
        let raw = fp(
            Method::POST,
            "/x",
            ct,
            r#"{"a":"é","b":[1,{"c":null,"d":2}]}"#,
            false,
        );
        assert_ne!(a, raw, "canonical and raw bodies are framed apart");
        assert_ne!(
            fp(Method::POST, "/x", ct, r#"{"a":1}"#, true),
            fp(Method::POST, "/x", ct, r#"{"a":1.0}"#, true)
        );
        assert_ne!(
            fp(Method::POST, "/x", ct, r#"[1,2]"#, true),
            fp(Method::POST, "/x", ct, r#"[2,1]"#, true)
        );
        let problem = Some("application/problem+json");
        assert_eq!(
            fp(Method::POST, "/x", problem, r#"{"b":1,"a":2}"#, true),
            fp(Method::POST, "/x", problem, r#"{"a":2,"b":1}"#, true)
        );
        // Not JSON by content type, or not parseable: raw.
        assert_ne!(
            fp(
                Method::POST,
                "/x",
                Some("text/plain"),
                r#"{"b":1,"a":2}"#,
                true
            ),
            fp(
                Method::POST,
                "/x",
                Some("text/plain"),
                r#"{"a":2,"b":1}"#,
                true
            )
        );
        assert_ne!(
            fp(Method::POST, "/x", ct, "{oops ", true),
            fp(Method::POST, "/x", ct, "{oops", true)
        );
    }

    #[test]
    fn displays_as_hex() {
        let text = post("/x").to_string();
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Fingerprint::from_bytes(*post("/x").as_bytes()), post("/x"));
    }
}
