//! The Redis grant store on its own, against a real redis-server: what the gRPC tests cannot
//! reach without waiting for days to pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::RedisServer;
use grant_broker::{
    adapters::{RedisGrantStore, RedisSettings},
    domain::{CallerId, GrantId, RequestId},
    ports::{GrantStore, Reservation},
};
use time::OffsetDateTime;
use uuid::Uuid;

fn id_at(at: OffsetDateTime) -> GrantId {
    let secs = u64::try_from(at.unix_timestamp()).unwrap();
    GrantId::from_uuid(Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, 0)))
}

#[tokio::test]
async fn the_caller_index_forgets_grants_older_than_the_retention() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&RedisSettings {
        url: redis.url(),
        key_prefix: "gb".into(),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        retention: Duration::from_secs(86_400),
        min_replicas: 0,
        replica_timeout: Duration::from_millis(100),
    })
    .unwrap();
    let caller = CallerId::parse("vendor-portal").unwrap();
    let day_one = OffsetDateTime::now_utc();
    let old = id_at(day_one);
    let recent = id_at(day_one + time::Duration::hours(20));
    let newest = id_at(day_one + time::Duration::days(3));
    for (id, now) in [(old, day_one), (recent, day_one + time::Duration::hours(20))] {
        let reservation = store
            .reserve(&caller, None, "fp", id, now, now + time::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(reservation, Reservation::New);
    }
    // Three days later, with one day of retention: both earlier entries are past it.
    let later = day_one + time::Duration::days(3);
    let request_id = RequestId::parse("r-1").unwrap();
    store
        .reserve(
            &caller,
            Some(&request_id),
            "fp",
            newest,
            later,
            later + time::Duration::hours(1),
        )
        .await
        .unwrap();
    let mut connection = redis.connection().await;
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg("gb:caller:{vendor-portal}:grants")
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(ids, [newest.to_string()]);

    // The request id is bound to the first grant that claimed it, with its fingerprint.
    let again = store
        .reserve(&caller, Some(&request_id), "other", old, later, later)
        .await
        .unwrap();
    assert_eq!(
        again,
        Reservation::Existing {
            grant_id: newest,
            fingerprint: "fp".into()
        }
    );
}
