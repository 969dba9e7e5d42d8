//! The audit log as evidence: `grant-broker audit verify` passes on what brokers wrote, and
//! finds every way of altering it: a deleted, edited or inserted entry, a deleted checkpoint, a
//! tampered or rolled-back record; the same for an exported archive, checked without Redis.

use std::{path::PathBuf, time::Duration};

use crate::common::*;
use grant_broker::{grpc::proto, ports::GrantRecords as _};
use time::OffsetDateTime;

/// A broker with a few grants' whole lives behind it (approved and issued, issued again,
/// revoked, an audit query), checkpointed in the middle, with entries after the checkpoint.
struct Logged {
    redis: RedisServer,
    _sts: FakeSts,
    server: Server,
    config: PathBuf,
    _dir: tempfile::TempDir,
    grants: Vec<String>,
}

async fn life_cycles() -> Logged {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grant-broker.toml");
    std::fs::write(&config, config_text(&settings)).unwrap();
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let store = redis.store();
    let mut grants = Vec::new();
    for n in 0..4 {
        let grant = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("life-{n}"))))
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        client
            .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
            .await
            .unwrap();
        grants.push(grant.id);
        if n == 1 {
            store
                .checkpoint_audit_log(Duration::ZERO, OffsetDateTime::now_utc())
                .await
                .unwrap();
        }
    }
    client
        .revoke_grant(authed(
            PORTAL_TOKEN,
            proto::RevokeGrantRequest {
                id: grants[0].clone(),
                reason: "done".into(),
                revoker: String::new(),
            },
        ))
        .await
        .unwrap();
    client
        .list_audit_events(authed(AUDITOR_TOKEN, proto::ListAuditEventsRequest::default()))
        .await
        .unwrap();
    assert!(
        store
            .checkpoint_audit_log(Duration::ZERO, OffsetDateTime::now_utc())
            .await
            .unwrap()
    );
    // Entries after the last checkpoint too.
    client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grants[1])))
        .await
        .unwrap();
    Logged {
        redis,
        _sts: sts,
        server,
        config,
        _dir: dir,
        grants,
    }
}

async fn verify(config: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let output = run_cli(args).await;
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The log's entries: id and fields.
async fn entries(redis: &RedisServer) -> Vec<(String, Vec<Vec<u8>>)> {
    redis::cmd("XRANGE")
        .arg("gb:{audit}:events")
        .arg("-")
        .arg("+")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap()
}

fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields
        .chunks(2)
        .find(|pair| pair[0] == name.as_bytes())
        .map(|pair| pair[1].as_slice())
}

async fn xdel(redis: &RedisServer, id: &str) {
    let deleted: i64 = redis::cmd("XDEL")
        .arg("gb:{audit}:events")
        .arg(id)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn audit_verify_passes_on_what_brokers_wrote() {
    let logged = life_cycles().await;
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok: "), "{out}");
    assert!(out.contains(" 0 problem(s)"), "{out}");
    assert!(counted(&out, "checkpoints") >= 2, "{out}");
    let whole = counted(&out, "entries");
    // `--since` walks from there: fewer entries, still whole. From halfway between the first
    // entry and the last (the summary names their stream ids, milliseconds since the epoch).
    let millis = |after: &str| -> i128 {
        let id = out.split(after).nth(1).unwrap().split_whitespace().next().unwrap();
        id.split('-').next().unwrap().parse().unwrap()
    };
    let (first, last) = (millis(" from "), millis(" to "));
    assert!(last > first + 1, "{out}");
    let later = OffsetDateTime::from_unix_timestamp_nanos((first + (last - first) / 2) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (code, out) = verify(&logged.config, &["--since", &later]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(counted(&out, "entries") < whole, "{out}");
}

/// A number the summary line of `audit verify` gives (`27 entries`, `2 checkpoints`).
fn counted(out: &str, what: &str) -> u64 {
    let summary = out.lines().last().unwrap_or_default();
    let before = summary
        .split(&format!(" {what}"))
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .unwrap_or_default();
    before.parse().unwrap_or_else(|_| panic!("no `{what}` in {summary}"))
}

/// Appends an entry by hand, as someone who can write to Redis would.
async fn xadd(redis: &RedisServer, fields: &[Vec<u8>]) {
    let mut add = redis::cmd("XADD");
    add.arg("gb:{audit}:events").arg("*");
    for value in fields {
        add.arg(value.as_slice());
    }
    let _: String = add.query_async(&mut redis.connection().await).await.unwrap();
}

#[tokio::test]
async fn audit_verify_finds_a_deleted_an_edited_and_an_inserted_entry() {
    // Deleted: an event entry covered by a checkpoint. Its writer's sequence has a gap, and the
    // checkpoint counts one entry more than the log holds.
    let logged = life_cycles().await;
    let all = entries(&logged.redis).await;
    let (id, _) = all.iter().find(|(_, fields)| field(fields, "g").is_some()).unwrap();
    xdel(&logged.redis, id).await;
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("entries were deleted"), "{out}");
    assert!(out.contains("of its entries between"), "{out}");
    assert!(out.starts_with("problem: "), "{out}");

    // Edited: an entry re-added naming another event of its grant. Its MAC no longer matches,
    // and the API shows it as tampered.
    let logged = life_cycles().await;
    let all = entries(&logged.redis).await;
    let (id, fields) = all
        .iter()
        .find(|(_, fields)| field(fields, "n") == Some(b"1"))
        .unwrap()
        .clone();
    xdel(&logged.redis, &id).await;
    let mut edited: Vec<Vec<u8>> = fields.clone();
    for pair in edited.chunks_mut(2) {
        if pair[0] == b"n" {
            pair[1] = b"0".to_vec();
        }
    }
    xadd(&logged.redis, &edited).await;
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("its MAC does not match event 0"), "{out}");
    let mut client = logged.server.client().await;
    let events = client
        .list_audit_events(authed(AUDITOR_TOKEN, proto::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let tampered: Vec<_> = events.iter().filter(|event| event.event == "tampered").collect();
    assert_eq!(tampered.len(), 1, "{events:?}");
    assert!(
        tampered[0].event_json.contains("MAC does not match event 0"),
        "{:?}",
        tampered[0]
    );

    // Inserted: a copy of a genuine entry (its MAC verifies) appended by hand. The head, which
    // counts what brokers appended, says one fewer, and the writer's place is taken twice.
    let logged = life_cycles().await;
    let all = entries(&logged.redis).await;
    let (_, fields) = all.iter().find(|(_, fields)| field(fields, "g").is_some()).unwrap();
    xadd(&logged.redis, fields).await;
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("entries were added"), "{out}");
    assert!(out.contains("is logged more than once"), "{out}");
}

#[tokio::test]
async fn audit_verify_finds_a_deleted_checkpoint_and_tampered_or_rolled_back_records() {
    let logged = life_cycles().await;
    let all = entries(&logged.redis).await;
    let (id, _) = all.iter().find(|(_, fields)| field(fields, "c").is_some()).unwrap();
    xdel(&logged.redis, id).await;
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("checkpoint 2 follows checkpoint 1 at"), "{out}");
    assert!(
        out.contains("which is missing though entries before it are not: deleted"),
        "{out}"
    );

    // A record's state byte set by hand: its seal fails.
    let logged = life_cycles().await;
    let key = format!("gb:g:{{{}}}", logged.grants[2]);
    let _: i64 = redis::cmd("SETRANGE")
        .arg(&key)
        .arg(1)
        .arg(&[1u8][..])
        .query_async(&mut logged.redis.connection().await)
        .await
        .unwrap();
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(
        out.contains(&format!("grant {}: its record fails its seal", logged.grants[2])),
        "{out}"
    );
    assert!(
        !out.contains("of its entries between"),
        "the entries are there, only unreadable: {out}"
    );

    // A record rolled back to an earlier version (one the broker sealed): it verifies alone,
    // but the log refers to events it no longer holds.
    let logged = life_cycles().await;
    let store = logged.redis.store();
    let id = grant_broker::domain::GrantId::parse(&logged.grants[3]).unwrap();
    let key = format!("gb:g:{{{id}}}");
    let before: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut logged.redis.connection().await)
        .await
        .unwrap();
    let mut client = logged.server.client().await;
    client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&logged.grants[3])))
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(before)
        .query_async(&mut logged.redis.connection().await)
        .await
        .unwrap();
    assert!(
        store.get(id).await.unwrap().is_some(),
        "the old version verifies on its own"
    );
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("the record was rolled back"), "{out}");

    // A deleted record the log still refers to.
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut logged.redis.connection().await)
        .await
        .unwrap();
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("record is missing, though retention keeps it"), "{out}");
}

#[tokio::test]
async fn an_exported_archive_verifies_without_redis_and_every_edit_of_it_is_found() {
    let logged = life_cycles().await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("audit.jsonl");
    let output = run_cli(vec![
        "audit".into(),
        "export".into(),
        "--server".into(),
        logged.server.url(),
        "--token".into(),
        AUDITOR_TOKEN.into(),
        "--output".into(),
        archive.display().to_string(),
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&archive).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|line| line.contains("\"audit_checkpoint\"")), "{text}");
    assert!(lines.iter().all(|line| line.contains("\"integrity\":\"v1 ")), "{text}");
    // Redis is gone: the archive is checked alone.
    drop(logged.server);
    drop(logged.redis);
    let check = |lines: Vec<String>| {
        let path = dir.path().join("edited.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let config = logged.config.clone();
        async move { verify(&config, &["--from-export", &path.display().to_string()]).await }
    };
    let owned: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
    let (code, out) = check(owned.clone()).await;
    assert_eq!(code, Some(0), "{out}");

    // An event edited: its JSON says another reason.
    let at = owned
        .iter()
        .position(|line| line.contains("\\\"revoked\\\"") || line.contains("\"event\":\"revoked\""))
        .unwrap();
    let mut edited = owned.clone();
    edited[at] = edited[at].replace("done", "fine");
    assert_ne!(edited[at], owned[at]);
    let (code, out) = check(edited.clone()).await;
    assert_eq!(code, Some(6), "{out}\n{}", edited[at]);
    assert!(
        out.contains("its seal does not match its grant_id, target, account_id, grant_caller and event_json"),
        "{out}"
    );

    // What the line says beside the event: another target, or a service event made a grant's.
    let mut moved = owned.clone();
    moved[at] = moved[at].replace("\"target\":\"dev-logs-read\"", "\"target\":\"prod-logs-read\"");
    assert_ne!(moved[at], owned[at]);
    let (code, out) = check(moved).await;
    assert_eq!(code, Some(6), "{out}");
    let service = owned
        .iter()
        .position(|line| line.contains("\"event\":\"audit_queried\""))
        .unwrap();
    let mut claimed = owned.clone();
    claimed[service] = claimed[service].replace("\"grant_id\":\"\"", &format!("\"grant_id\":\"{}\"", logged.grants[0]));
    assert_ne!(claimed[service], owned[service]);
    let (code, out) = check(claimed).await;
    assert_eq!(code, Some(6), "{out}");

    // A line deleted before a checkpoint; a checkpoint deleted; two lines swapped.
    let checkpoint_at = owned
        .iter()
        .rposition(|line| line.contains("\"audit_checkpoint\""))
        .unwrap();
    let mut deleted = owned.clone();
    deleted.remove(checkpoint_at - 1);
    let (code, out) = check(deleted).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("entries were deleted"), "{out}");
    let mut no_checkpoint = owned.clone();
    let first_checkpoint = owned
        .iter()
        .position(|line| line.contains("\"audit_checkpoint\""))
        .unwrap();
    no_checkpoint.remove(first_checkpoint);
    let (code, out) = check(no_checkpoint).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("which is missing"), "{out}");
    let mut swapped = owned.clone();
    swapped.swap(1, 2);
    let (code, out) = check(swapped).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("out of order"), "{out}");
}

/// The entries beside a grant's record are not sealed, the record is: a request id entry
/// rewritten to name another caller's grant hands nobody that grant, and an access key entry
/// rewritten to name a grant that never issued the key finds nothing.
#[tokio::test]
async fn entries_pointing_at_another_grant_are_refused_not_followed() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let theirs = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("portal-1")))
        .await
        .unwrap()
        .into_inner();
    let mine = client
        .request_access(authed(PIPELINE_TOKEN, read_logs_request("a-1")))
        .await
        .unwrap()
        .into_inner();
    let mut connection = redis.connection().await;
    let key = "gb:caller:{ci-pipeline}:request:a-1";
    let mut entry: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut connection).await.unwrap();
    let their_id = uuid::Uuid::parse_str(&theirs.grant.as_ref().unwrap().id).unwrap();
    entry[..16].copy_from_slice(their_id.as_bytes());
    let () = redis::cmd("SET")
        .arg(key)
        .arg(&entry)
        .query_async(&mut connection)
        .await
        .unwrap();
    let calls = sts.calls().len();
    let status = client
        .request_access(authed(PIPELINE_TOKEN, read_logs_request("a-1")))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_str()),
        (tonic::Code::DataLoss, "STORE_TAMPERED"),
        "{status:?}"
    );
    assert_eq!(sts.calls().len(), calls, "nothing issued from another caller's grant");

    // The pipeline's access key entry pointed at the portal's grant.
    let key_id = &mine.credentials.unwrap().access_key_id;
    let () = redis::cmd("SET")
        .arg(format!("gb:key:{{{key_id}}}"))
        .arg(their_id.as_bytes().as_slice())
        .query_async(&mut connection)
        .await
        .unwrap();
    let status = client
        .find_grant_by_access_key(authed(
            AUDITOR_TOKEN,
            proto::FindGrantByAccessKeyRequest {
                access_key_id: key_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

/// Deleting every checkpoint with the entries they covered, or pointing the head at an older
/// checkpoint to re-root the chain past deleted ones, is found; and no broker checkpoints onto a
/// head that names a checkpoint the log does not hold.
#[tokio::test]
async fn erased_checkpoints_and_a_re_rooted_head_are_found() {
    let logged = life_cycles().await;
    // Brokers stop checkpointing so the log holds still while it is examined.
    drop(logged.server);
    let all = entries(&logged.redis).await;
    for (id, fields) in &all {
        if field(fields, "c").is_some() {
            xdel(&logged.redis, id).await;
        }
    }
    for (id, _) in all.iter().take(3) {
        xdel(&logged.redis, id).await;
    }
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("the log's last is none"), "{out}");

    // The head also cut loose from its checkpoints: its count still says what was appended.
    let _: i64 = redis::cmd("HDEL")
        .arg("gb:{audit}:head")
        .arg("checkpoint")
        .query_async(&mut logged.redis.connection().await)
        .await
        .unwrap();
    let (code, out) = verify(&logged.config, &[]).await;
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("no checkpoint: entries were deleted"), "{out}");

    // A head naming a checkpoint the log does not hold: no broker chains onto it.
    let _: i64 = redis::cmd("HSET")
        .arg("gb:{audit}:head")
        .arg("checkpoint")
        .arg(format!("7 {} 1-1", "00".repeat(16)))
        .query_async(&mut logged.redis.connection().await)
        .await
        .unwrap();
    let refused = logged
        .redis
        .store()
        .checkpoint_audit_log(Duration::ZERO, OffsetDateTime::now_utc())
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

/// After whole life cycles with trace logging, through a Redis that needs a password: neither
/// the integrity key nor the Redis password is in Redis, a log line, an error message, the audit
/// log or an export; and not when Redis goes away mid-way either.
#[tokio::test]
async fn the_integrity_key_and_the_redis_password_are_never_stored_logged_or_returned() {
    const PASSWORD: &str = "redis-password-never-shown-0123456789";
    let logs = capture_logs();
    let redis = RedisServer::start_with(&["--user", "broker", "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"]);
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(
        redis.url().replace("redis://", &format!("redis://broker:{PASSWORD}@")),
        sts.url.clone(),
    );
    settings.redis_timeout_ms = 300;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("grant-broker.toml");
    std::fs::write(&config, config_text(&settings)).unwrap();
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let grant = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("leak")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap();
    client
        .revoke_grant(authed(
            PORTAL_TOKEN,
            proto::RevokeGrantRequest {
                id: grant.id.clone(),
                reason: "done".into(),
                revoker: String::new(),
            },
        ))
        .await
        .unwrap();
    let events = client
        .list_audit_events(authed(AUDITOR_TOKEN, proto::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let archive = dir.path().join("audit.jsonl");
    let exported = run_cli(vec![
        "audit".into(),
        "export".into(),
        "--server".into(),
        server.url(),
        "--token".into(),
        AUDITOR_TOKEN.into(),
        "--output".into(),
        archive.display().to_string(),
    ])
    .await;
    assert!(exported.status.success());
    let (code, verified) = verify(&config, &[]).await;
    assert_eq!(code, Some(0), "{verified}");
    let dump = redis.dump().await;
    // Redis goes away: the errors a caller and the CLI see, and the log lines, name no secret.
    redis.stop();
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("after")))
        .await
        .unwrap_err();
    let (_, unreachable) = verify(&config, &[]).await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("access requested"), "trace logging was captured");
    let export = std::fs::read_to_string(&archive).unwrap();
    for secret in [PASSWORD, TEST_INTEGRITY_KEY] {
        for (key, value) in &dump {
            assert!(!key.contains(secret) && !value.contains(secret), "{key} holds a secret");
        }
        assert!(!logs.contains(secret), "a log line holds a secret");
        assert!(!export.contains(secret), "the export holds a secret");
        assert!(!format!("{events:?}").contains(secret), "the audit log holds a secret");
        assert!(!status.message().contains(secret), "{status:?}");
        assert!(
            !verified.contains(secret) && !unreachable.contains(secret),
            "{unreachable}"
        );
    }
}
