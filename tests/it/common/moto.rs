//! The moto server as AWS: shared when `GB_TEST_MOTO_URL` is set, otherwise started here.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use super::*;

/// The moto server: shared from `GB_TEST_MOTO_URL`, or one started for this test.
pub struct Moto {
    pub url: String,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("GB_TEST_MOTO_URL") {
            return Self { url, child: None };
        }
        let venv = manifest_dir().join(".venv/bin/moto_server");
        let program = if venv.exists() {
            venv
        } else {
            PathBuf::from("moto_server")
        };
        let port = free_port();
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {}: {error} (run scripts/test, which installs moto)",
                    program.display()
                )
            });
        wait_for_port(port, "moto_server", &mut child);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
