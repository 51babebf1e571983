//! One ingest request: validate all (all-or-nothing), filter per instance config, shape and
//! serialise each surviving event once, publish in array order (CONTRACT §4, SPEC §6).

use crate::cache::Delivery;
use crate::error::IngestError;
use crate::metrics::Outcome;
use crate::Publisher;
use ryze_core::bus::{Audience, Outgoing};
use ryze_core::envelope::{encode_message, InstanceData};
use ryze_core::event::EventType;
use ryze_core::wire::now_micros;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;
use uuid::Uuid;

/// Most events in one request.
pub const MAX_ITEMS: usize = 1000;

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "instanceId")]
    instance_id: Uuid,
    // Borrowed when possible; escaped spellings of a valid name still parse.
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The 202 body: `accepted` = `published` + `filtered` + `noListeners` + `unknownInstance`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events in the request.
    pub accepted: usize,
    /// Sent to the bus.
    pub published: usize,
    /// Dropped by the instance's config (disabled, or not in `events`).
    pub filtered: usize,
    /// Not published: no gateway holds a client of the instance. With history on, an instance
    /// a resumable client may come back to still gets the frame appended to its history.
    #[serde(rename = "noListeners")]
    pub no_listeners: usize,
    /// The id names no instance.
    #[serde(rename = "unknownInstance")]
    pub unknown_instance: usize,
}

/// Parses and validates a body: one event object or an array of up to [`MAX_ITEMS`].
fn parse(body: &[u8]) -> Result<Vec<(Uuid, EventType, &RawValue)>, IngestError> {
    // JSON text is UTF-8; serde_json does not check the contents of fields it ignores.
    let body = std::str::from_utf8(body).map_err(|_| IngestError::InvalidBody)?;
    // Raw values cannot pass through serde's untagged buffering: pick the shape by its
    // first byte instead.
    let is_array = body
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('[');
    let items: Vec<Item<'_>> = if is_array {
        serde_json::from_str(body).map_err(|_| IngestError::InvalidBody)?
    } else {
        vec![serde_json::from_str(body).map_err(|_| IngestError::InvalidBody)?]
    };
    if items.len() > MAX_ITEMS {
        return Err(IngestError::InvalidBody);
    }
    items
        .into_iter()
        .map(|i| {
            Ok((
                i.instance_id,
                EventType::parse(&i.event).ok_or(IngestError::InvalidBody)?,
                i.data,
            ))
        })
        .collect()
}

/// Runs one request end to end.
pub async fn ingest(p: &Publisher, body: &[u8]) -> Result<Counts, IngestError> {
    let items = parse(body)?;
    let mut counts = Counts {
        accepted: items.len(),
        ..Counts::default()
    };
    if items.is_empty() {
        return Ok(counts);
    }
    // Every distinct instance at once: cached entries from memory, the misses in one query.
    let mut distinct: Vec<Uuid> = items.iter().map(|(id, _, _)| *id).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let deliveries: HashMap<Uuid, Option<Arc<Delivery>>> = p
        .cache
        .get_many(&p.store, &distinct)
        .await
        .map_err(|e| IngestError::PublishFailed(Box::new(e)))?;
    // Who is listening (live, or resumable with history on), asked once per request for the
    // instances that passed the filter.
    let wanted: Vec<Uuid> = deliveries
        .iter()
        .filter(|(_, d)| d.as_ref().is_some_and(|d| d.enabled))
        .map(|(id, _)| *id)
        .collect();
    let audience = p
        .outlet
        .audience(&wanted)
        .await
        .map_err(|e| IngestError::PublishFailed(Box::new(e)))?;
    let audience: HashMap<Uuid, Audience> = wanted.into_iter().zip(audience).collect();

    let stamp = now_micros();
    let mut outgoing = Vec::new();
    let mut published: Vec<EventType> = Vec::new();
    let mut history_only: Vec<EventType> = Vec::new();
    for (id, event, data) in items {
        let Some(Some(d)) = deliveries.get(&id) else {
            counts.unknown_instance += 1;
            p.metrics.event(event.as_str(), Outcome::UnknownInstance);
            continue;
        };
        if !d.enabled {
            counts.filtered += 1;
            p.metrics.event(event.as_str(), Outcome::Disabled);
            continue;
        }
        if !d.filter.allows(event) {
            counts.filtered += 1;
            p.metrics.event(event.as_str(), Outcome::Filtered);
            continue;
        }
        let audience = audience.get(&id).copied().unwrap_or(Audience::Nobody);
        if audience == Audience::Nobody {
            counts.no_listeners += 1;
            p.metrics.event(event.as_str(), Outcome::NoListeners);
            continue;
        }
        let instance_data = InstanceData {
            base_url: &p.settings.base_url,
            instance: &d.name,
            token: &d.token,
        };
        let body = encode_message(event, data, instance_data, d.media_base64, stamp)
            .map_err(|_| IngestError::InvalidBody)?;
        let live = audience == Audience::Live;
        outgoing.push(Outgoing::new(id, body.into(), stamp, live));
        if live {
            published.push(event);
        } else {
            // Appended to history for a resumable client, but nobody was live to receive it.
            history_only.push(event);
        }
    }
    let span = tracing::info_span!("publish", frames = outgoing.len());
    p.outlet
        .publish(outgoing)
        .instrument(span)
        .await
        .map_err(|e| IngestError::PublishFailed(Box::new(e)))?;
    counts.published = published.len();
    for e in published {
        p.metrics.event(e.as_str(), Outcome::Published);
    }
    counts.no_listeners += history_only.len();
    for e in history_only {
        p.metrics.event(e.as_str(), Outcome::NoListeners);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_as_one_object_or_an_array() {
        let id = Uuid::new_v4();
        let one = format!(r#"{{"instanceId":"{id}","event":"call.update","data":{{"a":1}}}}"#);
        assert_eq!(parse(one.as_bytes()).map(|v| v.len()).ok(), Some(1));
        let many = format!("[{one},{one}]");
        assert_eq!(parse(many.as_bytes()).map(|v| v.len()).ok(), Some(2));
        assert_eq!(parse(b"[]").map(|v| v.len()).ok(), Some(0));
    }

    #[test]
    fn invalid_items_reject_the_whole_request() {
        let id = Uuid::new_v4();
        for bad in [
            format!(r#"{{"instanceId":"{id}","event":"nope","data":1}}"#),
            format!(r#"{{"instanceId":"{id}","event":"call.update"}}"#),
            r#"{"instanceId":"not-a-uuid","event":"call.update","data":1}"#.to_owned(),
            format!(r#"[{{"instanceId":"{id}","event":"call.update","data":1}}, 5]"#),
            "{".to_owned(),
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(IngestError::InvalidBody)),
                "{bad}"
            );
        }
        let item = format!(r#"{{"instanceId":"{id}","event":"call.update","data":1}}"#);
        let too_many = format!("[{}]", vec![item; MAX_ITEMS + 1].join(","));
        assert!(matches!(
            parse(too_many.as_bytes()),
            Err(IngestError::InvalidBody)
        ));
    }

    #[test]
    fn bodies_that_are_not_utf8_are_rejected_even_inside_ignored_fields() {
        let id = Uuid::new_v4();
        let mut body =
            format!(r#"{{"instanceId":"{id}","event":"call.update","data":1,"x":""#).into_bytes();
        body.extend_from_slice(b"\xFF\xFE\"}");
        assert!(matches!(parse(&body), Err(IngestError::InvalidBody)));
    }
}
