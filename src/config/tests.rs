//! The configuration's checks, one problem at a time and all at once.

use super::*;

const RULES: &str = r#"permit (principal, action == GrantBroker::Action::"request", resource);"#;

/// A directory holding the files [`GOOD`] names: its rules and its integrity key.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.cedar"), RULES).unwrap();
    std::fs::write(dir.path().join("integrity.key"), format!("{INTEGRITY_KEY}\n")).unwrap();
    dir
}

const INTEGRITY_KEY: &str = "config-test-integrity-key-0123456789abcdef";

fn with_rules(config: &str) -> Result<Config, Vec<Problem>> {
    Config::parse(config, config_dir().path())
}

const GOOD: &str = r#"
    [redis]
    url = "redis://127.0.0.1:6379"
    [rules]
    files = ["rules.cedar"]
    [[integrity.keys]]
    id = 1
    file = "integrity.key"
    [[targets]]
    id = "prod-logs-read"
    environment = "production"
    account_id = "123456789012"
    role_arn = "arn:aws:iam::123456789012:role/vendor-logs-read"
    region = "eu-west-1"
    max_duration_secs = 3600
    [[targets.ceiling]]
    actions = ["s3:GetObject"]
    resources = ["arn:aws:s3:::acme-logs/*"]
    [[callers]]
    id = "vendor-portal"
    token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    targets = ["prod-logs-read"]
"#;

#[test]
fn a_good_config_loads() {
    let config = with_rules(GOOD).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.targets[0].ceiling[0].actions[0].as_str(), "s3:GetObject");
    assert_eq!(config.callers[0].targets.iter().collect::<Vec<_>>(), ["prod-logs-read"]);
    assert_eq!(config.redis.retention, Duration::from_secs(400 * 86_400));
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let bad = GOOD
        .replace(
            "arn:aws:iam::123456789012:role/vendor-logs-read",
            "arn:aws:iam::999999999999:role/x",
        )
        .replace("max_duration_secs = 3600", "max_duration_secs = 60")
        .replace(r#"actions = ["s3:GetObject"]"#, r#"actions = ["GetObject"]"#)
        .replace(r#"targets = ["prod-logs-read"]"#, r#"targets = ["nope"]"#);
    let problems = with_rules(&bad).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "targets[0].role_arn",
            "targets[0].max_duration_secs",
            "targets[0].ceiling[0].actions[0]",
            "callers[0].targets[0]"
        ],
        "{problems:?}"
    );
}

#[test]
fn ceilings_that_reach_further_than_they_look_are_warned_about_by_key() {
    let wide = GOOD.replace(
        r#"resources = ["arn:aws:s3:::acme-logs/*"]"#,
        r#"resources = ["arn:aws:s3:::acme-logs/*", "arn:aws:ec2:*:*:instance/*"]"#,
    );
    let config = with_rules(&wide).unwrap();
    let keys: Vec<&str> = config.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "targets[0].ceiling[0].resources[1]",
            "targets[0].ceiling[0].resources[1]"
        ]
    );
    assert!(
        config.warnings.iter().any(|w| w.message.contains("any account")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn plaintext_on_the_network_needs_the_operator_to_say_so() {
    let open = GOOD.replace("[redis]", "[server]\nlisten = \"0.0.0.0:50051\"\n[redis]");
    let problems = with_rules(&open).unwrap_err();
    assert_eq!(problems[0].key, "server.listen", "{problems:?}");
    assert!(problems[0].message.contains("insecure_plaintext"), "{problems:?}");
    let accepted = open.replace("[redis]", "insecure_plaintext = true\n[redis]");
    let config = with_rules(&accepted).unwrap();
    assert_eq!(config.warnings.len(), 1);
    assert_eq!(config.warnings[0].key, "server.insecure_plaintext");
    assert!(
        with_rules(GOOD).unwrap().warnings.is_empty(),
        "loopback needs no warning"
    );
}

#[test]
fn redis_tls_files_are_checked_where_they_are_named() {
    let dir = config_dir();
    std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let with = |redis: &str| Config::parse(&GOOD.replace("url = \"redis://127.0.0.1:6379\"", redis), dir.path());
    let config = with("url = \"rediss://redis:6380\"\ntls_ca_file = \"ca.pem\"").unwrap();
    assert!(config.redis.tls.unwrap().ca_pem.unwrap().starts_with(b"-----BEGIN"));
    let keys = |problems: Vec<Problem>| problems.into_iter().map(|p| p.key).collect::<Vec<_>>();
    assert_eq!(
        keys(with("url = \"redis://redis:6379\"\ntls_ca_file = \"ca.pem\"").unwrap_err()),
        ["redis.tls_ca_file"]
    );
    assert_eq!(
        keys(
            with("url = \"rediss://redis:6380\"\ntls_ca_file = \"empty.pem\"\ntls_client_cert_file = \"ca.pem\"")
                .unwrap_err()
        ),
        ["redis.tls_ca_file", "redis.tls_client_cert_file"]
    );
}

#[test]
fn the_redis_password_comes_from_the_environment_or_a_file_never_the_url_as_well() {
    let dir = config_dir();
    std::fs::write(dir.path().join("redis-password"), "from-a-file\n").unwrap();
    let env = |name: &str| (name == "REDIS_PASSWORD").then(|| "from-the-env".to_owned());
    let with = |redis: &str| {
        Config::parse_with_env(
            &GOOD.replace("url = \"redis://127.0.0.1:6379\"", redis),
            dir.path(),
            &env,
        )
    };
    let config =
        with("url = \"redis://redis:6379\"\nusername = \"broker\"\npassword = { env = \"REDIS_PASSWORD\" }").unwrap();
    assert_eq!(config.redis.username.as_deref(), Some("broker"));
    assert_eq!(config.redis.password.as_ref().unwrap().expose(), "from-the-env");
    assert!(!format!("{:?}", config.redis).contains("from-the-env"));
    let config = with("url = \"redis://redis:6379\"\npassword = { file = \"redis-password\" }").unwrap();
    assert_eq!(config.redis.password.unwrap().expose(), "from-a-file");
    let problems = |redis: &str| {
        with(redis)
            .unwrap_err()
            .into_iter()
            .map(|problem| problem.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        problems("url = \"redis://redis:6379\"\npassword = { env = \"NOT_SET\" }"),
        ["redis.password.env: the environment variable `NOT_SET` is not set"]
    );
    assert_eq!(
        problems("url = \"redis://u:inline@redis:6379\"\npassword = { env = \"REDIS_PASSWORD\" }"),
        ["redis.password: the URL carries a password too: keep it in one place (here, not in redis.url)"]
    );
    assert_eq!(
        problems("url = \"redis://redis:6379\"\npassword = { env = \"REDIS_PASSWORD\", file = \"redis-password\" }"),
        ["redis.password: name exactly one of `env` and `file`"]
    );
}

#[test]
fn redis_is_one_server_or_a_cluster_never_both_nor_neither() {
    let dir = config_dir();
    let with = |redis: &str| {
        Config::parse_with_env(
            &GOOD.replace("url = \"redis://127.0.0.1:6379\"", redis),
            dir.path(),
            &|_| None,
        )
    };
    let problems = |redis: &str| {
        with(redis)
            .unwrap_err()
            .into_iter()
            .map(|problem| problem.to_string())
            .collect::<Vec<_>>()
    };
    let config = with("cluster_nodes = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]").unwrap();
    assert_eq!(
        config.redis.topology,
        Topology::Cluster(vec![
            "redis://10.0.0.1:6379".to_owned(),
            "redis://10.0.0.2:6379".to_owned()
        ])
    );
    assert_eq!(
        with("url = \"redis://10.0.0.1:6379\"").unwrap().redis.topology,
        Topology::Server("redis://10.0.0.1:6379".to_owned())
    );
    assert_eq!(
        problems("url = \"redis://a:6379\"\ncluster_nodes = [\"redis://b:6379\"]"),
        ["redis.cluster_nodes: set redis.url (one server) or redis.cluster_nodes (a cluster), not both"]
    );
    assert_eq!(
        problems("key_prefix = \"gb\""),
        ["redis.url: required: the Redis server's URL (or redis.cluster_nodes, for a Redis Cluster)"]
    );
    assert_eq!(
        problems("cluster_nodes = [\"redis+unix:///tmp/redis.sock\", \"rediss://b:6380\"]"),
        [
            "redis.cluster_nodes[0]: must start with redis:// or rediss:// (TLS): cluster nodes are reached over TCP",
            "redis.cluster_nodes: every node must use the same scheme: all rediss:// (TLS) or all redis://",
        ]
    );
    // TLS files go with a cluster of rediss:// nodes as with one server.
    assert_eq!(
        problems("cluster_nodes = [\"redis://a:6379\"]\ntls_ca_file = \"ca.pem\""),
        ["redis.tls_ca_file: only for TLS: redis.url (or redis.cluster_nodes) must start with rediss://"]
    );
}

#[test]
fn the_issuance_cap_defaults_to_ten_and_is_bounded() {
    assert_eq!(with_rules(GOOD).unwrap().broker.max_issuances_per_grant, 10);
    let problems = with_rules(&GOOD.replace("[rules]", "[grants]\nmax_issuances_per_grant = 0\n[rules]")).unwrap_err();
    assert_eq!(problems[0].key, "grants.max_issuances_per_grant");
}

#[test]
fn debug_output_never_shows_secrets() {
    let config = with_rules(
        &GOOD
            .replace("redis://127.0.0.1:6379", "redis://grant-broker:hunter2@127.0.0.1:6379/0")
            .replace(
                "[rules]",
                "[aws]\nsts_endpoint = \"http://127.0.0.1:1\"\nemulator_credentials = { access_key_id = \"AKIA\", secret_access_key = \"s3cr3t-key\" }\n[rules]",
            ),
    )
    .unwrap();
    let printed = format!("{config:?}");
    assert!(
        printed.contains("redis://grant-broker:[redacted]@127.0.0.1:6379/0"),
        "{printed}"
    );
    for secret in ["hunter2", "s3cr3t-key"] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert_eq!(
        crate::adapters::redacted_url("redis+unix:///run/redis.sock?db=0&pass=hunter2"),
        "redis+unix:///run/redis.sock?[redacted]"
    );
    assert_eq!(
        crate::adapters::redacted_url("redis://:hunter2@h:1"),
        "redis://:[redacted]@h:1"
    );
    assert_eq!(
        crate::adapters::redacted_url("redis://hunter2@h:1"),
        "redis://[redacted]@h:1"
    );
}

const HOOK_SECRET: &str = "hook-secret-0123456789abcdef-0123456789";

fn with_webhooks(webhooks: &str) -> Result<Config, Vec<Problem>> {
    let dir = config_dir();
    let env = |name: &str| match name {
        "GB_HOOK_SECRET" => Some(HOOK_SECRET.to_owned()),
        "GB_SHORT_SECRET" => Some("too-short".to_owned()),
        _ => None,
    };
    Config::parse_with_env(&format!("{GOOD}\n{webhooks}"), dir.path(), &env)
}

#[test]
fn a_webhook_gets_the_default_events_timeout_and_attempts() {
    let config = with_webhooks(
        "[[webhooks]]\nname = \"approvals\"\nurl = \"https://hooks.example.com/grant-broker\"\nsecret_env = \"GB_HOOK_SECRET\"",
    )
    .unwrap();
    let [webhook] = config.webhooks.as_slice() else {
        panic!("{:?}", config.webhooks)
    };
    assert_eq!(webhook.name, "approvals");
    assert_eq!(webhook.secret.expose(), HOOK_SECRET);
    assert_eq!(webhook.timeout, Duration::from_secs(5));
    assert_eq!(webhook.max_attempts, 8);
    let events: Vec<&str> = webhook.events.iter().map(String::as_str).collect();
    let mut defaults = webhooks::DEFAULT_EVENTS.to_vec();
    defaults.sort_unstable();
    assert_eq!(events, defaults);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Loopback may be plain http (a sidecar); no webhooks at all is fine too.
    let local = with_webhooks(
        "[[webhooks]]\nname = \"local\"\nurl = \"http://127.0.0.1:8080/hook\"\nsecret_env = \"GB_HOOK_SECRET\"\nevents = [\"extended\", \"extension_requested\", \"issued\"]",
    )
    .unwrap();
    assert_eq!(local.webhooks[0].events.len(), 3);
    assert!(with_rules(GOOD).unwrap().webhooks.is_empty());
}

#[test]
fn webhook_problems_are_reported_by_key_and_never_show_the_secret() {
    let problems = with_webhooks(
        r#"
        [[webhooks]]
        name = "approvals"
        url = "http://hooks.example.com/grant-broker"
        secret_env = "GB_MISSING_SECRET"
        events = ["requested", "aproved"]
        [[webhooks]]
        name = "approvals"
        url = "https://user:pw@hooks.example.com/x"
        secret_env = "GB_SHORT_SECRET"
        timeout_ms = 0
        max_attempts = 0
        [[webhooks]]
        name = "Bad Name"
        url = "ftp://hooks.example.com/x"
        secret_env = "GB_HOOK_SECRET"
        events = []
        "#,
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "webhooks[0].url",
            "webhooks[0].secret_env",
            "webhooks[0].events[1]",
            "webhooks[1].name",
            "webhooks[1].url",
            "webhooks[1].secret_env",
            "webhooks[1].timeout_ms",
            "webhooks[1].max_attempts",
            "webhooks[2].name",
            "webhooks[2].url",
            "webhooks[2].events",
        ],
        "{problems:?}"
    );
    let says = |key: &str, text: &str| {
        assert!(
            problems.iter().any(|p| p.key == key && p.message.contains(text)),
            "{key}: {text} in {problems:?}"
        )
    };
    says("webhooks[0].url", "insecure_http");
    says("webhooks[0].secret_env", "`GB_MISSING_SECRET` is not set");
    says("webhooks[0].events[1]", "`aproved` is not an event");
    says("webhooks[1].name", "also the name of webhooks[0]");
    says("webhooks[1].url", "credentials");
    says("webhooks[1].secret_env", "holds 9 bytes");
    let printed = format!("{problems:?}");
    assert!(
        !printed.contains("too-short") && !printed.contains(HOOK_SECRET),
        "{printed}"
    );
}

#[test]
fn the_example_webhook_is_valid_once_uncommented() {
    let example = include_str!("../../deploy/grant-broker.example.toml");
    let start = example.find("# [[webhooks]]").unwrap();
    let block: String = example[start..]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = config_dir();
    let env = |name: &str| (name == "GRANT_BROKER_WEBHOOK_SECRET").then(|| HOOK_SECRET.to_owned());
    let config = Config::parse_with_env(&format!("{GOOD}\n{block}"), dir.path(), &env).unwrap();
    assert_eq!(config.webhooks.len(), 1);
    assert_eq!(config.webhooks[0].events.len(), 6);
}

#[test]
fn plain_http_beyond_loopback_is_a_warning_when_the_operator_accepts_it() {
    let config = with_webhooks(
        "[[webhooks]]\nname = \"lan\"\nurl = \"http://10.0.0.7/hook?token=t0k3n\"\nsecret_env = \"GB_HOOK_SECRET\"\ninsecure_http = true",
    )
    .unwrap();
    assert_eq!(config.warnings.len(), 1);
    assert_eq!(config.warnings[0].key, "webhooks[0].insecure_http");
    let printed = format!("{config:?}");
    for hidden in [HOOK_SECRET, "t0k3n"] {
        assert!(!printed.contains(hidden), "{hidden} in {printed}");
    }
}

/// GOOD with a second target on `role_arn`, whose lines `second` adds to.
fn with_second_target(role_arn: &str, second: &str) -> String {
    let target = GOOD
        .split("[[targets]]")
        .nth(1)
        .and_then(|rest| rest.split("[[callers]]").next())
        .unwrap()
        .replace("id = \"prod-logs-read\"", &format!("id = \"second\"\n{second}"))
        .replace("arn:aws:iam::123456789012:role/vendor-logs-read", role_arn);
    GOOD.replace("[[callers]]", &format!("[[targets]]{target}[[callers]]"))
}

#[test]
fn revocation_is_enforced_with_the_brokers_own_credentials_by_default() {
    let config = with_rules(GOOD).unwrap();
    let target = &config.targets[0];
    assert_eq!(target.revocation, RevocationMode::Enforce);
    assert_eq!(target.iam, IamAccess::default());
    assert_eq!(target.role_name(), "vendor-logs-read");
    assert!(!config.callers[0].powers.admin && !config.callers[0].caller().powers.admin);
}

#[test]
fn revocation_keys_admin_callers_and_the_iam_endpoint_are_read() {
    let text = GOOD
        .replace(
            "max_duration_secs = 3600",
            "max_duration_secs = 3600\nrevocation = \"record-only\"\niam_role_arn = \"arn:aws:iam::123456789012:role/admin/grant-broker-iam\"\niam_external_id = \"gb-iam-7f3a\"",
        )
        .replace("targets = [\"prod-logs-read\"]", "targets = [\"prod-logs-read\"]\nadmin = true");
    let config = with_rules(&text).unwrap();
    let target = &config.targets[0];
    assert_eq!(target.revocation, RevocationMode::RecordOnly);
    assert_eq!(
        target.iam,
        IamAccess {
            assume_role_arn: Some("arn:aws:iam::123456789012:role/admin/grant-broker-iam".into()),
            external_id: Some("gb-iam-7f3a".into()),
        }
    );
    assert!(config.callers[0].powers.admin && config.callers[0].caller().powers.admin);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn the_iam_endpoint_is_read_and_checked_and_iam_shares_the_sts_settings() {
    let config = with_rules(GOOD).unwrap();
    assert_eq!(config.iam.endpoint, None);
    assert_eq!(config.iam.aws.max_attempts, config.sts.max_attempts);
    let text = GOOD.replace(
        "[rules]",
        "[aws]\nsts_endpoint = \"http://127.0.0.1:5000\"\niam_endpoint = \"http://127.0.0.1:5001\"\n[rules]",
    );
    let config = with_rules(&text).unwrap();
    assert_eq!(config.iam.endpoint.as_deref(), Some("http://127.0.0.1:5001"));
    assert_eq!(config.iam.aws.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
    let problems =
        with_rules(&GOOD.replace("[rules]", "[aws]\niam_endpoint = \"127.0.0.1:5001\"\n[rules]")).unwrap_err();
    assert_eq!(problems[0].key, "aws.iam_endpoint", "{problems:?}");
}

#[test]
fn revocation_problems_are_reported_by_key() {
    let text = GOOD
        .replace(
            "max_duration_secs = 3600",
            "max_duration_secs = 3600\nrevocation = \"off\"\niam_role_arn = \"arn:aws:iam::123456789012:user/admin\"\niam_external_id = \"x\"",
        );
    let problems = with_rules(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "targets[0].revocation",
            "targets[0].iam_role_arn",
            "targets[0].iam_external_id"
        ],
        "{problems:?}"
    );
    assert!(problems[0].message.contains("record-only"), "{problems:?}");

    let external_id_alone = GOOD.replace(
        "max_duration_secs = 3600",
        "max_duration_secs = 3600\niam_external_id = \"gb-iam-7f3a\"",
    );
    let problems = with_rules(&external_id_alone).unwrap_err();
    assert_eq!(problems[0].key, "targets[0].iam_external_id");
    assert!(problems[0].message.contains("set iam_role_arn"), "{problems:?}");

    let other_partition = GOOD.replace(
        "max_duration_secs = 3600",
        "max_duration_secs = 3600\niam_role_arn = \"arn:aws-cn:iam::123456789012:role/gb\"",
    );
    let problems = with_rules(&other_partition).unwrap_err();
    assert_eq!(problems[0].key, "targets[0].iam_role_arn");
}

#[test]
fn an_iam_role_in_another_account_is_a_warning() {
    let text = GOOD.replace(
        "max_duration_secs = 3600",
        "max_duration_secs = 3600\niam_role_arn = \"arn:aws:iam::999999999999:role/gb-iam\"",
    );
    let config = with_rules(&text).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert_eq!(config.warnings[0].key, "targets[0].iam_role_arn");
    assert!(config.warnings[0].message.contains("999999999999"));
}

#[test]
fn targets_of_one_role_must_agree_on_its_enforcement() {
    // The same role under another path and case: IAM role names are unique per account
    // whatever the path, and case-insensitive.
    let same_role = "arn:aws:iam::123456789012:role/team/Vendor-Logs-Read";
    let config = with_rules(&with_second_target(same_role, "")).unwrap();
    assert_eq!(config.targets[1].role_name(), "Vendor-Logs-Read");
    let key = |second: &str| {
        with_rules(&with_second_target(same_role, second))
            .unwrap_err()
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect::<Vec<_>>()
    };
    let problems = key("revocation = \"record-only\"");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "targets[1].revocation");
    assert!(problems[0].1.contains("targets[0]"), "{problems:?}");
    assert_eq!(
        key("iam_role_arn = \"arn:aws:iam::123456789012:role/gb-iam\"")[0].0,
        "targets[1].iam_role_arn"
    );
    // Another role of the account is another matter.
    let elsewhere = with_second_target(
        "arn:aws:iam::123456789012:role/vendor-logs-write",
        "revocation = \"record-only\"",
    );
    assert!(with_rules(&elsewhere).is_ok());
}

#[test]
fn unknown_keys_and_bad_rules_are_problems() {
    let problems = with_rules(&GOOD.replace("[redis]", "[redis]\nurll = \"x\"")).unwrap_err();
    assert!(problems[0].message.contains("unknown field `urll`"), "{problems:?}");
    let problems = Config::parse(GOOD, Path::new("/nonexistent")).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|problem| problem.key.as_str()).collect();
    assert_eq!(keys, ["integrity.keys[0].file", "rules.files[0]", "rules"]);
}

#[test]
fn the_health_port_is_its_own_address() {
    let with = |value: &str| GOOD.replace("[redis]", &format!("[server]\nhealth_listen = \"{value}\"\n[redis]"));
    let config = with_rules(&with("127.0.0.1:8081")).unwrap();
    assert_eq!(config.health_listen, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(with_rules(GOOD).unwrap().health_listen, None);
    let problems = with_rules(&with("127.0.0.1:50051")).unwrap_err();
    assert_eq!(problems[0].key, "server.health_listen", "{problems:?}");
    assert!(
        problems[0].message.contains("must differ from server.listen"),
        "{problems:?}"
    );
    let problems = with_rules(&with("8081")).unwrap_err();
    assert_eq!(
        (problems[0].key.as_str(), problems[0].message.as_str()),
        ("server.health_listen", "`8081` is not an address:port")
    );
}

#[test]
fn tls_settings_that_cannot_work_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert, key_file, ca) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, certificate.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca, certificate.pem()).unwrap();
    let tls = |server: &str, tls: &str, caller: &str| {
        let text = GOOD
            .replace(
                "[redis]",
                &format!(
                    "[server]\n{server}\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tls}\n[redis]",
                    cert.display(),
                    key_file.display()
                ),
            )
            .replace("token_sha256 =", &format!("{caller}\ntoken_sha256 ="));
        with_rules(&text)
    };
    let ca_line = format!("client_ca_file = \"{}\"", ca.display());
    // Connections live an hour unless told otherwise, never under a minute.
    let aged = tls("", "", "").unwrap().tls.unwrap();
    assert_eq!(aged.max_connection_age, Duration::from_secs(3600));
    let problems = tls("", "max_connection_age_secs = 5", "").unwrap_err();
    assert_eq!(problems[0].key, "server.tls.max_connection_age_secs", "{problems:?}");
    // Tokens off without mTLS: nobody could authenticate.
    let problems = tls("bearer_tokens = false", "", "").unwrap_err();
    assert!(problems.iter().any(|p| p.key == "server.bearer_tokens"), "{problems:?}");
    // An identity that no certificate of the configured kind could prove.
    let problems = tls("", &ca_line, "certificate_identity = \"vendor-portal\"").unwrap_err();
    assert_eq!(problems[0].key, "callers[0].certificate_identity", "{problems:?}");
    assert!(problems[0].message.contains("must be a spiffe:// URI"), "{problems:?}");
    let dns = format!("{ca_line}\nclient_identity = \"dns\"");
    let problems = tls("", &dns, "certificate_identity = \"Portal.example\"").unwrap_err();
    assert!(problems[0].message.contains("must be lower case"), "{problems:?}");
    let config = tls("", &dns, "certificate_identity = \"portal.example\"").unwrap();
    assert_eq!(
        config.callers[0].certificate_identity.as_deref(),
        Some("portal.example")
    );
    // insecure_plaintext beside TLS does nothing, and says so.
    let config = tls("insecure_plaintext = true", "", "").unwrap();
    assert_eq!(config.warnings[0].key, "server.insecure_plaintext");
    assert!(config.warnings[0].message.contains("has no effect"));
}

const ISSUERS: &str = r#"
    [identity]
    leeway_secs = 30
    [[identity.issuers]]
    id = "corp"
    issuer = "https://login.example.com"
    audience = "grant-broker"
    groups_claim = "groups"
    [[identity.issuers]]
    id = "github"
    issuer = "https://token.actions.githubusercontent.com"
    audience = "https://github.com/acme"
    kind = "workload"
    facts = { repository_id = "repository_id", namespace = "/kubernetes.io/namespace" }
"#;

#[test]
fn identity_issuers_and_callers_that_use_them_load() {
    let text = format!(
        "{}\n    identity_issuers = [\"corp\"]\n{ISSUERS}\n    [[callers]]\n    id = \"deploy\"\n    targets = [\"prod-logs-read\"]\n    identity_issuers = [\"github\"]\n    identity_required = true\n    identity_claims = {{ repository_owner_id = \"42\" }}\n",
        GOOD.trim_end()
    );
    let config = with_rules(&text).unwrap();
    assert_eq!(config.callers[1].identity.claims["repository_owner_id"], "42");
    assert_eq!(config.identity.leeway, Duration::from_secs(30));
    let github = &config.identity.issuers[1];
    assert_eq!(github.kind, crate::domain::identity::PrincipalKind::Workload);
    assert_eq!(
        github.algorithms,
        [jsonwebtoken::Algorithm::RS256],
        "RS256 unless pinned otherwise"
    );
    assert_eq!(github.keys, crate::adapters::oidc::KeySource::Discovery);
    assert_eq!(github.facts["namespace"], "/kubernetes.io/namespace");
    let deploy = &config.callers[1];
    assert!(deploy.authenticated_by_identity(true), "a token alone identifies it");
    assert!(!config.callers[0].authenticated_by_identity(true));
    assert!(
        !config.callers[0].assert_people,
        "callers prove people unless told otherwise"
    );
}

#[test]
fn identity_problems_are_reported_by_key() {
    let issuers = ISSUERS
        .replace("https://login.example.com", "http://login.example.com")
        .replace("leeway_secs = 30", "leeway_secs = 3600")
        .replace(
            "groups_claim = \"groups\"",
            "algorithms = [\"HS256\", \"none\"]\n    jwks_uri = \"http://keys\"",
        )
        .replace("repository_id = \"repository_id\"", "\"repo id\" = \"repository_id\"");
    let text = format!(
        "{}\n    identity_issuers = [\"nobody\"]\n{issuers}\n    [[callers]]\n    id = \"deploy\"\n    targets = []\n    identity_issuers = [\"github\", \"corp\"]\n    identity_required = true\n    [[callers]]\n    id = \"lonely\"\n    targets = []\n    identity_required = true\n",
        GOOD.trim_end()
    );
    let problems = with_rules(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "identity.leeway_secs",
            "identity.issuers[0].issuer",
            "identity.issuers[0].algorithms[0]",
            "identity.issuers[0].algorithms[1]",
            "identity.issuers[0].jwks_uri",
            "identity.issuers[1].facts.repo id",
            "callers[0].identity_issuers[0]",
            "callers[1].identity_issuers",
            "callers[1].identity_claims",
            "callers[2].identity_required",
            "callers[2].identity_claims",
        ],
        "{problems:?}"
    );
    let said = |key: &str| problems.iter().find(|p| p.key == key).unwrap().message.clone();
    assert!(said("identity.issuers[0].algorithms[0]").contains("never none or HMAC"));
    assert!(said("callers[1].identity_issuers").contains("exactly one issuer"));
    assert!(said("callers[1].identity_claims").contains("any job on the platform"));
}

#[test]
fn a_token_one_caller_presents_never_alone_identifies_another() {
    // The portal forwards corp tokens for the default audience; a caller identified by corp
    // tokens of that audience alone would take every one of them.
    let text = format!(
        "{}\n    identity_issuers = [\"corp\"]\n{ISSUERS}\n    [[callers]]\n    id = \"job\"\n    targets = []\n    identity_issuers = [\"corp\"]\n    identity_required = true\n    identity_claims = {{ sub = \"job\" }}\n",
        GOOD.trim_end()
    );
    let problems = with_rules(&text).unwrap_err();
    assert_eq!(problems[0].key, "callers[0].identity_audience", "{problems:?}");
    assert!(problems[0].message.contains("callers[1]"), "{problems:?}");
    // Its own audience sets it apart.
    let apart = text.replace(
        "identity_required = true",
        "identity_required = true\n    identity_audience = \"grant-broker-job\"",
    );
    with_rules(&apart).unwrap();
}

#[test]
fn issuers_with_groups_mint_them_in_their_own_namespace() {
    let both = ISSUERS.replace(
        "kind = \"workload\"",
        "kind = \"person\"\n    groups_claim = \"groups\"",
    );
    let problems = with_rules(&format!("{GOOD}{both}")).unwrap_err();
    assert_eq!(problems[0].key, "identity.issuers[1].groups_prefix", "{problems:?}");
    let prefixed = both.replacen(
        "kind = \"person\"\n    groups_claim = \"groups\"",
        "kind = \"person\"\n    groups_claim = \"groups\"\n    groups_prefix = \"github:\"",
        1,
    );
    let config = with_rules(&format!("{GOOD}{prefixed}")).unwrap();
    assert_eq!(config.identity.issuers[1].groups_prefix, "github:");
}

#[test]
fn a_callers_powers_are_read_and_checked() {
    use crate::domain::access::{Relay, Revoke};
    let powers = |extra: &str| {
        with_rules(&GOOD.replace(
            "targets = [\"prod-logs-read\"]",
            &format!("targets = [\"prod-logs-read\"]\n{extra}"),
        ))
        .map(|config| config.callers[0].powers.clone())
    };
    let default = powers("").unwrap();
    assert_eq!((default.relay, default.revoke), (Relay::Never, Revoke::Own));
    assert_eq!(powers("act_for_approvers = true").unwrap().relay, Relay::Every);
    assert_eq!(
        powers("act_for_approvers = [\"prod-logs-read\"]").unwrap().relay,
        Relay::Targets(["prod-logs-read".to_owned()].into())
    );
    assert_eq!(powers("revoke = \"any\"").unwrap().revoke, Revoke::Any);
    let problems = powers("act_for_approvers = [\"nope\"]\nrevoke = \"all\"").unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["callers[0].act_for_approvers[0]", "callers[0].revoke"],
        "{problems:?}"
    );
    let empty = powers("act_for_approvers = []").unwrap_err();
    assert_eq!(empty[0].key, "callers[0].act_for_approvers");
}

#[test]
fn with_several_peoples_issuers_each_approver_names_the_one_that_proves_them() {
    let second = ISSUERS.replace("kind = \"workload\"", "kind = \"person\"");
    let approvers = "\n    [[approvers]]\n    person = \"sam@example.com\"\n    groups = [\"security\"]\n    [[approvers]]\n    person = \"kim@example.com\"\n    issuer = \"corp\"\n    [[approvers]]\n    person = \"lee@example.com\"\n    issuer = \"nobody\"\n";
    let problems = with_rules(&format!("{GOOD}{second}{approvers}")).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["approvers[0].issuer", "approvers[2].issuer"], "{problems:?}");
    assert!(problems[0].message.contains("corp, github"), "{}", problems[0].message);
    // With one people's issuer, naming it is optional.
    let config = with_rules(&format!("{GOOD}{ISSUERS}{}", approvers.replace("nobody", "corp"))).unwrap();
    assert_eq!(config.broker.approver_issuers.len(), 2);
}

/// Fuzzing on stable Rust: the shipped configurations and this module's, mutated at random
/// (lines dropped, values swapped for odd ones, text inserted), are checked: a configuration or
/// a list of problems, never a panic.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/grant-broker.example.toml");

    fn corpus() -> Vec<String> {
        vec![GOOD.to_owned(), format!("{GOOD}{ISSUERS}"), EXAMPLE.to_owned()]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        DropLine(usize),
        /// The value after `=` on a line becomes this.
        Value(usize, &'static str),
        Insert(usize, String),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let odd = prop_oneof![
            Just("0"),
            Just("-1"),
            Just("18446744073709551615"),
            Just("\"\""),
            Just("[]"),
            Just("true"),
            Just("{}"),
            Just("\"\\u0000\""),
            Just("\"*\""),
            Just("[\"*\", \"\"]"),
            Just("\"https://\""),
            Just("\"../../etc/passwd\""),
        ];
        prop_oneof![
            any::<usize>().prop_map(Mutation::DropLine),
            (any::<usize>(), odd).prop_map(|(at, value)| Mutation::Value(at, value)),
            (any::<usize>(), "\\PC{0,30}").prop_map(|(at, text)| Mutation::Insert(at, text)),
        ]
    }

    fn apply(text: &str, mutations: &[Mutation]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for mutation in mutations {
            let len = lines.len().max(1);
            match mutation {
                Mutation::DropLine(at) if !lines.is_empty() => {
                    lines.remove(at % len);
                }
                Mutation::Value(at, value) => {
                    if let Some(line) = lines.get_mut(at % len)
                        && let Some((key, _)) = line.split_once('=')
                    {
                        *line = format!("{key}= {value}");
                    }
                }
                Mutation::Insert(at, inserted) => lines.insert(at % (lines.len() + 1), inserted.clone()),
                Mutation::DropLine(_) => {}
            }
        }
        lines.join("\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(300), ..ProptestConfig::default() })]

        #[test]
        fn mutated_configurations_are_answered(
            which in 0..3usize,
            mutations in proptest::collection::vec(mutation(), 1..5),
        ) {
            let text = apply(&corpus()[which], &mutations);
            match with_rules(&text) {
                Ok(_) => {}
                Err(problems) => prop_assert!(!problems.is_empty()),
            }
        }
    }
}

#[test]
fn integrity_keys_are_required_read_and_checked() {
    let dir = config_dir();
    let with = |integrity: &str| {
        let text = GOOD.replace(
            "[[integrity.keys]]\n    id = 1\n    file = \"integrity.key\"",
            integrity,
        );
        let env = |name: &str| match name {
            "GB_KEY_2" => Some("k".repeat(40)),
            "GB_SHORT" => Some("short".to_owned()),
            _ => None,
        };
        Config::parse_with_env(&text, dir.path(), &env)
    };
    let problems = |integrity: &str| -> Vec<(String, String)> {
        with(integrity)
            .unwrap_err()
            .into_iter()
            .map(|problem| (problem.key, problem.message))
            .collect()
    };
    // A file's trailing newline is not the key's; the highest id seals by default.
    let config =
        with("[[integrity.keys]]\nid = 1\nfile = \"integrity.key\"\n[[integrity.keys]]\nid = 2\nenv = \"GB_KEY_2\"")
            .unwrap();
    assert_eq!(config.redis.integrity.sealing_id(), 2);
    assert_eq!(config.redis.integrity.ids().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(config.redis.checkpoint_interval, Duration::from_secs(60));
    let config = with(
        "[integrity]\nseal_with = 1\ncheckpoint_interval_secs = 5\n[[integrity.keys]]\nid = 1\nfile = \"integrity.key\"",
    )
    .unwrap();
    assert_eq!(config.redis.integrity.sealing_id(), 1);
    assert_eq!(config.redis.checkpoint_interval, Duration::from_secs(5));

    let missing = problems("");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0].0, "integrity.keys");
    assert!(
        missing[0].1.contains("at least one integrity key is required"),
        "{missing:?}"
    );
    assert_eq!(
        problems("[[integrity.keys]]\nid = 1\nenv = \"GB_SHORT\""),
        [(
            "integrity.keys[0].env".to_owned(),
            "`GB_SHORT` holds 5 bytes; an integrity key needs at least 32".to_owned()
        )]
    );
    assert_eq!(
        problems("[[integrity.keys]]\nid = 1\nenv = \"GB_UNSET\""),
        [(
            "integrity.keys[0].env".to_owned(),
            "the environment variable `GB_UNSET` is not set".to_owned()
        )]
    );
    assert_eq!(
        problems("[[integrity.keys]]\nid = 1\nenv = \"GB_KEY_2\"\nfile = \"integrity.key\"")[0].1,
        "name exactly one of `env` and `file`"
    );
    assert_eq!(
        problems("[[integrity.keys]]\nid = 0\nenv = \"GB_KEY_2\"")[0].1,
        "key id 0 is reserved: use 1-255"
    );
    assert_eq!(
        problems(
            "[[integrity.keys]]\nid = 1\nenv = \"GB_KEY_2\"\n[[integrity.keys]]\nid = 1\nfile = \"integrity.key\""
        )[0]
        .1,
        "key id 1 is given twice"
    );
    assert_eq!(
        problems("[integrity]\nseal_with = 3\n[[integrity.keys]]\nid = 1\nenv = \"GB_KEY_2\"")[0],
        (
            "integrity.seal_with".to_owned(),
            "the sealing key 3 is not among the keys".to_owned()
        )
    );
    assert_eq!(
        problems("[integrity]\ncheckpoint_interval_secs = 0\n[[integrity.keys]]\nid = 1\nenv = \"GB_KEY_2\"")[0].0,
        "integrity.checkpoint_interval_secs"
    );
    // The key's bytes are in no problem and no Debug output.
    let debug = format!(
        "{:?}",
        with("[[integrity.keys]]\nid = 2\nenv = \"GB_KEY_2\"").unwrap().redis
    );
    assert!(!debug.contains(&"k".repeat(40)), "{debug}");
    assert!(debug.contains("IntegrityKeys { sealing: 2, accepted: [2]"), "{debug}");
}

#[test]
fn limits_have_defaults_a_section_and_per_caller_overrides() {
    use crate::domain::quota::Limits;
    let config = with_rules(GOOD).unwrap();
    assert_eq!(config.callers[0].limits, Limits::default());
    let tuned = GOOD.replace(
        "[redis]",
        "[limits]\nrequests_per_minute = 100\nlive_grants_per_grantee = 3\n[redis]",
    ) + "limits = { pending_grants = 7 }\n";
    let config = with_rules(&tuned).unwrap();
    assert_eq!(
        config.callers[0].limits,
        Limits {
            requests_per_minute: 100,
            live_grants_per_grantee: 3,
            pending_grants: 7,
            ..Limits::default()
        }
    );
    let problems = with_rules(
        &(GOOD.replace("[redis]", "[limits]\nrequests_per_person_per_minute = 0\n[redis]")
            + "limits = { requests_per_minute = 2000000 }\n"),
    )
    .unwrap_err();
    let keys: Vec<(&str, &str)> = problems.iter().map(|p| (p.key.as_str(), p.message.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("limits.requests_per_person_per_minute", "must be 1-1000000"),
            ("callers[0].limits.requests_per_minute", "must be 1-1000000"),
        ]
    );
    assert!(
        with_rules(&(GOOD.to_owned() + "limits = { live_grants_per_grantee = 1 }\n")).unwrap_err()[0]
            .message
            .contains("unknown field `live_grants_per_grantee`"),
        "only the caller's own limits are per caller"
    );
}
