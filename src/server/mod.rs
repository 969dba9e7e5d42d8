//! Assembling and running the service: adapters from configuration, the gRPC server with health
//! ([`health`]) and reflection behind the middleware stack, reloads of the configuration
//! ([`reload`]), graceful shutdown. `run` takes a bound listener and a shutdown future, so tests
//! run the real server on `127.0.0.1:0`.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;

pub mod health;
pub mod reload;

use crate::tls::TlsSettings;
use tonic::transport::server::TcpIncoming;

use crate::{
    adapters::{
        IamEnforcer, RedisGrantStore, StsIssuer,
        webhooks::{DeliveryWorker, Outbox, WebhookNotifier},
    },
    broker::{Adapters, Broker},
    config::Config,
    grpc::{
        Authenticator, Current, GrantBrokerService, MAX_REQUEST_BYTES, RequireAuthentication, Served,
        layers::{CallSettings, server_layers},
        proto,
    },
    ports::{Ports, SystemClock},
};

/// What a deployment runs on: Redis, STS, IAM and the system clock.
pub struct Deployed;

impl Ports for Deployed {
    type Store = RedisGrantStore;
    type Issuer = StsIssuer;
    type Clock = SystemClock;
    type Enforcer = IamEnforcer;
    type Notifier = WebhookNotifier;
}

/// The production broker.
pub type ProductionBroker = Broker<Deployed>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot set up the grant store: {0}")]
    Store(#[from] crate::ports::StoreError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot set up webhook deliveries: {0}")]
    Webhooks(String),
    #[error("cannot serve TLS: {0}")]
    Tls(String),
    #[error("identity issuers: {0}")]
    Identity(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds the broker and authenticator a configuration describes, and the webhook delivery
/// worker when webhooks are configured (for [`run`]).
pub async fn build(config: Config) -> Result<(ProductionBroker, Authenticator, Option<DeliveryWorker>), ServeError> {
    // Parsed now rather than by the first request (a few milliseconds).
    let catalog = crate::domain::iam::Catalog::builtin();
    tracing::info!(source = catalog.source(), "IAM action catalog loaded");
    let store = RedisGrantStore::new(&config.redis)?;
    let notifier = WebhookNotifier::new(
        Outbox::new(&config.redis.key_prefix, &config.webhooks),
        store.shared_connection(),
    );
    let deliveries = if config.webhooks.is_empty() {
        None
    } else {
        let worker = DeliveryWorker::new(&store.endpoint(), &config.redis, config.webhooks, config.delivery)
            .map_err(ServeError::Webhooks)?;
        Some(worker)
    };
    let mut regions: Vec<String> = config.targets.iter().map(|target| target.region.clone()).collect();
    regions.sort();
    regions.dedup();
    let issuer = StsIssuer::new(&config.sts, regions).await;
    let mut auth = Authenticator::with_certificates(&config.callers, config.bearer_tokens);
    if !config.identity.issuers.is_empty() {
        let verifier = Arc::new(crate::adapters::oidc::Verifier::new(&config.identity).map_err(ServeError::Identity)?);
        auth = auth.with_identity(&config.callers, verifier);
    }
    let enforcer = IamEnforcer::new(&config.iam, &config.targets).await;
    let adapters = Adapters {
        store,
        issuer,
        enforcer,
        notifier,
        clock: SystemClock,
    };
    let broker = ProductionBroker::new(adapters, config.rules, config.targets, config.broker);
    Ok((broker, auth, deliveries))
}

/// How often an idle connection is pinged, and how long an answer may take before it is closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the calls of a connection past its maximum age may take to finish.
const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// Where the broker serves: the API (GrantBroker, health, reflection), and, when configured, a
/// plaintext port for health probes only.
pub struct Listeners {
    pub api: TcpListener,
    pub health: Option<TcpListener>,
}

/// How the server runs, from the configuration.
pub struct Serving<'a> {
    /// How long a shutdown waits for the calls in flight.
    pub drain_timeout: Duration,
    /// TLS on the API port; `None`: plaintext.
    pub tls: Option<&'a TlsSettings>,
    /// The middleware's bounds ([`crate::grpc::layers`]).
    pub calls: CallSettings,
    /// Where the configuration came from, to reload it (SIGHUP, a file changed); `None`: it
    /// is never reloaded.
    pub reload: Option<reload::Source>,
}

/// Serves GrantBroker, grpc.health.v1.Health and server reflection (v1 and v1alpha, advertising
/// only GrantBroker and Health) on `listener`, over TLS when `tls` is given, behind the middleware
/// stack ([`crate::grpc::layers`]), until `shutdown` completes. Then readiness turns NOT_SERVING,
/// the server stops accepting, ends every stream at once (UNAVAILABLE: reconnect elsewhere with
/// the last cursor), and waits at most `drain_timeout` for the calls still in flight. Runs
/// `deliveries` (webhook notifications) and the reloads of the configuration meanwhile.
pub async fn run(
    listeners: Listeners,
    broker: ProductionBroker,
    auth: Authenticator,
    deliveries: Option<DeliveryWorker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: Serving<'_>,
) -> Result<(), ServeError> {
    let Serving {
        drain_timeout,
        tls: tls_settings,
        calls,
        reload,
    } = serving;
    // Read again now (check-config read it too): what is served is what the files hold.
    let tls = tls_settings
        .map(|tls| {
            crate::tls::load_and_watch(tls)
                .map(|(current, reloader)| ((tls.handshake_timeout, tls.client_identity), current, reloader))
        })
        .transpose()
        .map_err(ServeError::Tls)?;
    let Listeners {
        api: listener,
        health: health_listener,
    } = listeners;
    let current: Arc<Current<Deployed>> = Arc::new(arc_swap::ArcSwap::from_pointee(Served {
        auth,
        broker: Arc::new(broker),
    }));
    // Set once `shutdown` completes: streams end, and the drain's clock starts.
    let (draining, drained) = tokio::sync::watch::channel(false);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut tasks = vec![
        tokio::spawn(health::report(
            Arc::clone(&current),
            health_reporter.clone(),
            drained.clone(),
        )),
        tokio::spawn(sweep_expiries(Arc::clone(&current))),
        // A write cut short at exit leaves its lease to expire; the next holder writes the same.
        tokio::spawn(enforce_revocations(Arc::clone(&current))),
        tokio::spawn(trim_audit_log(Arc::clone(&current))),
        tokio::spawn(read_levels(Arc::clone(&current))),
        tokio::spawn(log_rules_loaded(in_use(&current))),
        // Repairs still pending are lost with the process: see docs/storage.md.
        tokio::spawn({
            let current = Arc::clone(&current);
            async move { in_use(&current).store().maintain().await }
        }),
    ];
    // An attempt cut short at exit is reclaimed by another replica (or this one, restarted).
    tasks.extend(deliveries.map(|worker| tokio::spawn(worker.run())));
    tasks.extend(reload.map(|source| tokio::spawn(reload::Reloader::new(source, Arc::clone(&current)).run())));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false)
    };
    let mut drain_clock = drained.clone();
    let shutdown = {
        let reporter = health_reporter.clone();
        async move {
            shutdown.await;
            // Not ready first: probes that ask during the drain see NOT_SERVING (the health port
            // still answers), not a broker that merely went quiet.
            health::set_ready(&reporter, tonic_health::ServingStatus::NotServing).await;
            tracing::info!(
                drain_timeout_secs = drain_timeout.as_secs(),
                "shutting down: not ready, ending streams, draining calls in flight"
            );
            let _ = draining.send(true);
        }
    };
    let drain_deadline = async move {
        if drain_clock.wait_for(|draining| *draining).await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Health alone, in plaintext, on a port of its own: what probes that cannot present a client
    // certificate reach. It answers (NOT_SERVING) through the drain, and stops with the server.
    let health_port = health_listener.map(|listener| {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let serving = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(health_service.clone())
            .serve_with_incoming(incoming);
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "the health port stopped");
            }
        })
    });
    let mut builder = tonic::transport::Server::builder()
        // A peer that stops answering pings is dropped, not kept open forever.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(settings) = tls_settings {
        // The identity a client certificate proved is read once per connection: no connection
        // outlives `max_connection_age` (streams get a grace period, then resume elsewhere).
        builder = builder
            .max_connection_age(settings.max_connection_age)
            .max_connection_age_grace(CONNECTION_AGE_GRACE);
    }
    let router = builder
        .layer(server_layers(&calls, drained.clone()))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        // Authentication runs on the headers, before the (size-limited) message is decoded.
        .add_service(RequireAuthentication::new(
            proto::grant_broker_server::GrantBrokerServer::new(GrantBrokerService::<Deployed>::new(drained))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
            Arc::clone(&current),
        ));
    let (serving, acceptor): (std::pin::Pin<Box<dyn Future<Output = _> + Send>>, _) = match tls {
        None => {
            // Without TCP_NODELAY, small responses wait out delayed ACKs: ~40 ms per call on Linux.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            (Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)), None)
        }
        Some(((handshake_timeout, identity_kind), current, reloader)) => {
            let (incoming, acceptor) = crate::tls::incoming(listener, current, handshake_timeout, identity_kind);
            (
                Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)),
                Some((acceptor, reloader)),
            )
        }
    };
    let result = tokio::select! {
        result = serving => result,
        () = drain_deadline => {
            tracing::warn!(drain_timeout_secs = drain_timeout.as_secs(), "calls still in flight after the drain timeout: stopping anyway");
            Ok(())
        }
    };
    if let Some((acceptor, reloader)) = acceptor {
        acceptor.abort();
        reloader.abort();
    }
    if let Some(task) = health_port {
        task.abort();
    }
    for task in tasks {
        task.abort();
    }
    Ok(result?)
}

/// The broker of the configuration in use (background work takes it again at every step, so it
/// follows reloads).
pub(crate) fn in_use<P: Ports>(current: &Current<P>) -> Arc<Broker<P>> {
    Arc::clone(&current.load().broker)
}

/// Records in the audit log which rules this replica runs, once it can reach Redis (retried
/// while it cannot, for as long as the replica runs: the record is what tells an auditor which
/// rules decided).
pub(crate) async fn log_rules_loaded<P: Ports>(broker: Arc<Broker<P>>) {
    let mut wait = Duration::from_millis(250);
    loop {
        match broker.log_rules_loaded().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?wait, "could not record the rules loaded in the audit log");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How often each replica looks for revocation work: noted grants, roles to (re)write.
const ENFORCEMENT_INTERVAL: Duration = Duration::from_secs(1);

async fn enforce_revocations<P: Ports>(current: Arc<Current<P>>) {
    loop {
        tokio::time::sleep(ENFORCEMENT_INTERVAL).await;
        if let Err(error) = in_use(&current).enforce_pending().await {
            tracing::warn!(%error, "revocation enforcement pass failed; retrying at the next interval");
        }
    }
}

/// How often the store's levels are read for the gauges (one round trip).
const LEVELS_INTERVAL: Duration = Duration::from_secs(15);

async fn read_levels(current: Arc<Current<Deployed>>) {
    loop {
        match in_use(&current).store().gauges().await {
            Ok(gauges) => crate::telemetry::metrics::metrics().levels(
                gauges.pending_approvals,
                gauges.webhook_dead_list,
                gauges.repairs_pending,
            ),
            Err(error) => tracing::debug!(%error, "store levels not read; the gauges keep their last values"),
        }
        tokio::time::sleep(LEVELS_INTERVAL).await;
    }
}

/// How often each replica drops audit events older than the retention period (idempotent, so
/// replicas need not agree on who does it).
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

async fn trim_audit_log<P: Ports>(current: Arc<Current<P>>) {
    loop {
        tokio::time::sleep(RETENTION_INTERVAL).await;
        match in_use(&current).trim_audit_log().await {
            Ok(trimmed) => tracing::info!(trimmed, "audit log trimmed to its retention period"),
            Err(error) => tracing::warn!(%error, "audit log trim failed; retrying at the next interval"),
        }
    }
}

/// How often each replica records the expiry of grants whose deadline has passed. Every replica
/// sweeps; each expiry is recorded once whichever does (see `Broker::expire_due`).
const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

async fn sweep_expiries<P: Ports>(current: Arc<Current<P>>) {
    loop {
        tokio::time::sleep(EXPIRY_INTERVAL).await;
        let broker = in_use(&current);
        // Until every due grant is handled: a sweep takes at most a batch.
        loop {
            match broker.expire_due().await {
                Ok(0) => break,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%error, "expiry sweep failed; retrying at the next interval");
                    break;
                }
            }
        }
    }
}
