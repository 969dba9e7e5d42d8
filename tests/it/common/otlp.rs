//! An OpenTelemetry collector as far as the broker can tell: the OTLP/gRPC trace and metrics
//! services, keeping every export for the test to read.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    metrics::v1::Metric,
    trace::v1::Span,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Clone, Default)]
pub struct Collector {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received.lock().unwrap().traces.push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.received.lock().unwrap().metrics.push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Listens on a free loopback port; returns the collector and its endpoint URL.
    pub async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let collector = Self::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (collector, format!("http://{address}"))
    }

    /// Every span received, with its resource's service name.
    pub fn spans(&self) -> Vec<(String, Span)> {
        let received = self.received.lock().unwrap();
        let mut spans = Vec::new();
        for export in &received.traces {
            for resource in &export.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == "service.name"))
                    .map(|kv| value_text(kv.value.as_ref()))
                    .unwrap_or_default();
                for scope in &resource.scope_spans {
                    spans.extend(scope.spans.iter().map(|span| (service.clone(), span.clone())));
                }
            }
        }
        spans
    }

    /// Every metric received (each export's data points, in order).
    pub fn metrics(&self) -> Vec<Metric> {
        let received = self.received.lock().unwrap();
        received
            .metrics
            .iter()
            .flat_map(|export| &export.resource_metrics)
            .flat_map(|resource| &resource.scope_metrics)
            .flat_map(|scope| scope.metrics.clone())
            .collect()
    }

    /// Everything received, as the bytes that came over the wire (to search for secrets).
    pub fn wire_bytes(&self) -> Vec<u8> {
        let received = self.received.lock().unwrap();
        let mut bytes = Vec::new();
        for export in &received.traces {
            bytes.extend(export.encode_to_vec());
        }
        for export in &received.metrics {
            bytes.extend(export.encode_to_vec());
        }
        bytes
    }
}

/// An attribute value as text (strings as they are, the rest as Debug prints them).
pub fn value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A span's attribute by key, as text.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| value_text(kv.value.as_ref()))
}
