//! The log line formats: fields first and the message last, as text or one JSON object.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// An event's or span's fields, in recording order, with the message apart.
#[derive(Default)]
struct Fields {
    /// (name, rendered value); text values are already quoted for their format.
    pairs: Vec<(&'static str, String)>,
    message: Option<String>,
    /// `log.target` of an event forwarded from the `log` crate.
    log_target: Option<String>,
    json: bool,
}

impl Fields {
    fn new(json: bool) -> Fields {
        Fields {
            json,
            ..Fields::default()
        }
    }

    fn push(&mut self, field: &Field, value: String) {
        self.pairs.push((field.name(), value));
    }

    fn string(&self, s: &str) -> String {
        if self.json {
            serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
        } else {
            format!("{s:?}")
        }
    }

    /// True when the field is handled apart (message, `log.*` metadata).
    fn special(&mut self, field: &Field, value: &dyn fmt::Display) -> bool {
        match field.name() {
            "message" => {
                self.message = Some(value.to_string());
                true
            }
            "log.target" => {
                self.log_target = Some(value.to_string());
                true
            }
            n => n.starts_with("log."),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if self.special(field, &text) {
            return;
        }
        // Text: `%x` and `?x` print bare, as the default formatter does.
        let rendered = if self.json { self.string(&text) } else { text };
        self.push(field, rendered);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.special(field, &value) {
            return;
        }
        let rendered = self.string(value);
        self.push(field, rendered);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.special(field, &value) {
            self.push(field, value.to_string());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.special(field, &value) {
            self.push(field, value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.special(field, &value) {
            self.push(field, value.to_string());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.special(field, &value) {
            return;
        }
        let rendered = if value.is_finite() || !self.json {
            value.to_string()
        } else {
            self.string(&value.to_string())
        };
        self.push(field, rendered);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, outermost first: "cannot connect: connection refused".
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(chain, ": {s}");
            source = s.source();
        }
        self.record_str(field, &chain);
    }
}

/// Text fields: `key=value …` then the message.
pub(crate) struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut f = Fields::new(false);
        fields.record(&mut f);
        let mut sep = "";
        for (k, v) in &f.pairs {
            write!(writer, "{sep}{k}={v}")?;
            sep = " ";
        }
        if let Some(m) = &f.message {
            write!(writer, "{sep}{m}")?;
        }
        Ok(())
    }
}

/// JSON span fields, stored as `"k":v,"k2":v2` (no braces) so recorded values can be
/// appended; [`JsonLine`] wraps them.
pub(crate) struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut f = Fields::new(true);
        fields.record(&mut f);
        write_json_pairs(&mut writer, &f.pairs)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut f = Fields::new(true);
        fields.record(&mut f);
        if f.pairs.is_empty() {
            return Ok(());
        }
        if !current.fields.is_empty() {
            current.fields.push(',');
        }
        write_json_pairs(&mut current.as_writer(), &f.pairs)
    }
}

fn write_json_pairs(w: &mut Writer<'_>, pairs: &[(&'static str, String)]) -> fmt::Result {
    let mut sep = "";
    for (k, v) in pairs {
        let key = serde_json::to_string(k).map_err(|_| fmt::Error)?;
        write!(w, "{sep}{key}:{v}")?;
        sep = ",";
    }
    Ok(())
}

/// One JSON object per event: `timestamp`, `level`, `target`, `spans` (root first, each with
/// its `name` and fields), the event's fields, then `message`.
pub(crate) struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::new(true);
        event.record(&mut f);
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        let target = f.log_target.as_deref().unwrap_or(meta.target());
        let json = |s: &str| serde_json::to_string(s).map_err(|_| fmt::Error);
        write!(
            writer,
            "{{\"timestamp\":{},\"level\":\"{}\",\"target\":{}",
            json(&ts)?,
            meta.level(),
            json(target)?
        )?;
        if let Some(scope) = ctx.event_scope() {
            writer.write_str(",\"spans\":[")?;
            let mut sep = "";
            for span in scope.from_root() {
                write!(writer, "{sep}{{\"name\":{}", json(span.name())?)?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.fields.is_empty() {
                        write!(writer, ",{}", fields.fields)?;
                    }
                }
                writer.write_char('}')?;
                sep = ",";
            }
            writer.write_char(']')?;
        }
        if !f.pairs.is_empty() {
            writer.write_char(',')?;
            write_json_pairs(&mut writer, &f.pairs)?;
        }
        if let Some(m) = &f.message {
            write!(writer, ",\"message\":{}", json(m)?)?;
        }
        writeln!(writer, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn emit() {
        let span = tracing::info_span!("ws.connection", conn.id = 7u64, peer.addr = "1.2.3.4:5");
        let _g = span.enter();
        let e = Outer(std::io::Error::other("inner"));
        tracing::warn!(
            reason = "gone",
            n = 3,
            error = &e as &dyn std::error::Error,
            "closed \"x\""
        );
    }

    #[test]
    fn json_lines_put_fields_first_and_the_message_last() {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields)
                .event_format(JsonLine)
                .with_writer(buf.clone()),
        );
        tracing::subscriber::with_default(sub, emit);
        let line = buf.text();
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["reason"], "gone");
        assert_eq!(v["n"], 3);
        assert_eq!(v["error"], "outer: inner");
        assert_eq!(v["message"], "closed \"x\"");
        assert_eq!(v["spans"][0]["name"], "ws.connection");
        assert_eq!(v["spans"][0]["conn.id"], 7);
        assert!(
            line.trim_end().ends_with(r#""message":"closed \"x\""}"#),
            "{line}"
        );
        let reason = line.find("\"reason\"").unwrap_or(usize::MAX);
        assert!(reason < line.find("\"message\"").unwrap_or(0), "{line}");
    }

    #[test]
    fn text_lines_put_fields_first_and_the_message_last() {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(TextFields)
                .with_writer(buf.clone()),
        );
        tracing::subscriber::with_default(sub, emit);
        let line = buf.text();
        assert!(
            line.trim_end()
                .ends_with(r#"reason="gone" n=3 error="outer: inner" closed "x""#),
            "{line}"
        );
        assert!(
            line.contains("ws.connection{conn.id=7 peer.addr=\"1.2.3.4:5\"}"),
            "{line}"
        );
    }
}
