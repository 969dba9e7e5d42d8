//! Where Redis is, one server or a cluster ([`Endpoint`]), and the connections the broker makes
//! to it ([`Connection`]): the same commands, scripts and pipelines on both.
//!
//! On a cluster, a command goes to the primary of its key's slot (redis-rs follows `MOVED` and
//! `ASK`), and every key one script or `MULTI` touches shares a hash tag (the key table in the
//! store's module documentation). A plain pipeline is different: redis-rs sends all of it to the
//! node of its first key and a pipeline over several slots fails. The broker's pipelines gather
//! steps that belong together but live in different slots (the two rates a request counts, the
//! records of a page, the queues beside a new grant), so [`Connection`] splits such a pipeline
//! by slot, sends the parts at once, and puts the replies back in order: one round trip's
//! latency, as on one server. `SCRIPT LOAD` goes into every part (each node must know the
//! script); `WAIT` stays in the part of the write before it (it vouches for that node only).
//!
//! Three kinds of connection: the shared one every request multiplexes on (lazy, reconnecting);
//! dedicated ones for what blocks its connection on the server (a follower's `XREAD BLOCK`, the
//! webhook worker's `XREADGROUP BLOCK`, `WAIT`), so no request waits behind them; and
//! subscriptions. Channels are cluster-wide (`PUBLISH` reaches every node's subscribers), so a
//! subscription is made at the first seed node that answers.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{
    Client, ClientTlsConfig, Cmd, IntoConnectionInfo as _, Pipeline, RedisFuture, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot},
};

use super::{RedisSettings, Topology};
use crate::ports::StoreError;

/// One Redis server, or the seed nodes of a cluster.
#[derive(Clone)]
#[expect(clippy::large_enum_variant, reason = "made once per process, and cloned a few times")]
pub enum Endpoint {
    Server(Client),
    Cluster {
        client: ClusterClient,
        /// Each seed on its own, for subscriptions.
        seeds: Vec<Client>,
    },
}

/// A connection to an [`Endpoint`], cheap to clone (clones share it).
#[derive(Clone)]
pub enum Connection {
    /// The shared connection to one server: multiplexed, reconnecting.
    Server(ConnectionManager),
    /// A dedicated connection to one server.
    Dedicated(MultiplexedConnection),
    /// A cluster: a multiplexed connection to each node, routed by slot.
    Cluster(Arc<Cluster>),
}

/// A cluster connection that is made again when the cluster's shape seems to have changed.
///
/// redis-rs looks the slot map up again on `MOVED`, but not when a node stops answering: its
/// requests to a dead primary time out or are refused, and go on being sent there after a
/// replica has taken over. So a step that fails for want of a node (a refused or timed-out
/// connection, `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`) makes a new connection, at most every
/// [`RENEW_EVERY`], which reads the slot map afresh; the steps in flight finish on the old one.
pub struct Cluster {
    client: ClusterClient,
    timeouts: Timeouts,
    current: Mutex<(ClusterConnection, Instant)>,
}

/// The least time between two new cluster connections.
const RENEW_EVERY: Duration = Duration::from_millis(250);

impl Cluster {
    fn new(client: ClusterClient, timeouts: Timeouts, connection: ClusterConnection) -> Self {
        Self {
            client,
            timeouts,
            current: Mutex::new((connection, Instant::now())),
        }
    }

    fn connection(&self) -> Option<ClusterConnection> {
        self.current.lock().ok().map(|current| current.0.clone())
    }

    /// After `error`: a new connection if the error says a node is gone.
    fn after(&self, error: &redis::RedisError) {
        let node_gone = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || matches!(
                error.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::MasterDown
                ) | redis::ErrorKind::ClusterConnectionNotFound
            );
        if !node_gone {
            return;
        }
        if let Ok(mut current) = self.current.lock()
            && current.1.elapsed() >= RENEW_EVERY
        {
            *current = (
                self.client
                    .get_pending_async_connection_with_config(cluster_config(self.timeouts)),
                Instant::now(),
            );
        }
    }

    /// Sends `cmd`; on `MOVED` (the command did not run) once more, to the node named.
    async fn command(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        let mut connection = self.connection().ok_or_else(poisoned)?;
        let result = match connection.req_packed_command(cmd).await.map_err(moved) {
            Err(Redirect::To(node)) => {
                connection
                    .route_command(cmd.clone(), RoutingInfo::SingleNode(node))
                    .await
            }
            Err(Redirect::No(error)) => Err(error),
            Ok(reply) => Ok(reply),
        };
        if let Err(error) = &result {
            self.after(error);
        }
        result
    }

    /// Sends a pipeline of one slot (or a transaction); on `MOVED`, once more, to the node named.
    async fn pipeline(&self, pipeline: &Pipeline, offset: usize, count: usize) -> redis::RedisResult<Vec<Value>> {
        let mut connection = self.connection().ok_or_else(poisoned)?;
        let result = match connection
            .req_packed_commands(pipeline, offset, count)
            .await
            .map_err(moved)
        {
            Err(Redirect::To(node)) => connection.route_pipeline(pipeline.clone(), offset, count, node).await,
            Err(Redirect::No(error)) => Err(error),
            Ok(replies) => Ok(replies),
        };
        if let Err(error) = &result {
            self.after(error);
        }
        result
    }

    /// Sends each part at once and puts their replies back where their commands stood (a
    /// command sent to every part answers with the first part's reply).
    async fn parts(&self, parts: Vec<Part>, commands: usize) -> redis::RedisResult<Vec<Value>> {
        let sent = parts
            .iter()
            .map(|part| self.pipeline(&part.pipeline, 0, part.pipeline.len()));
        let replies = futures_util::future::join_all(sent).await;
        let mut placed: Vec<Option<Value>> = vec![None; commands];
        for (part, replies) in parts.iter().zip(replies) {
            let replies = replies?;
            if replies.len() != part.positions.len() {
                return Err((
                    redis::ErrorKind::Client,
                    "a pipeline part answered with the wrong number of replies",
                )
                    .into());
            }
            for (&position, reply) in part.positions.iter().zip(replies) {
                if let Some(slot) = placed.get_mut(position)
                    && slot.is_none()
                {
                    *slot = Some(reply);
                }
            }
        }
        placed
            .into_iter()
            .map(|reply| reply.ok_or_else(|| (redis::ErrorKind::Client, "a pipeline command had no reply").into()))
            .collect()
    }
}

fn poisoned() -> redis::RedisError {
    (redis::ErrorKind::Client, "the cluster connection's lock was poisoned").into()
}

/// What to do with a failed step: send it to the node a `MOVED` answer names (the command did
/// not run), or fail with the error.
enum Redirect {
    To(SingleNodeRoutingInfo),
    No(redis::RedisError),
}

fn moved(error: redis::RedisError) -> Redirect {
    if error.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::Moved) {
        return Redirect::No(error);
    }
    let node = error.redirect_node().and_then(|(address, _slot)| {
        let (host, port) = address.rsplit_once(':')?;
        Some(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port: port.parse().ok()?,
        })
    });
    match node {
        Some(node) => Redirect::To(node),
        None => Redirect::No(error),
    }
}

/// How long a connection waits: to connect, and for each answer.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl Endpoint {
    /// The clients for `settings`; nothing connects yet.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        // Never the error's own text: it could quote the URL, password and all.
        let refused = |error: redis::RedisError| {
            StoreError::Unavailable(format!(
                "cannot use `{}`: {:?}",
                settings.topology.redacted(),
                error.kind()
            ))
        };
        let certificates = || {
            settings.tls.as_ref().map(|tls| TlsCertificates {
                client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.expose().as_bytes().to_vec(),
                }),
                root_cert: tls.ca_pem.clone(),
            })
        };
        let client = |url: &str| {
            let info = connection_info(settings, url)?;
            match certificates() {
                None => Client::open(info),
                Some(certificates) => Client::build_with_tls(info, certificates),
            }
        };
        match &settings.topology {
            Topology::Server(url) => client(url).map(Self::Server).map_err(refused),
            Topology::Cluster(urls) => {
                let infos = urls
                    .iter()
                    .map(|url| connection_info(settings, url))
                    .collect::<redis::RedisResult<Vec<_>>>()
                    .map_err(refused)?;
                let mut builder = ClusterClient::builder(infos)
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.response_timeout)
                    // Never sent again by the client library: a write whose answer was lost (a
                    // timeout, a primary that died after it) may have been applied, and
                    // appends are not idempotent. The step fails UNAVAILABLE, and the caller
                    // retries it as a whole (request ids make that safe), on the slot map the
                    // library learned from the failure.
                    .retries(0);
                if let Some(certificates) = certificates() {
                    builder = builder.certs(certificates);
                }
                let seeds = urls
                    .iter()
                    .map(|url| client(url))
                    .collect::<redis::RedisResult<Vec<_>>>();
                Ok(Self::Cluster {
                    client: builder.build().map_err(refused)?,
                    seeds: seeds.map_err(refused)?,
                })
            }
        }
    }

    /// A lazy connection, shared by everything that does not block: made on first use, and
    /// made again after Redis was lost (so the broker starts, and reports NOT_SERVING, while
    /// Redis is down).
    pub fn shared(&self, timeouts: Timeouts) -> redis::RedisResult<Connection> {
        match self {
            Self::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Connection::Server)
            }
            Self::Cluster { client, .. } => Ok(Connection::Cluster(Arc::new(Cluster::new(
                client.clone(),
                timeouts,
                client.get_pending_async_connection_with_config(cluster_config(timeouts)),
            )))),
        }
    }

    /// A connection of its own, made now, for a read that blocks it on the server.
    pub async fn dedicated(&self, timeouts: Timeouts) -> redis::RedisResult<Connection> {
        match self {
            Self::Server(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Dedicated)
            }
            Self::Cluster { client, .. } => {
                let connection = client
                    .get_async_connection_with_config(cluster_config(timeouts))
                    .await?;
                Ok(Connection::Cluster(Arc::new(Cluster::new(
                    client.clone(),
                    timeouts,
                    connection,
                ))))
            }
        }
    }

    /// A subscription connection: to the server, or to the first seed node that answers.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        match self {
            Self::Server(client) => client.get_async_pubsub().await,
            Self::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(error) => last = Some(error),
                    }
                }
                Err(last.unwrap_or_else(|| (redis::ErrorKind::InvalidClientConfig, "no seed nodes").into()))
            }
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }
}

/// Where and as whom to connect: `url`, with the configured user and password (which never
/// pass through a URL string, so no error or log can quote them).
fn connection_info(settings: &RedisSettings, url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    let info = url.into_connection_info()?;
    let mut redis = info.redis_settings().clone();
    if let Some(username) = &settings.username {
        redis = redis.set_username(username);
    }
    if let Some(password) = &settings.password {
        redis = redis.set_password(password.expose());
    }
    Ok(info.set_redis_settings(redis))
}

fn cluster_config(timeouts: Timeouts) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(timeouts.connect)
        .set_response_timeout(timeouts.response)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(connection) => connection.req_packed_command(cmd),
            Self::Dedicated(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(cluster.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Dedicated(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => {
                let plain = !pipeline.is_transaction() && offset == 0 && count == pipeline.len();
                match plain.then(|| split_by_slot(pipeline)).flatten() {
                    None => Box::pin(cluster.pipeline(pipeline, offset, count)),
                    Some(parts) => Box::pin(cluster.parts(parts, pipeline.len())),
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(connection) => connection.get_db(),
            Self::Dedicated(connection) => connection.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// A pipeline's commands of one slot, and where each stood in the whole.
struct Part {
    pipeline: Pipeline,
    positions: Vec<usize>,
}

/// What a command means for splitting a pipeline.
#[derive(Debug, PartialEq, Eq)]
enum Routing<'a> {
    /// A command on a key.
    Key(&'a [u8]),
    /// `SCRIPT LOAD`: into every part.
    Everywhere,
    /// Anything else without a key (`WAIT`, `PING`): with the command before it.
    WithPrevious,
}

fn routing(cmd: &Cmd) -> Routing<'_> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => &[][..],
    });
    let Some(name) = args.next() else {
        return Routing::WithPrevious;
    };
    let is = |command: &str| name.eq_ignore_ascii_case(command.as_bytes());
    if is("SCRIPT") {
        return Routing::Everywhere;
    }
    if is("EVALSHA") || is("EVAL") || is("EVALSHA_RO") || is("EVAL_RO") {
        let _script = args.next();
        let keys = args
            .next()
            .and_then(|count| std::str::from_utf8(count).ok())
            .and_then(|count| count.parse::<usize>().ok())
            .unwrap_or(0);
        return match (keys, args.next()) {
            (1.., Some(key)) => Routing::Key(key),
            _ => Routing::WithPrevious,
        };
    }
    if is("XREAD") || is("XREADGROUP") {
        return args
            .skip_while(|arg| !arg.eq_ignore_ascii_case(b"STREAMS"))
            .nth(1)
            .map_or(Routing::WithPrevious, Routing::Key);
    }
    if ["WAIT", "PING", "INFO", "TIME", "CLIENT", "MULTI", "EXEC", "PUBLISH"]
        .iter()
        .any(|keyless| is(keyless))
    {
        return Routing::WithPrevious;
    }
    args.next().map_or(Routing::WithPrevious, Routing::Key)
}

/// The parts of a pipeline whose keys are in more than one slot, one per slot in the order
/// each slot first appears; `None` when it is all one slot (it goes as it is).
fn split_by_slot(pipeline: &Pipeline) -> Option<Vec<Part>> {
    let routes: Vec<(Routing<'_>, Option<Slot>)> = pipeline
        .cmd_iter()
        .map(|cmd| {
            let routing = routing(cmd);
            let slot = match routing {
                Routing::Key(key) => Some(Slot::for_key(key)),
                _ => None,
            };
            (routing, slot)
        })
        .collect();
    let mut slots: Vec<Slot> = Vec::new();
    for slot in routes.iter().filter_map(|(_, slot)| *slot) {
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    if slots.len() < 2 {
        return None;
    }
    let mut parts: Vec<Part> = slots
        .iter()
        .map(|_| Part {
            pipeline: redis::pipe(),
            positions: Vec::new(),
        })
        .collect();
    // A keyless command before any keyed one goes with the first part.
    let mut previous = 0;
    for (position, (cmd, (routing, slot))) in pipeline.cmd_iter().zip(&routes).enumerate() {
        match (routing, slot) {
            (Routing::Everywhere, _) => {
                for part in &mut parts {
                    part.pipeline.add_command(cmd.clone());
                    part.positions.push(position);
                }
            }
            (_, Some(slot)) => {
                previous = slots.iter().position(|known| known == slot).unwrap_or(0);
                parts[previous].pipeline.add_command(cmd.clone());
                parts[previous].positions.push(position);
            }
            (_, None) => {
                parts[previous].pipeline.add_command(cmd.clone());
                parts[previous].positions.push(position);
            }
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(parts: &[Part]) -> Vec<Vec<usize>> {
        parts.iter().map(|part| part.positions.clone()).collect()
    }

    #[test]
    fn a_pipeline_of_one_slot_goes_as_it_is() {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg("gb:g:{a}")
            .cmd("SET")
            .arg("gb:g:{a}:x")
            .arg(1)
            .cmd("WAIT")
            .arg(1)
            .arg(10);
        assert!(split_by_slot(&pipe).is_none());
        assert!(split_by_slot(&redis::pipe()).is_none());
    }

    #[test]
    fn a_pipeline_over_slots_splits_by_slot_keeping_order_and_script_loads() {
        let script = redis::Script::new("return 1");
        let mut pipe = redis::pipe();
        pipe.load_script(&script)
            .invoke_script(script.key("gb:rate:{caller:a}").arg(1))
            .invoke_script(script.key("gb:rate:{person:b}").arg(2))
            .cmd("WAIT")
            .arg(1)
            .arg(10)
            .cmd("GET")
            .arg("gb:rate:{caller:a}");
        let parts = split_by_slot(&pipe).unwrap();
        // SCRIPT LOAD in both; WAIT with the write before it; the last GET with its slot's part.
        assert_eq!(shape(&parts), [vec![0, 1, 4], vec![0, 2, 3]]);
    }

    #[test]
    fn keys_are_found_where_each_command_keeps_them() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("abc").arg(2).arg("k1").arg("k2").arg("v");
        assert_eq!(routing(&evalsha), Routing::Key(b"k1"));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0).arg("v");
        assert_eq!(routing(&keyless), Routing::WithPrevious);
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("BLOCK")
            .arg(5)
            .arg("STREAMS")
            .arg("s")
            .arg(">");
        assert_eq!(routing(&read), Routing::Key(b"s"));
        assert_eq!(routing(redis::cmd("script").arg("load").arg("x")), Routing::Everywhere);
        assert_eq!(routing(redis::cmd("ZADD").arg("q").arg(0).arg("m")), Routing::Key(b"q"));
        assert_eq!(routing(&redis::cmd("PING")), Routing::WithPrevious);
    }
}
