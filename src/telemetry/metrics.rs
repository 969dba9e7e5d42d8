//! The metric instruments, named by OpenTelemetry's semantic conventions where one exists
//! (`rpc.server.call.duration`, `rpc.client.call.duration`, `db.client.operation.duration`) and
//! under `grant_broker.` otherwise. docs/metrics.md lists every one with its attributes.
//!
//! One set per process, made on first use from the global meter provider: [`super::init`] sets
//! that provider before the server starts, so no instrument is made from the no-op provider that
//! stands in until then (in tests without telemetry every instrument is a no-op, which costs a
//! branch). Attribute values are bounded sets (methods, status codes, target ids, outcomes),
//! never grant ids or people, so the number of series stays fixed.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter},
};

/// Bucket bounds (seconds) for call durations: from a cached read to a slow STS call.
const DURATION_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    rpc_duration: Histogram<f64>,
    decisions: Counter<u64>,
    grants: Counter<u64>,
    aws_duration: Histogram<f64>,
    redis_duration: Histogram<f64>,
    webhook_deliveries: Counter<u64>,
    enforcement_failures: Counter<u64>,
    reloads: Counter<u64>,
    tampered: Counter<u64>,
    pending_approvals: Gauge<u64>,
    revocation_backlog: Gauge<u64>,
    webhook_dead_list: Gauge<u64>,
    repairs_pending: Gauge<u64>,
}

/// The process's instruments.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("grant-broker")))
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// What a grant went through, for `grant_broker.grants`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantEvent {
    Issued,
    Denied,
    Revoked,
    Expired,
}

impl GrantEvent {
    fn name(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Denied => "denied",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let duration = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build()
        };
        Self {
            rpc_duration: duration("rpc.server.call.duration", "How long the server took to answer a call"),
            decisions: meter
                .u64_counter("grant_broker.decisions")
                .with_description("Decisions of the approval rules, by outcome and deciding rule")
                .build(),
            grants: meter
                .u64_counter("grant_broker.grants")
                .with_description("Grants issued, denied, revoked and expired, by target")
                .build(),
            aws_duration: duration(
                "rpc.client.call.duration",
                "How long calls to AWS (STS, IAM) took, by operation and error code",
            ),
            redis_duration: duration(
                "db.client.operation.duration",
                "How long Redis steps took, by operation and error",
            ),
            webhook_deliveries: meter
                .u64_counter("grant_broker.webhook.deliveries")
                .with_description("Webhook delivery attempts, by webhook and outcome")
                .build(),
            enforcement_failures: meter
                .u64_counter("grant_broker.revocation.enforcement.failures")
                .with_description("Writes of a revocation into a target role that failed")
                .build(),
            reloads: meter
                .u64_counter("grant_broker.config.reloads")
                .with_description("Configuration reloads, by outcome")
                .build(),
            tampered: meter
                .u64_counter("grant_broker.store.tampered")
                .with_description("Grant records met that fail their seal (changed outside the broker)")
                .build(),
            pending_approvals: meter
                .u64_gauge("grant_broker.approvals.pending")
                .with_description("Grants waiting for approvals")
                .build(),
            revocation_backlog: meter
                .u64_gauge("grant_broker.revocation.backlog")
                .with_description("Roles whose deny policy does not yet hold every revocation recorded for them")
                .build(),
            webhook_dead_list: meter
                .u64_gauge("grant_broker.webhook.dead_list")
                .with_description("Notifications in the webhook dead list")
                .build(),
            repairs_pending: meter
                .u64_gauge("grant_broker.store.repairs.pending")
                .with_description("This replica's index and log writes waiting to be repaired")
                .build(),
        }
    }

    /// A call the server answered: `method` is `package.Service/Method`, `code` the gRPC status
    /// code's name (`OK`, `DEADLINE_EXCEEDED`).
    pub fn rpc_finished(&self, method: &str, code: &'static str, took: Duration) {
        self.rpc_duration.record(
            seconds(took),
            &[
                KeyValue::new("rpc.system.name", "grpc"),
                KeyValue::new("rpc.method", method.to_owned()),
                KeyValue::new("rpc.response.status_code", code),
            ],
        );
    }

    /// The rules decided: `question` is request, issuance (decided again before STS) or
    /// extension; `outcome` approve, pending or deny; `rule` the first deciding policy's id (or
    /// `default` when none did).
    pub fn decided(&self, question: &'static str, outcome: &'static str, rule: &str) {
        self.decisions.add(
            1,
            &[
                KeyValue::new("grant_broker.question", question),
                KeyValue::new("grant_broker.decision", outcome),
                KeyValue::new("grant_broker.rule", rule.to_owned()),
            ],
        );
    }

    pub fn grant(&self, event: GrantEvent, target: &str) {
        self.grants.add(
            1,
            &[
                KeyValue::new("grant_broker.event", event.name()),
                KeyValue::new("grant_broker.target", target.to_owned()),
            ],
        );
    }

    /// A call to AWS: `service` STS or IAM, `operation` AssumeRole, PutRolePolicy...; `error`
    /// the AWS error code (`Throttling`, `AccessDenied`) or a transport failure's kind.
    pub fn aws_call(&self, service: &'static str, operation: &'static str, error: Option<&str>, took: Duration) {
        let mut attributes = vec![
            KeyValue::new("rpc.system.name", "aws-api"),
            KeyValue::new("rpc.method", format!("{service}/{operation}")),
        ];
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error.to_owned()));
        }
        self.aws_duration.record(seconds(took), &attributes);
    }

    /// A Redis step (`operation`: the script or command), and the error kind if it failed.
    pub fn redis_step(&self, operation: &'static str, error: Option<&'static str>, took: Duration) {
        let mut attributes = vec![
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", operation),
        ];
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error));
        }
        self.redis_duration.record(seconds(took), &attributes);
    }

    /// `outcome`: delivered, retry or dead.
    pub fn webhook_attempt(&self, webhook: &str, outcome: &'static str) {
        self.webhook_deliveries.add(
            1,
            &[
                KeyValue::new("grant_broker.webhook", webhook.to_owned()),
                KeyValue::new("grant_broker.outcome", outcome),
            ],
        );
    }

    /// A revocation could not be written into a role: `code` is AWS's error code (or what kept
    /// the call from an answer).
    pub fn enforcement_failed(&self, code: &str) {
        self.enforcement_failures
            .add(1, &[KeyValue::new("error.type", code.to_owned())]);
    }

    /// `outcome`: applied, unchanged or refused.
    pub fn reloaded(&self, outcome: &'static str) {
        self.reloads.add(1, &[KeyValue::new("grant_broker.outcome", outcome)]);
    }

    /// A grant record that fails its seal was met.
    pub fn tampered_record(&self) {
        self.tampered.add(1, &[]);
    }

    /// Roles whose deny policy lags the revocations recorded for them (each enforcement pass).
    pub fn revocation_backlog(&self, roles: u64) {
        self.revocation_backlog.record(roles, &[]);
    }

    /// The store's levels, as last read.
    pub fn levels(&self, pending_approvals: u64, webhook_dead_list: u64, repairs_pending: u64) {
        self.pending_approvals.record(pending_approvals, &[]);
        self.webhook_dead_list.record(webhook_dead_list, &[]);
        self.repairs_pending.record(repairs_pending, &[]);
    }
}
