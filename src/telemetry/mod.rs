//! Telemetry: the log lines (JSON in production, readable text on a terminal), and traces and
//! metrics exported over OTLP/gRPC, configured the OpenTelemetry way (the standard `OTEL_*`
//! environment variables) and off unless an OTLP endpoint is set. The metric instruments the
//! rest of the service records into are in [`metrics`].
//!
//! Exports never hold up a call: spans and metrics are handed to the SDK's batch processor and
//! periodic reader, each on a thread of its own with a bounded queue that drops when the
//! collector cannot keep up (or is down).
//!
//! INVARIANT (secrets are never at rest): no span attribute or log field is made from a secret
//! access key, session token, bearer or identity token, MFA code or integrity key. Spans name
//! grants, callers, targets and access key ids; the telemetry test searches everything the
//! collector received for the secrets the test handed out.

pub mod metrics;

use std::{env, io::IsTerminal as _};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator, trace::SdkTracerProvider,
};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::FilterExt as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, with the fields of the spans it happened in (request id, trace
    /// id, method, caller): what log pipelines parse.
    Json,
    /// Readable lines, for a person at a terminal.
    Text,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

/// The exporters set up at start; [`Telemetry::shutdown`] flushes what they hold.
#[must_use = "shut telemetry down at exit, or the last spans and metrics are lost"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

/// What the `OTEL_*` variables ask for, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    traces: bool,
    metrics: bool,
}

fn var(name: &str) -> Option<String> {
    env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Which signals to export, from the environment, or what is wrong with it. A signal is exported
/// when an OTLP endpoint is set for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own) and its
/// exporter (`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`) is not `none`; `OTEL_SDK_DISABLED=true`
/// turns both off. Only OTLP over gRPC is built in: another protocol is refused rather than
/// silently not exported.
fn wanted(var: &dyn Fn(&str) -> Option<String>) -> Result<Wanted, String> {
    if var("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(Wanted {
            traces: false,
            metrics: false,
        });
    }
    let general_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let signal = |exporter: &str, endpoint: &str, protocol: &str| -> Result<bool, String> {
        match var(exporter).as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(false),
            Some(other) => {
                return Err(format!(
                    "{exporter}={other}: this build exports over OTLP only (otlp, or none to switch it off)"
                ));
            }
        }
        if !(general_endpoint || var(endpoint).is_some()) {
            return Ok(false);
        }
        let compression = format!("{}_COMPRESSION", endpoint.trim_end_matches("_ENDPOINT"));
        for name in [compression.as_str(), "OTEL_EXPORTER_OTLP_COMPRESSION"] {
            match var(name).as_deref() {
                None | Some("none") => {}
                Some(other) => {
                    return Err(format!(
                        "{name}={other}: this build exports uncompressed only (none, or leave it unset)"
                    ));
                }
            }
        }
        for name in [protocol, "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            match var(name).as_deref() {
                None | Some("grpc") => {}
                Some(other) => {
                    return Err(format!(
                        "{name}={other}: this build exports OTLP over gRPC only (grpc; a collector listens for it on 4317)"
                    ));
                }
            }
        }
        Ok(true)
    };
    Ok(Wanted {
        traces: signal(
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        )?,
        metrics: signal(
            "OTEL_METRICS_EXPORTER",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        )?,
    })
}

/// A signal's collector: its own endpoint, else the general one (the SDK's precedence).
fn endpoint(signal_endpoint: &str, var: impl Fn(&str) -> Option<String>) -> Option<String> {
    var(signal_endpoint).or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// For an `https://` collector: the system's roots, or the CA of `OTEL_EXPORTER_OTLP_CERTIFICATE`
/// (PEM) instead, and the client certificate and key of `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`
/// and `OTEL_EXPORTER_OTLP_CLIENT_KEY` where the collector wants one; `None` for `http://`.
fn collector_tls(
    signal_endpoint: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    if !endpoint(signal_endpoint, &var).is_some_and(|endpoint| endpoint.to_ascii_lowercase().starts_with("https://")) {
        return Ok(None);
    }
    let read = |name: &str| -> Result<Option<Vec<u8>>, String> {
        var(name)
            .map(|path| std::fs::read(&path).map_err(|error| format!("{name}: cannot read {path}: {error}")))
            .transpose()
    };
    let mut tls = tonic::transport::ClientTlsConfig::new();
    tls = match read("OTEL_EXPORTER_OTLP_CERTIFICATE")? {
        Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        None => tls.with_native_roots(),
    };
    match (
        read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
        read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?,
    ) {
        (Some(certificate), Some(key)) => tls = tls.identity(tonic::transport::Identity::from_pem(certificate, key)),
        (None, None) => {}
        _ => {
            return Err(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together: set both or neither"
                    .to_owned(),
            );
        }
    }
    Ok(Some(tls))
}

/// The resource every span and metric carries: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
/// (the SDK reads them), else service.name `grant-broker`, and the version.
fn resource(var: &dyn Fn(&str) -> Option<String>) -> Resource {
    let builder = Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| attributes.contains("service.name="))
    {
        builder.build()
    } else {
        builder.with_service_name("grant-broker").build()
    }
}

/// Sets up logging and, when the environment asks for them, trace and metric export. Must run
/// inside the tokio runtime (the exporters' gRPC channels are built on it). Call once, first.
/// What is logged without `RUST_LOG`: info, but only errors from the Redis client library.
const DEFAULT_LOG_FILTER: &str = "info,redis=error";

pub fn init(format: LogFormat) -> Result<Telemetry, String> {
    init_with(format, &var)
}

/// [`init`], with the `OTEL_*` settings read through `var` (the benchmarks point it at a
/// collector of their own; the SDK still reads the exporters' tuning from the process).
pub fn init_with(format: LogFormat, var: &dyn Fn(&str) -> Option<String>) -> Result<Telemetry, String> {
    let wanted = wanted(var)?;
    // The SDK does not read OTEL_PROPAGATORS: the broker always speaks W3C trace context, the
    // propagator every OpenTelemetry SDK and collector understands.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource(var);
    let traces = if wanted.traces {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", var) {
            exporter = exporter.with_endpoint(endpoint);
        }
        if let Some(tls) = collector_tls("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", var)? {
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter
            .build()
            .map_err(|error| format!("cannot set up trace export: {error}"))?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build(),
        )
    } else {
        None
    };
    let metrics = if wanted.metrics {
        let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
        if let Some(endpoint) = endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", var) {
            exporter = exporter.with_endpoint(endpoint);
        }
        if let Some(tls) = collector_tls("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", var)? {
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter
            .build()
            .map_err(|error| format!("cannot set up metric export: {error}"))?;
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    // The Redis client's own warnings stay out by default: while a cluster node is down it warns
    // of every reconnect attempt (about 500 lines a second), and the broker logs the failures
    // that matter, once per call, itself.
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // The log lines carry the spans that say which call or which background step they belong
    // to; the per-step spans made for traces (each Redis step, AWS call, the rules' decision)
    // would only lengthen every line, and formatting their fields for the logs costs as much as
    // the step's own work.
    let logged_spans = || {
        tracing_subscriber::filter::filter_fn(|meta| {
            !meta.is_span() || !matches!(meta.name(), "redis" | "aws" | "rules")
        })
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json()
            .with_current_span(false)
            .with_span_list(true)
            .with_filter(filter().and(logged_spans()))
            .boxed()
    } else {
        logs.with_filter(filter().and(logged_spans())).boxed()
    };
    // Only the broker's own spans, at info, whatever RUST_LOG says: they are the ones built to
    // carry nothing secret (log events would otherwise become span events, with the messages
    // AWS and Redis return; and the SDKs' debug spans would follow RUST_LOG=debug).
    let otel = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("grant-broker"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with("grant_broker") && *meta.level() <= tracing::Level::INFO
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|error| format!("cannot set up logging: {error}"))?;
    if traces.is_some() || metrics.is_some() {
        tracing::info!(
            traces = traces.is_some(),
            metrics = metrics.is_some(),
            "exporting telemetry over OTLP"
        );
    }
    Ok(Telemetry { traces, metrics })
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporters (each bounded by its export
    /// timeout). Blocks: call it where blocking is allowed.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces
            && let Err(error) = traces.shutdown()
        {
            tracing::warn!(%error, "spans still buffered at exit may be lost");
        }
        if let Some(metrics) = self.metrics
            && let Err(error) = metrics.shutdown()
        {
            tracing::warn!(%error, "metrics still buffered at exit may be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Wanted, String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        wanted(&|name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        })
    }

    #[test]
    fn nothing_is_exported_unless_an_endpoint_is_set() {
        assert_eq!(
            from(&[]),
            Ok(Wanted {
                traces: false,
                metrics: false
            })
        );
        assert_eq!(
            from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]),
            Ok(Wanted {
                traces: true,
                metrics: true
            })
        );
        assert_eq!(
            from(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4317")]),
            Ok(Wanted {
                traces: true,
                metrics: false
            })
        );
    }

    #[test]
    fn each_signal_can_be_switched_off_and_the_sdk_as_a_whole() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert_eq!(
            from(&[endpoint, ("OTEL_METRICS_EXPORTER", "none")]),
            Ok(Wanted {
                traces: true,
                metrics: false
            })
        );
        assert_eq!(
            from(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]),
            Ok(Wanted {
                traces: false,
                metrics: false
            })
        );
    }

    #[test]
    fn an_https_collector_gets_tls_and_a_client_certificate_needs_its_key() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        assert!(
            collector_tls(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])
            )
            .unwrap()
            .is_none()
        );
        assert!(
            collector_tls(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "HTTPS://c:4317")])
            )
            .unwrap()
            .is_some()
        );
        // The signal's own endpoint decides for that signal.
        assert!(
            collector_tls(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://local:4317")
                ])
            )
            .unwrap()
            .is_none()
        );
        let half = collector_tls(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/dev/null"),
            ]),
        )
        .unwrap_err();
        assert!(half.contains("go together"), "{half}");
        let missing = collector_tls(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ]),
        )
        .unwrap_err();
        assert!(
            missing.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn what_this_build_cannot_export_is_refused_by_name() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let refused = from(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap_err();
        assert!(
            refused.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: this build exports OTLP over gRPC only"),
            "{refused}"
        );
        let refused = from(&[endpoint, ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip")]).unwrap_err();
        assert!(
            refused.starts_with("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION=gzip: this build exports uncompressed only"),
            "{refused}"
        );
        let refused = from(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(refused.starts_with("OTEL_TRACES_EXPORTER=zipkin: "), "{refused}");
        // A protocol set for a signal that is not exported is nobody's concern.
        assert!(from(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).is_ok());
    }
}
