//! The frame every client receives, built and serialised exactly once per event (SPEC §6).
//!
//! `data` is carried as raw JSON so its keys, key order, escapes and number spellings leave
//! exactly as the event source wrote them (pass-through, §6.2); only the whitespace between
//! tokens is dropped, so every frame is compact (D22) whichever process builds it. The one other
//! change is D10: with `mediaBase64=false`, `data.message.media.base64` is cut out of
//! `message.exchange` frames.

use crate::event::EventType;
use crate::wire;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// The `instanceData` object (keys in the documented order).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InstanceData<'a> {
    /// `PUBLIC_BASE_URL` without a trailing `/` (D11).
    #[serde(rename = "baseUrl")]
    pub base_url: &'a str,
    /// The stored instance name.
    pub instance: &'a str,
    /// The instance's own decrypted TokenInstance (D3, D15).
    pub token: &'a str,
}

#[derive(Serialize)]
struct Envelope<'a> {
    event: &'a str,
    data: &'a RawValue,
    #[serde(rename = "instanceData")]
    instance_data: InstanceData<'a>,
}

/// A frame could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Serialisation failed (only possible for invalid raw JSON, which ingest rejects earlier).
    #[error("failed to serialise the frame")]
    Serialize(#[from] serde_json::Error),
}

/// Builds the Redis message for one event: wire header, then the frame's JSON text.
///
/// `media_base64` is the instance's setting; when false, D10's stripping applies to
/// `message.exchange` frames. This is the single serialisation of the event.
pub fn encode_message(
    event: EventType,
    data: &RawValue,
    instance_data: InstanceData<'_>,
    media_base64: bool,
    published_micros: u64,
) -> Result<Vec<u8>, EnvelopeError> {
    let compacted = compact(data.get()).map(RawValue::from_string).transpose()?;
    let data = compacted.as_deref().unwrap_or(data);
    let stripped;
    let data = if !media_base64 && event == EventType::MessageExchange {
        stripped = strip_media_base64(data)?;
        stripped.as_deref().unwrap_or(data)
    } else {
        data
    };
    let mut buf = Vec::with_capacity(data.get().len() + 192);
    wire::write_header(&mut buf, published_micros);
    serde_json::to_writer(
        &mut buf,
        &Envelope {
            event: event.as_str(),
            data,
            instance_data,
        },
    )?;
    Ok(buf)
}

/// `text` without the whitespace between JSON tokens (D22), or `None` when it has none (the
/// common case costs one scan and no allocation). Bytes inside strings, escapes included, are
/// never touched, so keys, their order and every value's spelling are unchanged.
pub fn compact(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    // Allocated at the first whitespace outside a string: compact input costs no copy.
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        let drop = if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            false
        } else {
            in_string = b == b'"';
            matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        };
        match (&mut out, drop) {
            (Some(out), false) => out.push(b),
            (None, true) => out = Some(bytes[..i].to_vec()),
            _ => {}
        }
    }
    // Only ASCII whitespace outside strings was removed, so the text is still UTF-8.
    out.and_then(|o| String::from_utf8(o).ok())
}

/// Removes `message.media.base64` from `data` by cutting its bytes out of the original text:
/// every other byte (keys, their escapes, spacing, order, number spellings) stays as the
/// source wrote it. Returns `None` when there is nothing to remove (the common case costs a
/// scan).
pub fn strip_media_base64(data: &RawValue) -> Result<Option<Box<RawValue>>, serde_json::Error> {
    let text = data.get();
    // Keys may be written with escapes; only then can a literal search miss one.
    if !text.contains("base64") && !text.contains("\\u") {
        return Ok(None);
    }
    let Some(media) = object(text)
        .and_then(|top| top.get("message"))
        .and_then(|m| object(m.get()))
        .and_then(|m| m.get("media"))
    else {
        return Ok(None);
    };
    let Some(members) = object(media.get()) else {
        return Ok(None);
    };
    // Byte offsets within `text`: every raw value borrows from it.
    let offset = |v: &RawValue| v.get().as_ptr() as usize - text.as_ptr() as usize;
    let media_start = offset(media);
    let mut cuts = Vec::new();
    let mut last_kept: Option<&RawValue> = None;
    for (key, value) in &members.0 {
        if key != "base64" {
            last_kept = Some(value);
            continue;
        }
        let value_end = offset(value) + value.get().len();
        let cut = match last_kept {
            // `, "base64": ...` after the previous kept member's value.
            Some(prev) => (offset(prev) + prev.get().len(), value_end),
            // No kept member before it: from after `{` through the comma that follows, if any.
            None => {
                let rest = &text[value_end..];
                let after_ws = value_end + (rest.len() - rest.trim_start().len());
                let end = if text[after_ws..].starts_with(',') {
                    after_ws + 1
                } else {
                    value_end
                };
                (media_start + 1, end)
            }
        };
        cuts.push(cut);
    }
    if cuts.is_empty() {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (from, to) in cuts {
        // A first-member cut may overlap the next member's own cut start; never go back.
        let from = from.max(at);
        out.push_str(&text[at..from]);
        at = to.max(from);
    }
    out.push_str(&text[at..]);
    RawValue::from_string(out).map(Some)
}

/// Parses an object's members without re-parsing any value; `None` if `text` is no object.
fn object(text: &str) -> Option<RawMap<'_>> {
    serde_json::from_str::<RawMap<'_>>(text).ok()
}

/// A JSON object as an ordered list of (key, raw value) pairs: no value is re-parsed.
struct RawMap<'a>(Vec<(String, &'a RawValue)>);

impl<'a> RawMap<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        // The last duplicate wins, as in serde_json's own maps.
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMap<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawMap<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut access: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(8));
                while let Some((k, v)) = access.next_entry::<String, &'de RawValue>()? {
                    entries.push((k, v));
                }
                Ok(RawMap(entries))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The frame as a resumable (`since`) connection receives it: `"offset"` spliced in as the
/// last top-level key (SPEC §5.7), every other byte unchanged. `frame` is one of our own
/// envelopes, so it ends with the `}` closing the top-level object.
pub fn with_offset(frame: &str, offset: crate::wire::Offset) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    let mut out = String::with_capacity(frame.len() + 40);
    out.push_str(body);
    out.push_str(",\"offset\":\"");
    out.push_str(&offset.to_string());
    out.push_str("\"}");
    out
}

/// The raw `instanceData` object of one of our frames (the last top-level key, whose values
/// are JSON strings, so the last `,"instanceData":` is the envelope's own).
pub fn instance_data_of(frame: &str) -> Option<&str> {
    const KEY: &str = ",\"instanceData\":";
    let at = frame.rfind(KEY)? + KEY.len();
    let end = frame.len().checked_sub(1)?;
    (at < end && frame.ends_with('}')).then(|| &frame[at..end])
}

/// The `stream.gap` frame (SPEC §5.7): `since` is the offset the client gave, echoed as a
/// JSON string; `instance_data` the raw `instanceData` object of one of the instance's frames.
pub fn gap_frame(since: &str, instance_data: &str) -> String {
    format!(
        r#"{{"event":"stream.gap","data":{{"since":{}}},"instanceData":{instance_data}}}"#,
        serde_json::Value::String(since.to_owned())
    )
}

/// The product's error body, `{"success":false,"error":{"message":...}}`, compact, keys in
/// the documented order (SPEC §2.1). Both binaries answer errors with exactly this.
pub fn error_json(message: &str) -> String {
    #[derive(Serialize)]
    struct Message<'a> {
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        success: bool,
        error: Message<'a>,
    }
    // Serialising two string fields cannot fail.
    serde_json::to_string(&Body {
        success: false,
        error: Message { message },
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn frame(bytes: &[u8]) -> &str {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split_once('\n').unwrap().1
    }

    const ID: InstanceData<'static> = InstanceData {
        base_url: "https://api.example.com",
        instance: "sales",
        token: "tok",
    };

    #[test]
    fn envelope_keeps_data_bytes_and_documented_key_order() {
        let data = raw(r#"{"z":1.50,"a":{"b":[1,2]},"message":{"media":{"base64":"QQ=="}}}"#);
        let out = encode_message(EventType::MessageStatus, &data, ID, false, 7).unwrap();
        assert!(out.starts_with(b"1 7\n"));
        assert_eq!(
            frame(&out),
            r#"{"event":"message.status","data":{"z":1.50,"a":{"b":[1,2]},"message":{"media":{"base64":"QQ=="}}},"instanceData":{"baseUrl":"https://api.example.com","instance":"sales","token":"tok"}}"#
        );
    }

    #[test]
    fn frames_are_compact_whatever_the_source_spacing() {
        let spaced =
            raw("{ \"id\" : \"x\",\n\t\"n\": 1.50e3 , \"s\":\"a b\\\" \\\\\" ,\"e\":[ ] }");
        let out = encode_message(EventType::CallUpdate, &spaced, ID, false, 1).unwrap();
        assert!(frame(&out).starts_with(
            r#"{"event":"call.update","data":{"id":"x","n":1.50e3,"s":"a b\" \\","e":[]},"#
        ));
        assert_eq!(
            compact(r#"{"a":[1,"b c"]}"#),
            None,
            "compact input is borrowed as is"
        );
        assert_eq!(compact(" 1 ").as_deref(), Some("1"));
    }

    #[test]
    fn stripping_works_on_spaced_sources_and_leaves_them_compact() {
        let data = raw(r#"{ "message" : { "media" : { "type" : "image" , "base64" : "QQ==" } } }"#);
        let out = encode_message(EventType::MessageExchange, &data, ID, false, 1).unwrap();
        assert!(frame(&out).starts_with(
            r#"{"event":"message.exchange","data":{"message":{"media":{"type":"image"}}},"#
        ));
    }

    #[test]
    fn media_base64_false_strips_only_the_base64_key() {
        let data = raw(
            r#"{"id":"w1","message":{"type":"image","media":{"type":"image","base64":"iVBORw0KGgo","mimetype":"image/jpeg"},"n":1.0}}"#,
        );
        let out = encode_message(EventType::MessageExchange, &data, ID, false, 1).unwrap();
        assert!(frame(&out).starts_with(
            r#"{"event":"message.exchange","data":{"id":"w1","message":{"type":"image","media":{"type":"image","mimetype":"image/jpeg"},"n":1.0}}"#
        ));
        let kept = encode_message(EventType::MessageExchange, &data, ID, true, 1).unwrap();
        assert!(frame(&kept).contains(r#""base64":"iVBORw0KGgo""#));
    }

    #[test]
    fn offsets_go_last_and_gaps_reuse_the_instance_data() {
        let data = raw(r#"{"a":"},\"instanceData\":{}"}"#);
        let out = encode_message(EventType::CallUpdate, &data, ID, false, 1).unwrap();
        let frame = frame(&out);
        let offset = crate::wire::Offset { ms: 17, seq: 2 };
        assert_eq!(
            with_offset(frame, offset),
            format!("{},\"offset\":\"17-2\"}}", &frame[..frame.len() - 1])
        );
        let idata = instance_data_of(frame).unwrap();
        assert_eq!(
            idata,
            r#"{"baseUrl":"https://api.example.com","instance":"sales","token":"tok"}"#
        );
        assert_eq!(
            gap_frame("5-0", idata),
            format!(r#"{{"event":"stream.gap","data":{{"since":"5-0"}},"instanceData":{idata}}}"#)
        );
        assert_eq!(instance_data_of("{}"), None);
    }

    #[test]
    fn error_body_has_the_documented_shape() {
        assert_eq!(
            error_json("Invalid \"x\""),
            r#"{"success":false,"error":{"message":"Invalid \"x\""}}"#
        );
    }

    #[test]
    fn strip_keeps_every_other_byte_including_escapes_and_spacing() {
        let cases = [
            (
                r#"{"k\u00e9y":"a\/b", "message" : { "media": {"type":"image", "base64" : "QQ==" ,"url":"x"} }}"#,
                r#"{"k\u00e9y":"a\/b", "message" : { "media": {"type":"image" ,"url":"x"} }}"#,
            ),
            (
                r#"{"message":{"media":{"base64":"QQ==", "type":"image"}}}"#,
                r#"{"message":{"media":{ "type":"image"}}}"#,
            ),
            (
                r#"{"message":{"media":{"base64":"QQ=="}}}"#,
                r#"{"message":{"media":{}}}"#,
            ),
            (
                r#"{"message":{"media":{"base64":"A","base64":"B","t":1}}}"#,
                r#"{"message":{"media":{"t":1}}}"#,
            ),
        ];
        for (input, expected) in cases {
            let out = strip_media_base64(&raw(input))
                .unwrap_or_else(|e| panic!("{input}: {e}"))
                .unwrap();
            assert_eq!(out.get(), expected, "{input}");
        }
    }

    #[test]
    fn strip_leaves_payloads_without_media_untouched() {
        for s in [
            r#"[1,2]"#,
            r#"{"message":"text base64"}"#,
            r#"{"message":{"media":null}}"#,
            r#"{"base64":1}"#,
        ] {
            assert!(strip_media_base64(&raw(s)).unwrap().is_none(), "{s}");
        }
    }
}
