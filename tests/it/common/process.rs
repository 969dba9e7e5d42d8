//! The `grant-broker serve` binary as an operator runs it: a configuration file, the
//! environment, signals, and its log lines (stderr) kept for the test to read.

use std::{
    io::Read as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Client, Settings, config_text, free_port, wait_for_port};
use grant_broker::grpc::proto;

pub struct BrokerProcess {
    pub child: Child,
    pub port: u16,
    pub health_port: u16,
    pub config: tempfile::NamedTempFile,
    logs: Arc<Mutex<Vec<u8>>>,
}

impl BrokerProcess {
    /// Serves `settings` on free ports, with `server` added to the `[server]` table and `env`
    /// set.
    pub fn start(settings: &Settings, server: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let health_port = free_port();
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            config.path(),
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nhealth_listen = \"127.0.0.1:{health_port}\"\n{server}\n{}",
                config_text(settings)
            ),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_grant-broker"));
        command
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (name, value) in &settings.env {
            command.env(name, value);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(read) = stderr.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        });
        wait_for_port(port, "grant-broker", &mut child);
        Self {
            child,
            port,
            health_port,
            config,
            logs,
        }
    }

    pub async fn client(&self) -> Client {
        proto::grant_broker_client::GrantBrokerClient::connect(format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }

    /// The health service on the health port (a channel that reconnects after an outage).
    pub async fn health(&self) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", self.health_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    /// What the broker logged so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Waits up to `within` for a log line containing every one of `needles`.
    pub async fn wait_for_log(&self, needles: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .logs()
                .lines()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {within:?}; the log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits for the process to exit by itself, failing the test if it takes longer than `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running {within:?} later");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
