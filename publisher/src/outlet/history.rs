//! The history script (SPEC D37, CONTRACT §5): one call appends a frame to the instance's
//! stream, renews the stream's expiry and, when someone listens, publishes the frame with its
//! offset in a version-2 header. Redis runs a script atomically, so no subscriber can see a
//! frame that history lacks, and no frame enters history under one offset and goes out under
//! another.
//!
//! Sent as `EVALSHA`; on `NOSCRIPT` (a restarted or failed-over Redis, `SCRIPT FLUSH`) the same
//! call goes again as `EVAL`, which also caches the script for the next ones. Both are sent as
//! custom commands routed by the history key's slot: fred's pipelines have no Lua interface,
//! and one pipeline per request keeps a batch to one round trip.

use fred::types::{CustomCommand, Value};
use ryze_core::bus::Outgoing;
use ryze_core::channel::Names;
use ryze_core::history::Retention;
use sha1::{Digest, Sha1};

/// `KEYS[1]` history key; `ARGV`: frame, publish micros, size, TTL in ms, channel (`""` =
/// history only), `"1"` for `SPUBLISH` (Redis Cluster). Returns the entry id (the offset).
///
/// Each entry also records its predecessor's id (`p`, from `XREVRANGE … COUNT 1`, O(1) at the
/// stream's tail): `XTRIM` does not update `max-deleted-entry-id`, and without `p` a gateway
/// could not tell a client whose own offset was trimmed (nothing lost) from one whose next
/// frames were (a gap).
///
/// `MAXLEN ~` trims by whole stream node (`stream-node-max-entries`, 100 by default), so a
/// stream holds between `size` and `size + 100` entries once full: exact trimming would
/// rewrite a node on every append. Under Redis Cluster the channel carries the same hash tag
/// as the key (see [`Names::with_hash_tags`]), so both are in the script's slot.
pub const SCRIPT: &str = r#"local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id
if #last > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[1], 't', ARGV[2], 'p', last[1][1])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[1], 't', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then
  local body = '2 ' .. ARGV[2] .. ' ' .. id .. '\n' .. ARGV[1]
  if ARGV[6] == '1' then
    redis.call('SPUBLISH', ARGV[5], body)
  else
    redis.call('PUBLISH', ARGV[5], body)
  end
end
return id
"#;

/// The script, its SHA-1 (for `EVALSHA`) and the retention it applies.
#[derive(Debug, Clone)]
pub struct HistoryScript {
    sha1: String,
    retention: Retention,
}

impl HistoryScript {
    /// The script for `retention`.
    pub fn new(retention: Retention) -> HistoryScript {
        let digest = Sha1::digest(SCRIPT.as_bytes());
        HistoryScript {
            sha1: hex::encode(digest),
            retention,
        }
    }

    /// `SHA1(SCRIPT)` in hex, what `EVALSHA` names.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }

    /// The retention applied by every call.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// `KEYS` and `ARGV` of one call for `m`.
    pub fn call(&self, names: &Names, sharded: bool, m: &Outgoing) -> (String, Vec<Value>) {
        let channel = if m.live {
            names.instance_channel(m.instance_id)
        } else {
            String::new()
        };
        let args = vec![
            Value::Bytes(m.frame()),
            Value::from(m.published_micros.to_string()),
            Value::from(self.retention.size.to_string()),
            Value::from(self.retention.ttl_ms().to_string()),
            Value::from(channel),
            Value::from(if sharded { "1" } else { "0" }),
        ];
        (names.history_key(m.instance_id), args)
    }
}

impl HistoryScript {
    /// `EVALSHA <sha1> 1 <key> <args…>`, routed to the key's slot.
    pub fn evalsha(&self, key: &str, args: &[Value]) -> (CustomCommand, Vec<Value>) {
        script_command("EVALSHA", Value::from(self.sha1.clone()), key, args)
    }

    /// `EVAL <script> 1 <key> <args…>` (the `NOSCRIPT` fallback), routed to the key's slot.
    pub fn eval(&self, key: &str, args: &[Value]) -> (CustomCommand, Vec<Value>) {
        script_command("EVAL", Value::from(SCRIPT), key, args)
    }
}

fn script_command(
    name: &'static str,
    script: Value,
    key: &str,
    args: &[Value],
) -> (CustomCommand, Vec<Value>) {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let mut all = Vec::with_capacity(args.len() + 3);
    all.push(script);
    all.push(Value::from(1_i64));
    all.push(Value::from(key));
    all.extend_from_slice(args);
    (CustomCommand::new_static(name, Some(slot), false), all)
}

/// Whether `e` is Redis saying it does not know the script.
pub fn is_noscript(e: &fred::error::Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calls_carry_the_frame_without_its_header_and_history_only_has_no_channel() {
        let script = HistoryScript::new(Retention {
            size: 10,
            ttl: Duration::from_secs(60),
        });
        assert_eq!(script.sha1().len(), 40);
        let names = Names::new("p");
        let id = uuid::Uuid::nil();
        let body = bytes::Bytes::from_static(b"1 7\n{}");
        let (key, args) = script.call(&names, false, &Outgoing::new(id, body.clone(), 7, true));
        assert_eq!(key, format!("p:hist:{id}"));
        assert_eq!(args[0], Value::Bytes(bytes::Bytes::from_static(b"{}")));
        assert_eq!(args[1], Value::from("7"));
        assert_eq!(args[2], Value::from("10"));
        assert_eq!(args[3], Value::from("60000"));
        assert_eq!(args[4], Value::from(format!("p:ws:{id}")));
        let (_, args) = script.call(&names, true, &Outgoing::new(id, body, 7, false));
        assert_eq!((&args[4], &args[5]), (&Value::from(""), &Value::from("1")));
    }
}
