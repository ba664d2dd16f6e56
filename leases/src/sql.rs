//! The caller's SQL inside a statement this crate builds ([`Sql`]), and the values of its
//! parameters ([`Binds`]). The caller numbers its parameters from `$1` whatever the statement
//! binds itself: the crate renumbers them after its own and binds their values after its own, and
//! refuses, before anything reaches PostgreSQL, a fragment whose parameters are not exactly `$1`
//! to `$n` for `n` values bound.

use std::collections::BTreeSet;
use std::fmt;

use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, AssertSqlSafe, Encode, Postgres, Type};

use crate::{Error, Result};

type Bind = Box<dyn FnOnce(&mut PgArguments) -> std::result::Result<(), BoxDynError> + Send>;

/// The values of the caller's parameters, in order: the first is `$1`.
///
/// ```
/// let binds = leases::Binds::new().bind("orders").bind(42_i64);
/// assert_eq!(binds.len(), 2);
/// ```
#[derive(Default)]
pub struct Binds(Vec<Bind>);

impl Binds {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the value of the next parameter.
    #[must_use]
    pub fn bind<T>(mut self, value: T) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        self.0.push(Box::new(move |args| args.add(value)));
        self
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Binds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Binds").field(&self.0.len()).finish()
    }
}

/// A fragment of the caller's SQL (an assignment list, an `INSERT`, a whole statement) with its
/// parameters numbered from `$1`, and their values.
///
/// ```
/// let set = leases::Sql::new("last_error = $1, failed_at = $2")
///     .bind("broker unavailable")
///     .bind(chrono::Utc::now());
/// # let _ = set;
/// ```
#[derive(Debug)]
pub struct Sql {
    text: &'static str,
    binds: Binds,
}

impl Sql {
    /// `text`, SQL written by the crate's user (never input), with no values yet.
    pub fn new(text: &'static str) -> Self {
        Self {
            text,
            binds: Binds::new(),
        }
    }

    /// Adds the value of the next parameter (`$1` first).
    #[must_use]
    pub fn bind<T>(mut self, value: T) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        self.binds = self.binds.bind(value);
        self
    }

    /// The fragment with its parameters after `own` of the statement's, and its values.
    pub(crate) fn after(self, own: usize) -> Result<(String, Binds)> {
        let [text] = renumbered(&[self.text], own, self.binds.len())?;
        Ok((text, self.binds))
    }
}

/// A statement: `sql`, with `own` (the crate's values, for `$1` to `$k`) then `binds` (the
/// caller's, renumbered after them).
///
/// # Errors
///
/// [`Error::Database`] when a value cannot be encoded.
pub(crate) fn statement(
    sql: String,
    own: std::result::Result<PgArguments, BoxDynError>,
    binds: Binds,
) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>> {
    let args = own
        .and_then(|mut args| {
            binds
                .0
                .into_iter()
                .try_for_each(|bind| bind(&mut args))
                .map(|()| args)
        })
        .map_err(sqlx::Error::Encode)?;
    Ok(sqlx::query_with(AssertSqlSafe(sql), args))
}

/// `texts` with every parameter `$n` turned into `$(n + own)`; checks that together they use
/// exactly `$1` to `$count`. Parameters inside string literals, quoted identifiers, dollar-quoted
/// strings and comments are left alone.
pub(crate) fn renumbered<const N: usize>(
    texts: &[&str; N],
    own: usize,
    count: usize,
) -> Result<[String; N]> {
    let mut used = BTreeSet::new();
    let renumbered = texts.map(|text| shift(text, own, &mut used));
    let expected: BTreeSet<usize> = (1..=count).collect();
    if used != expected {
        let used: Vec<String> = used.iter().map(|n| format!("${n}")).collect();
        return Err(Error::InvalidStatement(format!(
            "the caller's SQL uses the parameters [{}] but {count} values were bound: number \
             them $1 to ${count}, each used",
            used.join(", ")
        )));
    }
    Ok(renumbered)
}

fn shift(text: &str, own: usize, used: &mut BTreeSet<usize>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let skip_to = match bytes[i] {
            b'\'' => {
                let escapes = i > 0 && matches!(bytes[i - 1], b'E' | b'e');
                closing_quote(bytes, i + 1, b'\'', escapes)
            }
            b'"' => closing_quote(bytes, i + 1, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                find(bytes, i + 2, b"\n").map_or(bytes.len(), |end| end + 1)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                find(bytes, i + 2, b"*/").map_or(bytes.len(), |end| end + 2)
            }
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits > 0 {
                    let n: usize = text[i + 1..i + 1 + digits].parse().unwrap_or(usize::MAX);
                    used.insert(n);
                    out.push_str(&format!("${}", n.saturating_add(own)));
                    i += 1 + digits;
                    continue;
                }
                dollar_quote_end(bytes, i)
            }
            _ => i + 1,
        };
        out.push_str(&text[i..skip_to]);
        i = skip_to;
    }
    out
}

/// Where a quoted string or identifier that starts before `from` ends (after its closing quote;
/// a doubled quote, or a backslash in an `E'...'` string, does not close it).
fn closing_quote(bytes: &[u8], mut from: usize, quote: u8, escapes: bool) -> usize {
    while from < bytes.len() {
        match bytes[from] {
            b'\\' if escapes => from += 2,
            b if b == quote && bytes.get(from + 1) == Some(&quote) => from += 2,
            b if b == quote => return from + 1,
            _ => from += 1,
        }
    }
    bytes.len()
}

/// Where the dollar-quoted string starting at `start` (`$tag$...$tag$`) ends, or `start + 1`
/// when the `$` starts none.
fn dollar_quote_end(bytes: &[u8], start: usize) -> usize {
    let tag_len = bytes[start + 1..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    let close = start + 1 + tag_len;
    if bytes.get(close) != Some(&b'$') {
        return start + 1;
    }
    let tag = &bytes[start..=close];
    find(bytes, close + 1, tag).map_or(bytes.len(), |end| end + tag.len())
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &'static str, own: usize, count: usize) -> Result<String> {
        renumbered(&[text], own, count).map(|[t]| t)
    }

    #[test]
    fn parameters_are_moved_after_the_statements_own() {
        assert_eq!(
            one("last_error = $1, failed_at = $2", 6, 2).expect("valid"),
            "last_error = $7, failed_at = $8"
        );
        assert_eq!(one("", 6, 0).expect("valid"), "");
        // Across several texts the parameters are numbered together.
        let [a, b] = renumbered(&["$1, $2", "x = $2 AND $3"], 3, 3).expect("valid");
        assert_eq!((a.as_str(), b.as_str()), ("$4, $5", "x = $5 AND $6"));
    }

    #[test]
    fn quotes_comments_and_dollar_quotes_are_left_alone() {
        let text = "a = '$1 it''s', b = E'\\'$2', \"c$1\" = $1 -- $2\n, d = $$ $2 $$, e = $t$ $2 $t$ /* $2 */";
        assert_eq!(
            one(text, 3, 1).expect("valid"),
            "a = '$1 it''s', b = E'\\'$2', \"c$1\" = $4 -- $2\n, d = $$ $2 $$, e = $t$ $2 $t$ /* $2 */"
        );
    }

    #[test]
    fn a_wrong_count_or_position_is_refused() {
        // Numbered the old way, after the statement's own parameters.
        assert!(matches!(
            one("last_error = $7", 6, 1),
            Err(Error::InvalidStatement(_))
        ));
        // A value bound but not used, a parameter without a value, a gap.
        assert!(one("a = $1", 6, 2).is_err());
        assert!(one("a = $1, b = $2", 6, 1).is_err());
        assert!(one("a = $1, b = $3", 6, 2).is_err());
    }
}
