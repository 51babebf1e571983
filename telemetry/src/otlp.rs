//! The OTLP/HTTP trace exporter: endpoint, HTTP client (the SDK's for `http://`, hyper over
//! rustls for `https://`) and the tracer provider around it.

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use rustls::RootCertStore;
use std::sync::Arc;
use std::time::Duration;

/// Where spans go (both binaries' `OTEL_EXPORTER_OTLP_*` settings), validated.
#[derive(Debug, Clone)]
pub struct OtlpExport {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, trimmed: `http://` or `https://`.
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`'s CAs, which an `https://` collector's certificate must
    /// lead to; `None`: the system store's.
    pub roots: Option<Arc<RootCertStore>>,
}

/// Why the trace exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExportError {
    #[error("no trust anchors for the https:// collector")]
    Trust(#[source] ryze_core::trust::TrustError),
    #[error("invalid OTEL_EXPORTER_OTLP_ENDPOINT")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// `<base>/v1/traces`, unless the URL already names that path.
pub(super) fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The https client's per-request timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s, as the SDK reads them for its own
/// client (it does not pass them to a client it is given).
fn export_timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok()?.trim().parse().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// For `https://` endpoints: the SDK's hyper client over a rustls (ring) connector that
/// verifies the collector against `certificate`, else the system CAs. HTTP/1.1, as the SDK's
/// default client for `http://` (which is kept as it was).
fn https_client(
    roots: Option<Arc<RootCertStore>>,
) -> Result<impl opentelemetry_http::HttpClient, ryze_core::trust::TrustError> {
    use ryze_core::trust::{self, Roots};
    let roots = match roots {
        Some(roots) => roots,
        None => Roots::System.load()?,
    };
    let verifier = trust::full_verifier(roots)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(trust::client_config(verifier))
        .https_only()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector,
        export_timeout(),
        None,
    ))
}

pub(super) fn build_provider(
    export: &OtlpExport,
    service_name: &'static str,
) -> Result<SdkTracerProvider, ExportError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(&export.endpoint));
    if export.endpoint.starts_with("https://") {
        let client = https_client(export.roots.clone()).map_err(ExportError::Trust)?;
        builder = builder.with_http_client(client);
    }
    let exporter = builder.build().map_err(ExportError::Build)?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service_name);
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_gets_the_signal_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
