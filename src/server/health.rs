//! grpc.health.v1 as orchestrators read it. Three answers, by service name:
//!
//! - `liveness`: SERVING for as long as the process runs its server (a restart would not help
//!   it otherwise);
//! - `readiness` (also `""`, the server as a whole, and `grantbroker.v1.GrantBroker`): SERVING
//!   while Redis answers, since without the store no request can be recorded; NOT_SERVING as soon
//!   as the broker starts shutting down (the server stops accepting in the same moment: the pause
//!   that lets load balancers move away is the orchestrator's, Kubernetes' `preStop`). The rules in use are always usable: a process starts only with a rule set that
//!   validates, and a reload that does not validate keeps the one in use.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{grpc::Current, ports::Ports};

pub const LIVENESS: &str = "liveness";
pub const READINESS: [&str; 3] = ["readiness", "", "grantbroker.v1.GrantBroker"];

/// How often Redis is asked whether it answers.
const INTERVAL: Duration = Duration::from_secs(2);

pub(super) async fn set_ready(reporter: &HealthReporter, status: ServingStatus) {
    for service in READINESS {
        reporter.set_service_status(service, status).await;
    }
}

/// Reports until the drain starts, then readiness NOT_SERVING for good.
pub(super) async fn report<P: Ports>(
    current: Arc<Current<P>>,
    reporter: HealthReporter,
    mut draining: watch::Receiver<bool>,
) {
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    set_ready(&reporter, ServingStatus::NotServing).await;
    let mut last = None;
    loop {
        let status = if super::in_use(&current).store_reachable().await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if status == ServingStatus::Serving {
                tracing::info!("ready: Redis answers");
            } else {
                tracing::warn!("not ready: Redis does not answer");
            }
            set_ready(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = draining.wait_for(|draining| *draining) => break,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
    set_ready(&reporter, ServingStatus::NotServing).await;
}
