//! The frame every client receives, built and serialised exactly once per event (SPEC §6).
//!
//! `data` is carried as raw JSON so its keys, key order and number spellings leave exactly as
//! the event source wrote them (pass-through, §6.2). The one exception is D10: with
//! `mediaBase64=false`, `data.message.media.base64` is cut out of `message.exchange` frames.

use crate::event::EventType;
use crate::wire;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

/// Removes `message.media.base64` from `data`, keeping every other key, its order and its
/// raw value. Returns `None` when there is nothing to remove (the common case costs a scan).
pub fn strip_media_base64(data: &RawValue) -> Result<Option<Box<RawValue>>, serde_json::Error> {
    let text = data.get();
    // Keys may be written with escapes; only then can a literal search miss one.
    if !text.contains("base64") && !text.contains("\\u") {
        return Ok(None);
    }
    let Ok(mut top) = serde_json::from_str::<RawMap<'_>>(text) else {
        return Ok(None);
    };
    let Some(message) = top.get("message") else {
        return Ok(None);
    };
    let Ok(mut message) = serde_json::from_str::<RawMap<'_>>(message.get()) else {
        return Ok(None);
    };
    let Some(media) = message.get("media") else {
        return Ok(None);
    };
    let Ok(mut media) = serde_json::from_str::<RawMap<'_>>(media.get()) else {
        return Ok(None);
    };
    if !media.remove("base64") {
        return Ok(None);
    }
    let media = serde_json::value::to_raw_value(&media)?;
    message.replace("media", &media);
    let message = serde_json::value::to_raw_value(&message)?;
    top.replace("message", &message);
    serde_json::value::to_raw_value(&top).map(Some)
}

/// A JSON object as an ordered list of (key, raw value) pairs: no value is re-parsed.
struct RawMap<'a>(Vec<(String, &'a RawValue)>);

impl<'a> RawMap<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        // The last duplicate wins, as in serde_json's own maps.
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn remove(&mut self, key: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(k, _)| k != key);
        self.0.len() != before
    }

    fn replace(&mut self, key: &str, value: &'a RawValue) {
        for (k, v) in self.0.iter_mut() {
            if k == key {
                *v = value;
            }
        }
    }
}

impl Serialize for RawMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
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
        let data = raw(r#"{"z":1.50,"a":{"b":[1, 2]},"message":{"media":{"base64":"QQ=="}}}"#);
        let out = encode_message(EventType::MessageStatus, &data, ID, false, 7).unwrap();
        assert!(out.starts_with(b"1 7\n"));
        assert_eq!(
            frame(&out),
            r#"{"event":"message.status","data":{"z":1.50,"a":{"b":[1, 2]},"message":{"media":{"base64":"QQ=="}}},"instanceData":{"baseUrl":"https://api.example.com","instance":"sales","token":"tok"}}"#
        );
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
    fn error_body_has_the_documented_shape() {
        assert_eq!(
            error_json("Invalid \"x\""),
            r#"{"success":false,"error":{"message":"Invalid \"x\""}}"#
        );
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
