//! Reading an instance's history for a resuming client (SPEC §5.7, D36, D37).
//!
//! One Lua script reads, atomically, what decides a gap and the frames after the offset: the
//! stream's last generated id (`XINFO STREAM`) and the entries from the offset on. Each entry
//! carries its predecessor's id (field `p`, written by the publisher's append), so the rule in
//! [`judge`] is exact: frames after the offset are missing only if the offset is not this
//! stream's, or entries after it were trimmed. (`XTRIM` does not update Redis's
//! `max-deleted-entry-id`, so the stream alone cannot tell.)

use super::RedisBroker;
use crate::broker::History;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use ryze_core::wire::Offset;
use std::sync::OnceLock;
use uuid::Uuid;

const READ: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
return {last, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
"#;

fn script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::from_lua(READ))
}

impl RedisBroker {
    /// A resumable client of `id` joined: its resume key is set now (in the background) and
    /// refreshed with the live keys while this pod holds the instance.
    pub fn mark_resumable(self: &std::sync::Arc<Self>, id: Uuid) {
        if !self.lock().resumable.insert(id) {
            return;
        }
        let broker = self.clone();
        tokio::spawn(async move { broker.set_resume_keys(&[id]).await });
    }

    /// Heartbeat: refresh the resume keys of instances still held; forget the others (their
    /// keys expire on their own, `HISTORY_TTL` after the last refresh).
    pub(super) async fn refresh_resumable(&self) {
        let held: Vec<Uuid> = {
            let mut s = self.lock();
            let wanted = s.wanted.clone();
            s.resumable.retain(|id| wanted.contains(id));
            s.resumable.iter().copied().collect()
        };
        self.set_resume_keys(&held).await;
    }

    async fn set_resume_keys(&self, ids: &[Uuid]) {
        for chunk in ids.chunks(1000) {
            let pipeline = self.commands.pipeline();
            for id in chunk {
                let _: Result<(), _> = pipeline
                    .set(
                        self.names.resume_key(*id),
                        1,
                        Some(Expiration::PX(self.resume_ttl.as_millis().max(1) as i64)),
                        None,
                        false,
                    )
                    .await;
            }
            if let Err(e) = pipeline.all::<Vec<Value>>().await {
                tracing::warn!(error = %e, "resume keys not refreshed");
            }
        }
    }

    /// The offset of the instance's newest retained frame, [`Offset::ZERO`] when its stream
    /// holds none.
    pub async fn history_tail(&self, id: Uuid) -> Result<Offset, fred::error::Error> {
        let newest: Value = self
            .commands
            .xrevrange(self.names.history_key(id), "+", "-", Some(1))
            .await?;
        // [[id, [field, value, …]]], or [] for an empty or missing stream.
        let id = match newest {
            Value::Array(entries) => entries.into_iter().next().and_then(|entry| match entry {
                Value::Array(pair) => pair.into_iter().next(),
                _ => None,
            }),
            _ => None,
        };
        Ok(id
            .and_then(|id| id.as_bytes().and_then(Offset::parse))
            .unwrap_or(Offset::ZERO))
    }

    /// The retained frames after `since` (at most `max`), and whether any were lost.
    pub async fn history_after(
        &self,
        id: Uuid,
        since: Offset,
        max: usize,
    ) -> Result<History, fred::error::Error> {
        let reply: Value = script()
            .evalsha_with_reload(
                &self.commands,
                vec![self.names.history_key(id)],
                vec![since.to_string(), (max + 1).to_string()],
            )
            .await?;
        Ok(judge(since, reply, max))
    }
}

/// Reads the script's reply: no stream at all (expired, never written, history off, Redis
/// lost it) is a gap; so is an offset this stream never issued, or one after which entries
/// were trimmed. The offset itself being trimmed is not: the first retained entry names it as
/// its predecessor, and nothing after it is missing.
fn judge(since: Offset, reply: Value, max: usize) -> History {
    let Value::Array(parts) = reply else {
        return History::gap();
    };
    let [last, entries] =
        <[Value; 2]>::try_from(parts).unwrap_or_else(|_| [Value::Null, Value::Array(Vec::new())]);
    let offset = |v: &Value| v.as_bytes().and_then(Offset::parse);
    let Some(last) = offset(&last) else {
        return History::gap();
    };
    let mut frames = Vec::new();
    let mut since_is_entry = false;
    // The predecessor named by the first entry after `since`.
    let mut first_previous: Option<Option<Offset>> = None;
    if let Value::Array(entries) = entries {
        for entry in entries {
            let Value::Array(pair) = entry else { continue };
            let mut pair = pair.into_iter();
            let (Some(id), Some(Value::Array(fields))) = (pair.next(), pair.next()) else {
                continue;
            };
            let Some(id) = offset(&id) else { continue };
            if id == since {
                since_is_entry = true;
                continue;
            }
            let field = |name: &[u8]| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0].as_bytes() == Some(name))
                    .and_then(|kv| kv.get(1))
            };
            if first_previous.is_none() {
                first_previous = Some(field(b"p").and_then(offset));
            }
            let frame = field(b"f").and_then(|v| v.as_bytes().map(Bytes::copy_from_slice));
            if let Some(frame) = frame {
                frames.push((id, frame));
            }
        }
    }
    frames.truncate(max);
    let lost = if since > last {
        true // never issued here
    } else if since_is_entry || since == last {
        false // held, or the newest ever: nothing after it can be missing
    } else {
        // `since` is gone: fine only if the first entry after it was appended right after it.
        first_previous != Some(Some(since))
    };
    History { gap: lost, frames }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(ms: u64, seq: u64) -> Offset {
        Offset { ms, seq }
    }

    /// `entries`: (id, predecessor id).
    fn reply(last: &str, entries: &[(&str, &str)]) -> Value {
        let entries = entries
            .iter()
            .map(|(id, previous)| {
                Value::Array(vec![
                    Value::from(*id),
                    Value::Array(vec![
                        Value::from("f"),
                        Value::from(format!("frame {id}")),
                        Value::from("p"),
                        Value::from(*previous),
                    ]),
                ])
            })
            .collect();
        Value::Array(vec![Value::from(last), Value::Array(entries)])
    }

    #[test]
    fn an_offset_still_held_replays_what_follows_it_without_a_gap() {
        let h = judge(
            o(5, 0),
            reply("7-0", &[("5-0", "4-0"), ("6-0", "5-0"), ("7-0", "6-0")]),
            100,
        );
        assert!(!h.gap);
        let ids: Vec<Offset> = h.frames.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![o(6, 0), o(7, 0)]);
        assert_eq!(&h.frames[0].1[..], b"frame 6-0");
    }

    #[test]
    fn the_last_offset_replays_nothing_and_is_no_gap() {
        let h = judge(o(7, 0), reply("7-0", &[("7-0", "6-0")]), 100);
        assert!(!h.gap && h.frames.is_empty());
        // Even trimmed away: nothing was ever appended after it.
        let h = judge(o(7, 0), reply("7-0", &[]), 100);
        assert!(!h.gap && h.frames.is_empty());
    }

    #[test]
    fn trimmed_entries_after_the_offset_are_a_gap_but_trimming_it_alone_is_not() {
        // 5-0 and 6-0 were trimmed; frames after 5-0 (6-0) are gone.
        let held = [("7-0", "6-0"), ("9-0", "7-0")];
        let h = judge(o(5, 0), reply("9-0", &held), 100);
        assert!(h.gap);
        assert_eq!(h.frames.len(), 2, "what is still held follows the gap");
        // Only the offset itself was trimmed: nothing after it is missing.
        let h = judge(o(6, 0), reply("9-0", &held), 100);
        assert!(!h.gap);
    }

    #[test]
    fn foreign_future_and_missing_streams_are_gaps() {
        assert!(
            judge(o(5, 5), reply("9-0", &[("6-0", "5-0")]), 100).gap,
            "not ours"
        );
        assert!(
            judge(o(10, 0), reply("9-0", &[]), 100).gap,
            "from the future"
        );
        assert!(
            judge(o(5, 0), reply("9-0", &[]), 100).gap,
            "everything trimmed"
        );
        assert!(judge(o(1, 0), Value::Array(vec![]), 100).gap, "no stream");
    }
}
