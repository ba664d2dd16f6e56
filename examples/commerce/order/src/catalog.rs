//! Prices from the product service: `GET {base}/internal/v1/products/{id}` with the service API
//! key, read once when an order is placed (the order keeps the snapshot).

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use uuid::Uuid;

/// How many products are looked up at once for one order.
const CONCURRENCY: usize = 8;

/// The fields of the product service's answer the order service uses (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Product {
    pub(crate) id: Uuid,
    pub(crate) price_cents: i64,
    pub(crate) active: bool,
}

/// Why a product's price could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PriceError {
    /// The product service does not know it (404).
    #[error("unknown product {0}")]
    Unknown(Uuid),
    /// It exists but is not for sale.
    #[error("product {0} is not for sale")]
    Inactive(Uuid),
    /// The product service could not be reached, failed, or answered nonsense.
    #[error("product service: {0}")]
    Unavailable(String),
}

/// A client of the product service's internal API.
#[derive(Clone)]
pub(crate) struct Catalog {
    http: reqwest::Client,
}

impl Catalog {
    pub(crate) fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .build()?;
        Ok(Self { http })
    }

    async fn product(
        &self,
        base_url: &str,
        api_key: &str,
        id: Uuid,
    ) -> Result<Product, PriceError> {
        let url = format!(
            "{}/internal/v1/products/{id}",
            base_url.trim_end_matches('/')
        );
        let response = self
            .http
            .get(&url)
            .header("x-api-key", api_key)
            .send()
            .await
            .map_err(|e| PriceError::Unavailable(e.to_string()))?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => return Err(PriceError::Unknown(id)),
            status if !status.is_success() => {
                return Err(PriceError::Unavailable(format!("{url} answered {status}")));
            }
            _ => {}
        }
        let product: Product = response
            .json()
            .await
            .map_err(|e| PriceError::Unavailable(format!("{url}: unreadable answer: {e}")))?;
        if product.id != id || product.price_cents < 0 {
            return Err(PriceError::Unavailable(format!(
                "{url}: answered for product {} with price {}",
                product.id, product.price_cents
            )));
        }
        if !product.active {
            return Err(PriceError::Inactive(id));
        }
        Ok(product)
    }

    /// The products `ids`, in order, looked up a few at a time.
    pub(crate) async fn products(
        &self,
        base_url: &str,
        api_key: &str,
        ids: &[Uuid],
    ) -> Result<Vec<Product>, PriceError> {
        futures::stream::iter(ids.iter().copied())
            .map(|id| self.product(base_url, api_key, id))
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }
}
