//! JSON log lines that keep their correlation at any span depth: the
//! fields of every span the event is in, from the outermost (the request's
//! or the WebSocket session's: `request_id`, `trace_id`, `span_id`,
//! `user_id`, `draft_id`, `connection_id`) to the innermost, merged under
//! `span` (an inner span's field wins over an outer one of the same name),
//! with `name` the innermost span's. tracing-subscriber's own JSON format
//! shows the current span only, so a line logged in the store or the fanout
//! lost the request it belonged to.
//!
//! ```json
//! {"timestamp":"…","level":"INFO","message":"event committed","seq":7,
//!  "target":"collabd::collab::service",
//!  "span":{"request_id":"…","trace_id":"…","span_id":"…","user_id":"alice","draft_id":"…","name":"append"}}
//! ```

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format of `LOG_FORMAT=json`; pair it with [`JsonFields`] so
/// each span's fields are stored as JSON.
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        event.record(&mut Fields(&mut line));
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Map::new();
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() {
                    if let Ok(Value::Object(fields)) = serde_json::from_str(fields) {
                        spans.extend(fields);
                    }
                }
                spans.insert("name".into(), Value::String(span.name().to_owned()));
            }
            line.insert("span".into(), Value::Object(spans));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields, at the top level of the line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_deep_in_spans_carries_every_enclosing_span_field() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("http", request_id = "r-1", user_id = "alice");
            let _request = request.enter();
            let service = tracing::info_span!("append", draft_id = "d-1");
            let _service = service.enter();
            let store = tracing::info_span!("mutate", user_id = "inner");
            let _store = store.enter();
            tracing::info!(seq = 7u64, committed = true, "event committed");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "event committed");
        assert_eq!(line["seq"], 7);
        assert_eq!(line["committed"], true);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"]["request_id"], "r-1");
        assert_eq!(line["span"]["draft_id"], "d-1");
        // The innermost wins a clash, and names the line's span.
        assert_eq!(line["span"]["user_id"], "inner");
        assert_eq!(line["span"]["name"], "mutate");
    }
}
