//! Bad identifiers and configuration are refused with clear errors.

use super::*;

#[tokio::test]
async fn bad_identifiers_and_config_are_rejected_with_clear_errors() {
    let err = TableSpec::builder("jobs; DROP TABLE jobs")
        .build()
        .expect_err("rejected");
    assert!(err.to_string().contains("invalid table"), "{err}");
    let err = TableSpec::builder("jobs")
        .id_column("id) OR (1=1")
        .build()
        .expect_err("rejected");
    assert!(err.to_string().contains("invalid id column"), "{err}");

    let (db, spec) = jobs(1).await;
    let w = RowLeases::new(&spec, "w");
    let err = w
        .claim::<i64>(&db.pool, 1, Duration::ZERO)
        .await
        .expect_err("zero ttl");
    assert!(matches!(err, leases::Error::InvalidConfig(_)), "{err}");
    let err = LeaseKeeper::start(
        NamedLeases::new(),
        db.pool.clone(),
        "n",
        "o",
        MINUTE,
        MINUTE,
    )
    .expect_err("interval");
    assert!(err.to_string().contains("shorter than the ttl"), "{err}");
}
