//! Every call to AWS, observed alike (STS and IAM): a client span with the RPC semantic
//! conventions for the AWS SDK (`rpc.system.name` aws-api, `rpc.service`, `rpc.method`,
//! `cloud.region`, `aws.request_id`, `aws.attempts`, `error.type`) and `rpc.client.call.duration`.
//!
//! INVARIANT (secrets are never at rest): the span carries names, the region, the request id
//! and the error code, never a request's or a response's content (credentials, policies, MFA
//! codes, AWS's messages that name the broker's principal).

use std::{future::Future, time::Instant};

use aws_sdk_sts::{
    config::{ConfigBag, Intercept, RuntimeComponents, interceptors::FinalizerInterceptorContextRef},
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
};
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use tracing::Instrument as _;

use crate::telemetry::metrics::metrics;

/// The code a failed call is counted under: AWS's error code, or what kept the call from an
/// answer.
fn error_code<E: ProvideErrorMetadata>(error: &SdkError<E>) -> String {
    match error {
        SdkError::ServiceError(context) => context.err().code().unwrap_or("Unknown").to_owned(),
        SdkError::TimeoutError(_) => "Timeout".to_owned(),
        SdkError::DispatchFailure(_) => "Unreachable".to_owned(),
        SdkError::ResponseError(_) => "ResponseError".to_owned(),
        SdkError::ConstructionFailure(_) => "ConstructionFailure".to_owned(),
        _ => "Unknown".to_owned(),
    }
}

tokio::task_local! {
    /// The span of the AWS call being made, for [`CountAttempts`].
    static CALL: tracing::Span;
}

/// Records on the call's span how many attempts it took (`aws.attempts`: 1 unless the SDK's
/// retry strategy tried again). Both SDKs' clients carry it.
#[derive(Debug)]
pub(crate) struct CountAttempts;

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "grant-broker attempts"
    }

    // Once, when the call is over (recording the field at every attempt would add the attribute
    // to the span once per attempt).
    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(attempts) = cfg.load::<RequestAttempts>() {
            // The call's own span, not the current one: with debug logging the SDK's spans are
            // current here.
            let _ = CALL.try_with(|span| {
                span.record("aws.attempts", attempts.attempts());
            });
        }
        Ok(())
    }
}

/// Runs `call` (`service`'s `operation` in `region`) inside its span, and measures it.
pub(crate) async fn observed<T, E>(
    service: &'static str,
    operation: &'static str,
    region: &str,
    call: impl Future<Output = Result<T, SdkError<E>>>,
) -> Result<T, SdkError<E>>
where
    T: RequestId,
    E: ProvideErrorMetadata,
{
    // Traced as part of something traced (a call, an enforcement pass); else measured only.
    let span = if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "aws",
            otel.name = format!("{service}/{operation}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system.name = "aws-api",
            rpc.service = service,
            rpc.method = operation,
            cloud.region = region,
            aws.request_id = tracing::field::Empty,
            aws.attempts = tracing::field::Empty,
            error.r#type = tracing::field::Empty,
        )
    };
    let started = Instant::now();
    let result = CALL.scope(span.clone(), call.instrument(span.clone())).await;
    let (request_id, error) = match &result {
        Ok(output) => (output.request_id().map(str::to_owned), None),
        Err(error) => (error.request_id().map(str::to_owned), Some(error_code(error))),
    };
    if let Some(request_id) = &request_id {
        span.record("aws.request_id", request_id.as_str());
    }
    if let Some(error) = &error {
        span.record("error.type", error.as_str());
        span.record("otel.status_code", "ERROR");
    }
    metrics().aws_call(service, operation, error.as_deref(), started.elapsed());
    result
}
