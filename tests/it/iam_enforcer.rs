//! The IAM role enforcer against moto (roles, inline policies, the broker's deny policy beside
//! another one) and, for what moto cannot do, the fake IAM endpoint in front of it (throttling,
//! AccessDenied, outages, slow answers) and the fake STS (an admin role the broker may not assume).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::{
    FakeSts, Moto, StsBehaviour,
    fake_iam::{FakeIam, Fault},
};
use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use grant_broker::{
    adapters::{IamEnforcer, IamSettings, StsSettings},
    domain::{IamAccess, RevocationMode, Secret, Target, revocation::DENY_POLICY_NAME},
    ports::{EnforceErrorKind, RoleEnforcer},
};

const ACCOUNT: &str = "123456789012";

/// Another team's inline policy, pretty-printed (whitespace IAM does not count), with characters
/// URL-encoding changes (`+`, `%`, spaces, `/`).
const OTHER_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "ReadLogs",
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:ListBucket"],
      "Resource": "arn:aws:s3:::acme logs/a+b%20c/*"
    }
  ]
}"#;

fn deny_policy(session: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"RevokedSessions","Effect":"Deny","Action":"*","Resource":"*","Condition":{{"StringLike":{{"aws:userid":["AROAEXAMPLE:{session}"]}}}}}}]}}"#
    )
}

fn non_whitespace_chars(text: &str) -> usize {
    text.chars().filter(|c| !c.is_whitespace()).count()
}

/// A role name no other test (sharing one moto) uses.
fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

fn target(role_arn: &str) -> Target {
    Target {
        id: "iam-test".into(),
        description: String::new(),
        environment: "staging".into(),
        account_id: ACCOUNT.into(),
        role_arn: role_arn.into(),
        region: "eu-west-1".into(),
        external_id: None,
        max_duration_secs: 3600,
        mfa_required: false,
        session_tags: false,
        ceiling: Vec::new(),
        allow_unknown_actions: false,
        revocation: RevocationMode::Enforce,
        iam: IamAccess::default(),
        identity: Default::default(),
    }
}

/// The broker's settings: IAM at `iam`, STS at `sts`, two attempts per call, short backoff.
fn settings(iam: &str, sts: &str) -> IamSettings {
    IamSettings {
        endpoint: Some(iam.to_owned()),
        aws: StsSettings {
            endpoint: Some(sts.to_owned()),
            attempt_timeout: Duration::from_millis(1_000),
            operation_timeout: Duration::from_millis(3_000),
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            static_credentials: Some(("testing".to_owned(), Secret::new("testing"))),
        },
    }
}

/// The test's own IAM client on moto, to set roles up and look at them behind the enforcer.
fn admin(moto: &Moto) -> aws_sdk_iam::Client {
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(&moto.url)
        .build();
    aws_sdk_iam::Client::from_conf(config)
}

/// Creates a role (under `path`, e.g. `/team/`) with a longest session of `max_session_secs`,
/// and returns its ARN and RoleId.
async fn create_role(iam: &aws_sdk_iam::Client, name: &str, path: &str, max_session_secs: i32) -> (String, String) {
    let trust = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:root"}},"Action":"sts:AssumeRole"}}]}}"#
    );
    let role = iam
        .create_role()
        .role_name(name)
        .path(path)
        .assume_role_policy_document(trust)
        .max_session_duration(max_session_secs)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    (role.arn, role.role_id)
}

async fn put_other_policy(iam: &aws_sdk_iam::Client, role: &str) {
    iam.put_role_policy()
        .role_name(role)
        .policy_name("team-reads-logs")
        .policy_document(OTHER_POLICY)
        .send()
        .await
        .unwrap();
}

/// The role's inline policy `name`, decoded, or None when it has none of that name.
async fn inline_policy(iam: &aws_sdk_iam::Client, role: &str, name: &str) -> Option<String> {
    match iam.get_role_policy().role_name(role).policy_name(name).send().await {
        Ok(output) => Some(decode(output.policy_document())),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_no_such_entity_exception()) =>
        {
            None
        }
        Err(error) => panic!("GetRolePolicy: {error:?}"),
    }
}

/// URL-decoding (RFC 3986) of what GetRolePolicy returns, written independently of the adapter's.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn policy_names(iam: &aws_sdk_iam::Client, role: &str) -> Vec<String> {
    let mut names = iam
        .list_role_policies()
        .role_name(role)
        .send()
        .await
        .unwrap()
        .policy_names;
    names.sort();
    names
}

#[tokio::test]
async fn role_facts_are_the_roles_id_and_longest_session() {
    let moto = Moto::start();
    let iam = admin(&moto);
    let name = unique("facts");
    let (arn, role_id) = create_role(&iam, &name, "/", 7_200).await;
    let enforcer = IamEnforcer::new(&settings(&moto.url, &moto.url), &[target(&arn)]).await;

    let facts = enforcer.role_facts(&target(&arn)).await.unwrap();
    assert!(facts.role_id.starts_with("AROA"), "{facts:?}");
    assert_eq!(facts.role_id, role_id);
    assert_eq!(facts.max_session_secs, 7_200);
}

#[tokio::test]
async fn other_inline_policies_count_without_whitespace_and_the_brokers_own_does_not_count() {
    let moto = Moto::start();
    let iam = admin(&moto);
    let name = unique("count");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&moto.url, &moto.url), std::slice::from_ref(&target)).await;

    assert_eq!(enforcer.other_inline_policy_chars(&target).await.unwrap(), 0);
    put_other_policy(&iam, &name).await;
    enforcer.put_deny_policy(&target, &deny_policy("gb-1")).await.unwrap();
    // IAM hands documents back URL-encoded: counted on the encoded text, this would be 435.
    assert_eq!(
        enforcer.other_inline_policy_chars(&target).await.unwrap(),
        non_whitespace_chars(OTHER_POLICY)
    );
    assert_eq!(non_whitespace_chars(OTHER_POLICY), 161);
}

#[tokio::test]
async fn the_deny_policy_is_put_replaced_and_deleted_and_nothing_else_is_touched() {
    let moto = Moto::start();
    let iam = admin(&moto);
    let name = unique("deny");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    put_other_policy(&iam, &name).await;
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&moto.url, &moto.url), std::slice::from_ref(&target)).await;

    let first = deny_policy("gb-1");
    enforcer.put_deny_policy(&target, &first).await.unwrap();
    assert_eq!(
        inline_policy(&iam, &name, DENY_POLICY_NAME).await.as_deref(),
        Some(first.as_str())
    );
    // Putting the same document again is the same state.
    enforcer.put_deny_policy(&target, &first).await.unwrap();
    assert_eq!(
        inline_policy(&iam, &name, DENY_POLICY_NAME).await.as_deref(),
        Some(first.as_str())
    );
    assert_eq!(policy_names(&iam, &name).await, [DENY_POLICY_NAME, "team-reads-logs"]);
    // A new document replaces it.
    let second = deny_policy("gb-2");
    enforcer.put_deny_policy(&target, &second).await.unwrap();
    assert_eq!(
        inline_policy(&iam, &name, DENY_POLICY_NAME).await.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(
        inline_policy(&iam, &name, "team-reads-logs").await.as_deref(),
        Some(OTHER_POLICY),
        "the other policy is untouched"
    );

    enforcer.delete_deny_policy(&target).await.unwrap();
    assert_eq!(inline_policy(&iam, &name, DENY_POLICY_NAME).await, None);
    assert_eq!(policy_names(&iam, &name).await, ["team-reads-logs"]);
    enforcer.delete_deny_policy(&target).await.unwrap();
    assert_eq!(
        inline_policy(&iam, &name, "team-reads-logs").await.as_deref(),
        Some(OTHER_POLICY)
    );
}

#[tokio::test]
async fn an_unknown_role_is_not_found_and_deleting_from_it_is_done() {
    let moto = Moto::start();
    let arn = format!("arn:aws:iam::{ACCOUNT}:role/{}", unique("missing"));
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&moto.url, &moto.url), std::slice::from_ref(&target)).await;

    let error = enforcer.role_facts(&target).await.unwrap_err();
    assert_eq!(
        (error.kind, error.code.as_str()),
        (EnforceErrorKind::RoleNotFound, "NoSuchEntity"),
        "{error:?}"
    );
    let error = enforcer.other_inline_policy_chars(&target).await.unwrap_err();
    assert_eq!(error.kind, EnforceErrorKind::RoleNotFound, "{error:?}");
    let error = enforcer
        .put_deny_policy(&target, &deny_policy("gb-1"))
        .await
        .unwrap_err();
    assert_eq!(error.kind, EnforceErrorKind::RoleNotFound, "{error:?}");
    enforcer.delete_deny_policy(&target).await.unwrap();
}

#[tokio::test]
async fn a_role_with_a_path_is_reached_by_its_name() {
    let moto = Moto::start();
    let iam = admin(&moto);
    let name = unique("pathed");
    let (arn, role_id) = create_role(&iam, &name, "/team/", 3_600).await;
    assert!(arn.ends_with(&format!(":role/team/{name}")), "{arn}");
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&moto.url, &moto.url), std::slice::from_ref(&target)).await;

    assert_eq!(enforcer.role_facts(&target).await.unwrap().role_id, role_id);
    enforcer.put_deny_policy(&target, &deny_policy("gb-1")).await.unwrap();
    assert!(inline_policy(&iam, &name, DENY_POLICY_NAME).await.is_some());
    enforcer.delete_deny_policy(&target).await.unwrap();
    assert_eq!(inline_policy(&iam, &name, DENY_POLICY_NAME).await, None);
}

#[tokio::test]
async fn a_record_only_role_is_read_but_never_changed() {
    let moto = Moto::start();
    let fake = FakeIam::start(&moto.url).await;
    let iam = admin(&moto);
    let name = unique("record-only");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    let target = Target {
        revocation: RevocationMode::RecordOnly,
        ..target(&arn)
    };
    let enforcer = IamEnforcer::new(&settings(&fake.url, &moto.url), std::slice::from_ref(&target)).await;

    enforcer.role_facts(&target).await.unwrap();
    for error in [
        enforcer
            .put_deny_policy(&target, &deny_policy("gb-1"))
            .await
            .unwrap_err(),
        enforcer.delete_deny_policy(&target).await.unwrap_err(),
    ] {
        assert_eq!(
            (error.kind, error.code.as_str()),
            (EnforceErrorKind::AccessDenied, "RecordOnlyTarget"),
            "{error:?}"
        );
    }
    assert_eq!(fake.total_calls(), 1, "only GetRole reached IAM");
}

#[tokio::test]
async fn throttling_that_outlasts_the_retries_is_throttled() {
    let moto = Moto::start();
    let fake = FakeIam::start(&moto.url).await;
    let iam = admin(&moto);
    let name = unique("throttled");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&fake.url, &moto.url), std::slice::from_ref(&target)).await;

    fake.fail_all(Fault::throttling());
    let error = enforcer
        .put_deny_policy(&target, &deny_policy("gb-1"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind, error.code.as_str()),
        (EnforceErrorKind::Throttled, "Throttling"),
        "{error:?}"
    );
    assert_eq!(
        fake.calls("PutRolePolicy"),
        2,
        "the SDK retried throttling once (max_attempts = 2)"
    );
    assert_eq!(inline_policy(&iam, &name, DENY_POLICY_NAME).await, None);

    // One throttled answer is absorbed by the SDK's retry.
    fake.fail_next(1, Fault::throttling());
    enforcer.put_deny_policy(&target, &deny_policy("gb-1")).await.unwrap();
    assert_eq!(fake.calls("PutRolePolicy"), 4);
    assert_eq!(fake.last_policy(&name), Some(deny_policy("gb-1")));
}

#[tokio::test]
async fn access_denied_keeps_iams_message_for_the_log() {
    let moto = Moto::start();
    let fake = FakeIam::start(&moto.url).await;
    let iam = admin(&moto);
    let name = unique("denied");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&fake.url, &moto.url), std::slice::from_ref(&target)).await;

    fake.fail_all(Fault::access_denied());
    let error = enforcer.role_facts(&target).await.unwrap_err();
    assert_eq!(
        (error.kind, error.code.as_str()),
        (EnforceErrorKind::AccessDenied, "AccessDenied"),
        "{error:?}"
    );
    assert!(
        error.message.contains("is not authorized to perform: iam:GetRole"),
        "{error:?}"
    );
    assert_eq!(fake.calls("GetRole"), 1, "AccessDenied is not retried");
    let error = enforcer.other_inline_policy_chars(&target).await.unwrap_err();
    assert_eq!(error.kind, EnforceErrorKind::AccessDenied, "{error:?}");
}

#[tokio::test]
async fn an_outage_is_unavailable_and_the_next_call_after_recovery_succeeds() {
    let moto = Moto::start();
    let fake = FakeIam::start(&moto.url).await;
    let iam = admin(&moto);
    let name = unique("outage");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    put_other_policy(&iam, &name).await;
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&fake.url, &moto.url), std::slice::from_ref(&target)).await;

    fake.fail_all(Fault::unavailable());
    let error = enforcer.other_inline_policy_chars(&target).await.unwrap_err();
    assert_eq!(
        (error.kind, error.code.as_str()),
        (EnforceErrorKind::Unavailable, "ServiceUnavailable"),
        "{error:?}"
    );
    let error = enforcer.delete_deny_policy(&target).await.unwrap_err();
    assert_eq!(error.kind, EnforceErrorKind::Unavailable, "{error:?}");

    fake.recover();
    assert_eq!(
        enforcer.other_inline_policy_chars(&target).await.unwrap(),
        non_whitespace_chars(OTHER_POLICY)
    );
    enforcer.put_deny_policy(&target, &deny_policy("gb-3")).await.unwrap();
    assert_eq!(fake.last_policy(&name), Some(deny_policy("gb-3")));
}

#[tokio::test]
async fn a_slow_iam_is_a_timeout() {
    let moto = Moto::start();
    let fake = FakeIam::start(&moto.url).await;
    let iam = admin(&moto);
    let name = unique("slow");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    let target = target(&arn);
    let enforcer = IamEnforcer::new(&settings(&fake.url, &moto.url), std::slice::from_ref(&target)).await;

    fake.fail_all(Fault::Delay(Duration::from_secs(5)));
    let error = enforcer.role_facts(&target).await.unwrap_err();
    assert_eq!(
        (error.kind, error.code.as_str()),
        (EnforceErrorKind::Unavailable, "Timeout"),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_admin_role_of_the_targets_account_is_assumed_for_iam() {
    let moto = Moto::start();
    let fake = FakeIam::start(&moto.url).await;
    let iam = admin(&moto);
    let name = unique("managed");
    let (arn, role_id) = create_role(&iam, &name, "/", 3_600).await;
    let (admin_arn, _) = create_role(&iam, &unique("gb-iam-admin"), "/", 3_600).await;
    let target = Target {
        iam: IamAccess {
            assume_role_arn: Some(admin_arn),
            external_id: Some("gb-iam-7f3a".into()),
        },
        ..target(&arn)
    };
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let enforcer = IamEnforcer::new(&settings(&fake.url, &sts.url), std::slice::from_ref(&target)).await;

    assert_eq!(enforcer.role_facts(&target).await.unwrap().role_id, role_id);
    enforcer.put_deny_policy(&target, &deny_policy("gb-1")).await.unwrap();
    // One AssumeRole, its credentials cached for the following calls.
    let calls = sts.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["RoleArn"], target.iam.assume_role_arn.clone().unwrap());
    assert_eq!(calls[0]["ExternalId"], "gb-iam-7f3a");
    assert_eq!(calls[0]["RoleSessionName"], "grant-broker-revocation");
}

#[tokio::test]
async fn an_admin_role_the_broker_may_not_assume_is_access_denied() {
    let moto = Moto::start();
    let iam = admin(&moto);
    let name = unique("unassumable");
    let (arn, _) = create_role(&iam, &name, "/", 3_600).await;
    let target = Target {
        iam: IamAccess {
            assume_role_arn: Some(format!("arn:aws:iam::{ACCOUNT}:role/gb-iam-admin")),
            external_id: None,
        },
        ..target(&arn)
    };
    let sts = FakeSts::start(StsBehaviour::Fail {
        status: 403,
        code: "AccessDenied",
        message: "User: arn:aws:iam::123456789012:user/broker is not authorized to perform: sts:AssumeRole",
    })
    .await;
    let fake = FakeIam::start(&moto.url).await;
    let enforcer = IamEnforcer::new(&settings(&fake.url, &sts.url), std::slice::from_ref(&target)).await;

    let error = enforcer.role_facts(&target).await.unwrap_err();
    assert_eq!(
        (error.kind, error.code.as_str()),
        (EnforceErrorKind::AccessDenied, "AccessDenied"),
        "{error:?}"
    );
    assert!(error.message.contains("iam_role_arn"), "{error:?}");
    assert!(error.message.contains("sts:AssumeRole"), "{error:?}");
    assert_eq!(fake.total_calls(), 0, "nothing reached IAM");
}
