//! Product validation and the stock figures' version rule, without I/O.

/// The largest accepted price, in cents (10 million currency units): keeps order totals
/// (`quantity * price`) far from overflowing.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;
/// The longest SKU.
pub const MAX_SKU_LEN: usize = 64;
/// The longest name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 4000;

/// Why a request's product fields are not acceptable (the message is shown to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// A new product, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// Letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most
    /// [`MAX_SKU_LEN`] long.
    pub sku: String,
    /// Not blank (trimmed), at most [`MAX_NAME_LEN`] characters.
    pub name: String,
    /// Trimmed, at most [`MAX_DESCRIPTION_LEN`] characters.
    pub description: String,
    /// `1..=MAX_PRICE_CENTS`.
    pub price_cents: i64,
}

/// Changes to a product, validated; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new price.
    pub price_cents: Option<i64>,
    /// Listed (`true`) or withdrawn (`false`).
    pub active: Option<bool>,
}

/// Checks a SKU.
///
/// # Errors
///
/// [`Invalid`] saying what is wrong.
pub fn sku(sku: &str) -> Result<String, Invalid> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if sku.is_empty() || sku.len() > MAX_SKU_LEN {
        return Err(Invalid(format!(
            "sku must be 1 to {MAX_SKU_LEN} characters long"
        )));
    }
    if !sku.chars().all(valid_char) || !sku.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Invalid(
            "sku may hold only letters, digits, '.', '_' and '-', and starts with a letter or digit"
                .into(),
        ));
    }
    Ok(sku.to_owned())
}

/// Checks and trims a name.
///
/// # Errors
///
/// [`Invalid`] when it is blank or too long.
pub fn name(name: &str) -> Result<String, Invalid> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Invalid("name must not be blank".into()));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(Invalid(format!(
            "name must be at most {MAX_NAME_LEN} characters"
        )));
    }
    Ok(name.to_owned())
}

/// Checks and trims a description.
///
/// # Errors
///
/// [`Invalid`] when it is too long.
pub fn description(description: &str) -> Result<String, Invalid> {
    let description = description.trim();
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(Invalid(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    Ok(description.to_owned())
}

/// Checks a price.
///
/// # Errors
///
/// [`Invalid`] unless it is in `1..=MAX_PRICE_CENTS`.
pub fn price(price_cents: i64) -> Result<i64, Invalid> {
    if (1..=MAX_PRICE_CENTS).contains(&price_cents) {
        Ok(price_cents)
    } else {
        Err(Invalid(format!(
            "price_cents must be between 1 and {MAX_PRICE_CENTS}"
        )))
    }
}

/// Validates a new product.
///
/// # Errors
///
/// [`Invalid`] for the first field that is not acceptable.
pub fn new_product(
    sku_: &str,
    name_: &str,
    description_: &str,
    price_cents: i64,
) -> Result<NewProduct, Invalid> {
    Ok(NewProduct {
        sku: sku(sku_)?,
        name: name(name_)?,
        description: description(description_)?,
        price_cents: price(price_cents)?,
    })
}

/// Validates changes; at least one field must be given.
///
/// # Errors
///
/// [`Invalid`] for a field that is not acceptable, or when nothing would change.
pub fn changes(
    name_: Option<&str>,
    description_: Option<&str>,
    price_cents: Option<i64>,
    active: Option<bool>,
) -> Result<Changes, Invalid> {
    let changes = Changes {
        name: name_.map(name).transpose()?,
        description: description_.map(description).transpose()?,
        price_cents: price_cents.map(price).transpose()?,
        active,
    };
    if changes == Changes::default() {
        return Err(Invalid(
            "nothing to change: give name, description, price_cents or active".into(),
        ));
    }
    Ok(changes)
}

/// Whether stock figures at `incoming` version replace those held at `current`: only a
/// strictly newer version does, so redelivered and reordered events never move a copy back.
pub fn is_newer(current: Option<i64>, incoming: i64) -> bool {
    current.is_none_or(|current| incoming > current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_valid_product_and_trims_text() {
        assert_eq!(
            new_product("MUG-01", "  Mug ", " A mug. ", 1200),
            Ok(NewProduct {
                sku: "MUG-01".into(),
                name: "Mug".into(),
                description: "A mug.".into(),
                price_cents: 1200,
            })
        );
    }

    #[test]
    fn rejects_bad_skus() {
        for bad in ["", "-x", "a b", "é", "a/b", &"x".repeat(MAX_SKU_LEN + 1)] {
            assert!(sku(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "A.b_c-9", &"x".repeat(MAX_SKU_LEN)] {
            assert_eq!(sku(good).as_deref(), Ok(good));
        }
    }

    #[test]
    fn rejects_blank_or_long_text() {
        assert!(name("   ").is_err());
        assert!(name(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(name(&"é".repeat(MAX_NAME_LEN)).is_ok(), "counts characters");
        assert!(description(&"d".repeat(MAX_DESCRIPTION_LEN + 1)).is_err());
        assert_eq!(description(""), Ok(String::new()));
    }

    #[test]
    fn prices_are_positive_and_bounded() {
        for bad in [i64::MIN, -1, 0, MAX_PRICE_CENTS + 1] {
            assert!(price(bad).is_err(), "{bad}");
        }
        assert_eq!(price(1), Ok(1));
        assert_eq!(price(MAX_PRICE_CENTS), Ok(MAX_PRICE_CENTS));
    }

    #[test]
    fn changes_need_at_least_one_valid_field() {
        assert!(changes(None, None, None, None).is_err());
        assert!(changes(None, None, Some(-5), None).is_err());
        assert!(changes(Some(""), None, None, None).is_err());
        assert_eq!(
            changes(None, None, None, Some(false)),
            Ok(Changes {
                active: Some(false),
                ..Changes::default()
            })
        );
    }

    #[test]
    fn only_a_newer_version_replaces_stock_figures() {
        assert!(is_newer(None, 0));
        assert!(is_newer(Some(3), 4));
        assert!(!is_newer(Some(4), 4), "a redelivery changes nothing");
        assert!(!is_newer(Some(5), 4), "an older event changes nothing");
    }
}
