//! A real Redis Cluster on loopback: primaries and replicas (`redis-server --cluster-enabled
//! yes`), joined by `redis-cli --cluster create`.
//!
//! [`RedisCluster::shared`] is the one `scripts/test` starts for the whole run
//! (`GB_TEST_REDIS_CLUSTER`, its seed URLs); tests sharing it keep apart by key prefix. Run
//! without it (`cargo nextest run` alone), each test starts its own. A test that kills nodes
//! starts its own with [`RedisCluster::start`].

use std::{
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::*;

/// One node: its client port and its process.
struct Node {
    port: u16,
    bus_port: u16,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn spawn(port: u16, bus_port: u16) -> Child {
        let dir = std::env::temp_dir();
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &dir.join(format!("gb-test-cluster-{port}.conf")).display().to_string(),
                // Failover within a couple of seconds of a primary's death.
                "--cluster-node-timeout",
                "1500",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.display().to_string(),
                "--dbfilename",
                &format!("gb-test-cluster-{port}.rdb"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)")
    }
}

/// A cluster this process started (stopped on drop), or the shared one `scripts/test` started.
pub struct RedisCluster {
    nodes: Vec<Node>,
    seeds: Vec<String>,
}

impl RedisCluster {
    /// `primaries` primaries, each with `replicas` replicas, every slot assigned and the cluster
    /// answering `cluster_state:ok` on every node.
    pub async fn start(primaries: usize, replicas: usize) -> Self {
        let count = primaries * (1 + replicas);
        for _ in 0..3 {
            // Config files of earlier runs on a reused port would make a node rejoin their cluster.
            let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
            let mut nodes = Vec::new();
            let mut lost_a_port = false;
            for &(port, bus_port) in &ports {
                let _ = std::fs::remove_file(std::env::temp_dir().join(format!("gb-test-cluster-{port}.conf")));
                let mut child = Node::spawn(port, bus_port);
                std::thread::sleep(Duration::from_millis(20));
                if let Ok(Some(_)) = child.try_wait() {
                    lost_a_port = true;
                    break;
                }
                wait_for_port(port, "redis-server (cluster node)", &mut child);
                nodes.push(Node {
                    port,
                    bus_port,
                    child: Mutex::new(Some(child)),
                });
            }
            let cluster = Self {
                seeds: nodes
                    .iter()
                    .map(|node| format!("redis://127.0.0.1:{}", node.port))
                    .collect(),
                nodes,
            };
            if lost_a_port {
                continue;
            }
            let created = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)))
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .expect("redis-cli must be installed (it comes with redis-server)");
            assert!(
                created.status.success(),
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            );
            cluster.wait_until_ok().await;
            cluster.wait_for_replicas(replicas).await;
            return cluster;
        }
        panic!("could not start a cluster on free ports");
    }

    /// The cluster `scripts/test` started (`GB_TEST_REDIS_CLUSTER`), else one of this test's
    /// own (3 primaries, 1 replica each). Tests sharing one keep apart by key prefix
    /// ([`unique_prefix`]).
    pub async fn shared() -> RedisCluster {
        match std::env::var("GB_TEST_REDIS_CLUSTER") {
            Ok(seeds) if !seeds.is_empty() => RedisCluster {
                nodes: Vec::new(),
                seeds: seeds.split(',').map(str::to_owned).collect(),
            },
            _ => RedisCluster::start(3, 1).await,
        }
    }

    /// The URLs of every node, as `redis.cluster_nodes` takes them.
    pub fn seeds(&self) -> Vec<String> {
        self.seeds.clone()
    }

    /// A plain connection to the node at `port`.
    pub async fn node_connection(port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The ports of the nodes that are primaries now (by `CLUSTER NODES` on a live node).
    pub async fn primaries(&self) -> Vec<u16> {
        self.nodes_with_flag("master").await
    }

    pub async fn replicas(&self) -> Vec<u16> {
        self.nodes_with_flag("slave").await
    }

    async fn nodes_with_flag(&self, flag: &str) -> Vec<u16> {
        for seed in &self.seeds {
            let Ok(client) = redis::Client::open(seed.as_str()) else {
                continue;
            };
            let Ok(Ok(mut connection)) =
                tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
            else {
                continue;
            };
            let Ok(text) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut connection)
                .await
            else {
                continue;
            };
            let mut ports: Vec<u16> = text
                .lines()
                .filter(|line| {
                    let flags = line.split(' ').nth(2).unwrap_or_default();
                    flags.split(',').any(|f| f == flag) && !flags.contains("fail")
                })
                .filter_map(|line| {
                    let address = line.split(' ').nth(1)?;
                    address.split(['@', ':']).nth(1)?.parse().ok()
                })
                .collect();
            ports.sort_unstable();
            return ports;
        }
        panic!("no node of the cluster answers");
    }

    /// The port of the primary that holds `key`'s slot now.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let mut connection = Self::node_connection(self.primaries().await[0]).await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let shards: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .unwrap();
        let redis::Value::Array(ranges) = shards else {
            panic!("CLUSTER SLOTS: {shards:?}")
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else { continue };
            let number = |value: &redis::Value| match value {
                redis::Value::Int(n) => *n,
                other => panic!("CLUSTER SLOTS: {other:?}"),
            };
            let (start, end) = (number(&parts[0]), number(&parts[1]));
            if (start..=end).contains(&i64::from(slot)) {
                let redis::Value::Array(primary) = &parts[2] else {
                    panic!("CLUSTER SLOTS: {parts:?}")
                };
                return u16::try_from(number(&primary[1])).unwrap();
            }
        }
        panic!("slot {slot} is not served");
    }

    /// Kills the node at `port` (a crash: no failover handed over first).
    pub fn kill(&self, port: u16) {
        let node = self
            .nodes
            .iter()
            .find(|node| node.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node at `port` again, from its cluster configuration file: it rejoins, as a
    /// replica of whoever took its slots over.
    pub fn restart(&self, port: u16) {
        let node = self
            .nodes
            .iter()
            .find(|node| node.port == port)
            .expect("a node of this cluster");
        let mut child = Node::spawn(node.port, node.bus_port);
        wait_for_port(node.port, "redis-server (cluster node, restarted)", &mut child);
        *node.child.lock().unwrap() = Some(child);
    }

    /// Waits until every live node says `cluster_state:ok` and knows every slot's owner.
    pub async fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: while Instant::now() < deadline {
            for seed in &self.seeds {
                let port: u16 = seed.rsplit(':').next().unwrap().parse().unwrap();
                if let Some(node) = self.nodes.iter().find(|node| node.port == port)
                    && node.child.lock().unwrap().is_none()
                {
                    continue;
                }
                let Ok(client) = redis::Client::open(seed.as_str()) else {
                    continue 'wait;
                };
                let Ok(Ok(mut connection)) =
                    tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'wait;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'wait;
                }
            }
            return;
        }
        panic!("the cluster did not reach cluster_state:ok within 30 s");
    }

    /// Waits until a replica has taken over from the dead primary at `port` and every slot is
    /// served again.
    pub async fn wait_for_failover(&self, port: u16, primaries: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let now = self.primaries().await;
            if !now.contains(&port) && now.len() == primaries {
                self.wait_until_ok().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no replica took over from {port} within 30 s");
    }

    /// Waits until every primary has `replicas` replicas whose replication link is up.
    pub async fn wait_for_replicas(&self, replicas: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: while Instant::now() < deadline {
            let primaries = self.primaries().await;
            for port in primaries {
                let mut connection = Self::node_connection(port).await;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                let online = info
                    .lines()
                    .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                    .count();
                if online < replicas {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'wait;
                }
            }
            return;
        }
        panic!("the cluster's replicas did not come online within 30 s");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = node.child.lock().unwrap().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let dir = std::env::temp_dir();
            let _ = std::fs::remove_file(dir.join(format!("gb-test-cluster-{}.conf", node.port)));
            let _ = std::fs::remove_file(dir.join(format!("gb-test-cluster-{}.rdb", node.port)));
        }
    }
}

/// A key prefix no other test uses, for tests sharing one cluster.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// A store on `cluster` under `prefix`, as the broker configures it.
pub fn cluster_store(cluster: &RedisCluster, prefix: &str) -> grant_broker::adapters::redis_store::RedisGrantStore {
    grant_broker::adapters::redis_store::RedisGrantStore::new(&super::store_settings(
        grant_broker::adapters::Topology::Cluster(cluster.seeds()),
        prefix,
    ))
    .unwrap()
}
