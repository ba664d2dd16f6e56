//! Reading bodies up to a cap.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::Body as _;
use http_body_util::BodyExt;

/// A body read up to a cap.
pub(crate) enum Limited {
    /// The whole body (trailers are not kept).
    Complete(Bytes),
    /// The body is longer than the cap: what was read, and the rest, unread.
    TooLarge { prefix: Bytes, rest: Body },
}

/// Reads `body` until it ends or exceeds `limit` bytes.
pub(crate) async fn read_limited(mut body: Body, limit: usize) -> Result<Limited, axum::Error> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(Limited::TooLarge {
            prefix: Bytes::new(),
            rest: body,
        });
    }
    // Most bodies are one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let read = first.as_ref().map_or(0, Bytes::len) + more.len();
        if read + data.len() > limit {
            let mut prefix = BytesMut::with_capacity(read + data.len());
            prefix.extend_from_slice(first.as_deref().unwrap_or_default());
            prefix.extend_from_slice(&more);
            prefix.extend_from_slice(&data);
            return Ok(Limited::TooLarge {
                prefix: prefix.freeze(),
                rest: body,
            });
        }
        match &first {
            None => first = Some(data),
            Some(_) => more.extend_from_slice(&data),
        }
    }
    Ok(Limited::Complete(match first {
        None => Bytes::new(),
        Some(first) if more.is_empty() => first,
        Some(first) => {
            let mut all = BytesMut::with_capacity(first.len() + more.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&more);
            all.freeze()
        }
    }))
}

/// A body that yields `prefix` and then the rest of `rest`.
pub(crate) fn chain(prefix: Bytes, rest: Body) -> Body {
    let head = futures::stream::once(async move { Ok::<_, axum::Error>(prefix) });
    Body::from_stream(head.chain(rest.into_data_stream()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: &[&'static str]) -> Body {
        let chunks: Vec<Result<Bytes, axum::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn reads_whole_bodies_and_keeps_the_rest_of_long_ones() {
        match read_limited(chunked(&["ab", "cd", "e"]), 5)
            .await
            .expect("read")
        {
            Limited::Complete(bytes) => assert_eq!(bytes, "abcde"),
            Limited::TooLarge { .. } => panic!("fits"),
        }
        match read_limited(Body::from("abc"), 3).await.expect("read") {
            Limited::Complete(bytes) => assert_eq!(bytes, "abc"),
            Limited::TooLarge { .. } => panic!("fits"),
        }
        match read_limited(chunked(&["ab", "cd", "ef"]), 3)
            .await
            .expect("read")
        {
            Limited::Complete(_) => panic!("too large"),
            Limited::TooLarge { prefix, rest } => {
                assert_eq!(prefix, "abcd");
                let all = chain(prefix, rest)
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                assert_eq!(all, "abcdef");
            }
        }
        match read_limited(Body::from("abcdef"), 3).await.expect("read") {
            Limited::Complete(_) => panic!("too large"),
            Limited::TooLarge { prefix, rest } => {
                let all = chain(prefix, rest)
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                assert_eq!(all, "abcdef");
            }
        }
    }
}
