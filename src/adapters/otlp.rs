//! `OTEL_METRICS_EXPORTER=otlp`: the metrics pushed to an OpenTelemetry
//! collector over OTLP/HTTP (protobuf), every `OTEL_METRIC_EXPORT_INTERVAL`,
//! beside the Prometheus scrape, which stays on.
//!
//! What is pushed is the exposition `/metrics` serves, translated: counters
//! become monotonic cumulative sums, gauges stay gauges, histograms become
//! explicit-bucket cumulative histograms, each under its catalog name with
//! its labels as attributes. One source for both, so the scrape and the
//! push cannot disagree, and cumulative totals mean a push that fails costs
//! resolution, never counts. The resource names the service and this
//! process (`service.instance.id`), so a collector tells replicas apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{header, Method, Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::outbound::{self, shown};
use crate::error::Error;

/// Where and how the metrics go.
#[derive(Clone, Debug)]
pub struct PushSettings {
    /// The full URL, `…/v1/metrics` included.
    pub endpoint: String,
    /// How long one push may take.
    pub timeout: Duration,
    pub service_name: String,
    /// This process, as `service.instance.id`.
    pub instance_id: String,
    /// When the counters started from zero.
    pub started: SystemTime,
}

/// Pushes expositions to one collector.
pub struct MetricsPush {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: Uri,
    shown: String,
    timeout: Duration,
    resource: Resource,
    started_unix_nanos: u64,
    failing: AtomicBool,
}

impl MetricsPush {
    pub fn new(settings: PushSettings) -> Result<Self, Error> {
        let endpoint: Uri = settings.endpoint.parse().map_err(|e| {
            Error::internal(format!(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is not a URL: {e}"
            ))
        })?;
        let client = outbound::client()
            .map_err(|e| Error::internal(format!("{}: {e}", shown(&endpoint))))?;
        let resource = Resource {
            attributes: vec![
                text("service.name", &settings.service_name),
                text("service.instance.id", &settings.instance_id),
                text("service.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Resource::default()
        };
        Ok(MetricsPush {
            client,
            shown: shown(&endpoint),
            endpoint,
            timeout: settings.timeout,
            resource,
            started_unix_nanos: unix_nanos(settings.started),
            failing: AtomicBool::new(false),
        })
    }

    /// Translates one exposition and sends it. Says once (WARN, naming the
    /// endpoint and the cause) when pushes start failing, and once (INFO)
    /// when they work again; never fails the caller.
    pub async fn push(&self, exposition: &str) {
        let now = unix_nanos(SystemTime::now());
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "collabd".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    metrics: translate(exposition, self.started_unix_nanos, now),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let result = self.send(request.encode_to_vec()).await;
        match &result {
            Err(cause) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.shown,
                error.message = %cause,
                "metrics cannot be pushed; the scrape still serves them, and the next push that \
                 works carries the totals"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.shown, "metrics push works again")
            }
            _ => {}
        }
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", answer.status()))
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

/// A metric family of the exposition, as its `# TYPE` line declares it.
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    /// Counter and gauge points: labels and value.
    points: Vec<(Labels, f64)>,
    /// Histogram points, by their labels without `le`.
    histograms: BTreeMap<Labels, Buckets>,
}

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Buckets {
    /// Upper bound and cumulative count, `+Inf` included.
    cumulative: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// The OTLP metrics of a Prometheus text exposition (the subset collabd
/// writes: `# HELP`, `# TYPE`, samples without timestamps).
pub fn translate(exposition: &str, start: u64, now: u64) -> Vec<Metric> {
    let mut helps: BTreeMap<&str, &str> = BTreeMap::new();
    let mut families: Vec<Family> = Vec::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                helps.insert(name, help);
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                families.push(Family {
                    name,
                    kind: kind.trim(),
                    help: helps.get(name).copied().unwrap_or_default(),
                    points: Vec::new(),
                    histograms: BTreeMap::new(),
                });
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            if let (Some(family), Some(sample)) = (families.last_mut(), sample(line)) {
                family.add(sample);
            }
        }
    }
    families
        .into_iter()
        .filter_map(|family| family.into_metric(start, now))
        .collect()
}

struct Sample<'a> {
    name: &'a str,
    labels: Labels,
    value: f64,
}

/// `name{a="b",c="d"} 1.5` (label values with `\\`, `\"`, `\n` escapes).
fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match (in_value, c) {
                (false, '}') => {
                    end = Some(i + 1);
                    break;
                }
                (false, ',') => {}
                (false, '=') => {}
                (false, '"') => in_value = true,
                (false, c) => key.push(c),
                (true, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (true, '"') => {
                    labels.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                    in_value = false;
                }
                (true, c) => value.push(c),
            }
        }
        rest = &inner[end?..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

impl Family<'_> {
    fn add(&mut self, mut sample: Sample) {
        if self.kind != "histogram" {
            if sample.name == self.name {
                self.points.push((sample.labels, sample.value));
            }
            return;
        }
        let Some(suffix) = sample.name.strip_prefix(self.name) else {
            return;
        };
        let le = sample
            .labels
            .iter()
            .position(|(k, _)| k == "le")
            .map(|i| sample.labels.remove(i).1);
        let buckets = self.histograms.entry(sample.labels).or_default();
        match (suffix, le) {
            ("_bucket", Some(le)) => {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                buckets.cumulative.push((bound, sample.value as u64));
            }
            ("_sum", None) => buckets.sum = sample.value,
            ("_count", None) => buckets.count = sample.value as u64,
            _ => {}
        }
    }

    fn into_metric(self, start: u64, now: u64) -> Option<Metric> {
        let number = |(labels, value): (Labels, f64)| NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        };
        let data = match self.kind {
            "counter" => metric::Data::Sum(Sum {
                data_points: self.points.into_iter().map(number).collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            "gauge" => metric::Data::Gauge(Gauge {
                data_points: self.points.into_iter().map(number).collect(),
            }),
            "histogram" => metric::Data::Histogram(Histogram {
                data_points: self
                    .histograms
                    .into_iter()
                    .map(|(labels, buckets)| buckets.into_point(labels, start, now))
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            _ => return None,
        };
        Some(Metric {
            name: self.name.to_owned(),
            description: self.help.to_owned(),
            unit: unit(self.name).to_owned(),
            data: Some(data),
            ..Metric::default()
        })
    }
}

impl Buckets {
    /// Prometheus buckets count everything up to their bound; OTLP's count
    /// what falls between a bound and the one before.
    fn into_point(mut self, labels: Labels, start: u64, now: u64) -> HistogramDataPoint {
        self.cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut explicit_bounds = Vec::new();
        let mut bucket_counts = Vec::new();
        let mut below = 0;
        for (bound, cumulative) in &self.cumulative {
            if bound.is_finite() {
                explicit_bounds.push(*bound);
                bucket_counts.push(cumulative.saturating_sub(below));
                below = *cumulative;
            }
        }
        bucket_counts.push(self.count.saturating_sub(below));
        HistogramDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: self.count,
            sum: Some(self.sum),
            bucket_counts,
            explicit_bounds,
            ..HistogramDataPoint::default()
        }
    }
}

fn attributes(labels: Labels) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| text(k, v)).collect()
}

/// The UCUM unit the name's suffix names, as OTLP carries it.
fn unit(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP http_requests_total HTTP requests answered.
# TYPE http_requests_total counter
http_requests_total{method=\"GET\",route=\"/a \\\"b\\\"\",status=\"200\"} 3
# TYPE ws_active_connections gauge
ws_active_connections 2
# HELP http_request_duration_seconds Time to answer.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route=\"/x\",le=\"0.1\"} 1
http_request_duration_seconds_bucket{route=\"/x\",le=\"1\"} 3
http_request_duration_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4
http_request_duration_seconds_sum{route=\"/x\"} 7.5
http_request_duration_seconds_count{route=\"/x\"} 4
";

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn counters_gauges_and_histograms_keep_their_names_labels_and_values() {
        let metrics = translate(EXPOSITION, 10, 20);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "http_requests_total",
                "ws_active_connections",
                "http_request_duration_seconds"
            ]
        );
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("a counter is a sum: {:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, 2);
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(attribute(&point.attributes, "route"), Some("/a \"b\""));
        assert_eq!(attribute(&point.attributes, "status"), Some("200"));
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (10, 20));
        assert_eq!(metrics[0].description, "HTTP requests answered.");
        let Some(metric::Data::Gauge(gauge)) = &metrics[1].data else {
            panic!("{:?}", metrics[1]);
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(2.0))
        );
        let Some(metric::Data::Histogram(histogram)) = &metrics[2].data else {
            panic!("{:?}", metrics[2]);
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, [0.1, 1.0]);
        assert_eq!(point.bucket_counts, [1, 2, 1]);
        assert_eq!((point.count, point.sum), (4, Some(7.5)));
        assert_eq!(attribute(&point.attributes, "route"), Some("/x"));
        assert_eq!(attribute(&point.attributes, "le"), None);
        assert_eq!(metrics[2].unit, "s");
    }

    #[test]
    fn the_whole_catalog_translates() {
        let metrics = crate::telemetry::Metrics::new();
        metrics.http_request("GET", "/healthz", 200, 0.003);
        metrics.process();
        let exposition = metrics.render();
        let translated = translate(&exposition, 0, 1);
        let families = exposition
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .count();
        assert_eq!(translated.len(), families, "{exposition}");
        assert!(translated.iter().all(|m| m.data.is_some()));
    }
}
