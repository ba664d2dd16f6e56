//! The `Idempotency-Key` header: parsing and validation.

use std::fmt;

use http::{HeaderMap, HeaderName};

/// The request header that carries the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1 to [`MAX_KEY_LEN`] printable ASCII characters.
///
/// The IETF draft sends the key as a structured-field string (`Idempotency-Key: "8e03978e"`);
/// many clients (and Stripe) send it bare (`Idempotency-Key: 8e03978e`). Both forms mean the same
/// key:
///
/// ```
/// use idempotency::IdempotencyKey;
///
/// let quoted = IdempotencyKey::parse(br#""order-42""#)?;
/// let bare = IdempotencyKey::parse(b"order-42")?;
/// assert_eq!(quoted, bare);
/// assert_eq!(bare.as_str(), "order-42");
/// assert!(IdempotencyKey::parse(b"").is_err());
/// assert!(IdempotencyKey::parse(b"caf\xc3\xa9").is_err()); // not printable ASCII
/// # Ok::<(), idempotency::KeyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` header was refused. The layer answers each with `400 Bad Request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The header appears more than once.
    #[error("the Idempotency-Key header must appear once")]
    Repeated,
    /// The key is empty.
    #[error("the Idempotency-Key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] characters.
    #[error("the Idempotency-Key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    /// The key has a character outside printable ASCII (`0x20..=0x7E`).
    #[error("the Idempotency-Key must be printable ASCII")]
    NonPrintable,
    /// A quoted key is not a well-formed string (no closing quote, a stray quote or backslash).
    #[error("the quoted Idempotency-Key is malformed")]
    Malformed,
}

impl IdempotencyKey {
    /// Parses one header value, bare or quoted. Surrounding spaces and tabs are ignored.
    ///
    /// # Errors
    ///
    /// [`KeyError::Empty`], [`KeyError::TooLong`], [`KeyError::NonPrintable`] or
    /// [`KeyError::Malformed`].
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        let value = value.trim_ascii();
        let key = match value {
            [b'"', inner @ .., b'"'] => unquote(inner)?,
            [b'"', ..] => return Err(KeyError::Malformed),
            bare => {
                if !bare.iter().all(|b| (0x20..=0x7e).contains(b)) {
                    return Err(KeyError::NonPrintable);
                }
                bare.to_vec()
            }
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        // Every byte was checked to be printable ASCII.
        String::from_utf8(key)
            .map(Self)
            .map_err(|_| KeyError::NonPrintable)
    }

    /// Reads the key from request headers: `Ok(None)` when the header is absent.
    ///
    /// # Errors
    ///
    /// [`KeyError::Repeated`] when the header appears more than once, or an error of
    /// [`parse`](Self::parse).
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        Self::parse(value.as_bytes()).map(Some)
    }

    /// The key, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The inside of a structured-field string: printable ASCII, with `\"` and `\\` escapes.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut key = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return Err(KeyError::Malformed),
            },
            b'"' => return Err(KeyError::Malformed),
            0x20..=0x7e => key.push(b),
            _ => return Err(KeyError::NonPrintable),
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_quoted_forms_are_the_same_key() {
        for (raw, key) in [
            (&b"abc"[..], "abc"),
            (b"\"abc\"", "abc"),
            (b"  abc\t", "abc"),
            (b" \"abc\" ", "abc"),
            (b"\"a\\\"b\\\\c\"", "a\"b\\c"),
            (b"a b", "a b"),
        ] {
            assert_eq!(
                IdempotencyKey::parse(raw).map(|k| k.0),
                Ok(key.to_owned()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn refuses_bad_keys() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let longest = "k".repeat(MAX_KEY_LEN);
        assert!(IdempotencyKey::parse(longest.as_bytes()).is_ok());
        assert!(IdempotencyKey::parse(format!("\"{longest}\"").as_bytes()).is_ok());
        for (raw, error) in [
            (&b""[..], KeyError::Empty),
            (b"   ", KeyError::Empty),
            (b"\"\"", KeyError::Empty),
            (long.as_bytes(), KeyError::TooLong),
            (b"a\x01b", KeyError::NonPrintable),
            (b"a\x7fb", KeyError::NonPrintable),
            (b"caf\xc3\xa9", KeyError::NonPrintable),
            (b"\"a\tb\"", KeyError::NonPrintable),
            (b"\"abc", KeyError::Malformed),
            (b"\"", KeyError::Malformed),
            (b"\"a\"b\"", KeyError::Malformed),
            (b"\"a\\b\"", KeyError::Malformed),
        ] {
            assert_eq!(IdempotencyKey::parse(raw), Err(error), "{raw:?}");
        }
    }

    #[test]
    fn reads_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(None));
        headers.append(IDEMPOTENCY_KEY, "k1".parse().expect("value"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Ok(Some(IdempotencyKey("k1".into())))
        );
        headers.append(IDEMPOTENCY_KEY, "k1".parse().expect("value"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::Repeated)
        );
    }
}
