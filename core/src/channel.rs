//! Redis names shared by both processes, and the control-channel message.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Builds every Redis channel and key name from the configured prefix (`REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    /// Redis Cluster naming: the instance id in a hash tag (`{<id>}`), so an instance's history
    /// key and its shard channel fall in one slot (the history script touches both).
    hash_tags: bool,
}

impl Names {
    /// Names under `prefix` (default `ryze`).
    pub fn new(prefix: impl Into<String>) -> Names {
        Names {
            prefix: prefix.into(),
            hash_tags: false,
        }
    }

    /// The same names with the instance id in a hash tag (`<prefix>:ws:{<id>}`,
    /// `<prefix>:hist:{<id>}`) when `on`: what both processes use with a `redis-cluster://`
    /// URL ([`crate::redis::RedisTarget::clustered`]), so one slot holds an instance's history
    /// key and its shard channel. Names without Redis Cluster are unchanged.
    pub fn with_hash_tags(mut self, on: bool) -> Names {
        self.hash_tags = on;
        self
    }

    /// Whether instance ids are hash-tagged (Redis Cluster).
    pub fn hash_tagged(&self) -> bool {
        self.hash_tags
    }

    /// The instance id as it appears in its channel and history key.
    fn tagged(&self, instance_id: Uuid) -> String {
        if self.hash_tags {
            format!("{{{instance_id}}}")
        } else {
            instance_id.to_string()
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:ws:<instance_id>`: the instance's fan-out channel (keyed by id, D31);
    /// `<prefix>:ws:{<instance_id>}` with hash tags (Redis Cluster).
    pub fn instance_channel(&self, instance_id: Uuid) -> String {
        format!("{}:ws:{}", self.prefix, self.tagged(instance_id))
    }

    /// The instance id named by a fan-out channel, if `channel` is one of ours (in the form
    /// these names build: hash-tagged or not).
    pub fn parse_instance_channel(&self, channel: &str) -> Option<Uuid> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ws:")?;
        let rest = if self.hash_tags {
            rest.strip_prefix('{')?.strip_suffix('}')?
        } else {
            rest
        };
        // `Uuid::parse_str` also takes braced and URN forms: accept only the hyphenated one.
        (rest.len() == 36).then_some(())?;
        Uuid::parse_str(rest).ok()
    }

    /// `<prefix>:hist:<instance_id>` (`<prefix>:hist:{<instance_id>}` with hash tags): the
    /// instance's history, a Redis Stream (SPEC D37, CONTRACT §5). Each entry has field `f`,
    /// the exact frame text, `t`, the publish time in Unix microseconds, and `p`, the id of
    /// the entry before it (absent for the first); its id is the frame's offset.
    pub fn history_key(&self, instance_id: Uuid) -> String {
        format!("{}:hist:{}", self.prefix, self.tagged(instance_id))
    }

    /// `<prefix>:resume:<instance_id>`: exists while some gateway holds a resumable (`since`)
    /// client of the instance, and for `HISTORY_TTL` after (the gateway sets it with `PX` and
    /// refreshes it). While it exists the publisher appends the instance's frames to history
    /// even when nobody is live. Never hash-tagged (only read on its own).
    pub fn resume_key(&self, instance_id: Uuid) -> String {
        format!("{}:resume:{}", self.prefix, instance_id)
    }

    /// `<prefix>:ctl`: the control channel every gateway subscribes to.
    pub fn control_channel(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// `<prefix>:probe:<pod_id>`: one gateway's liveness probe (D38). The pod publishes to it
    /// through its command connection and must see it arrive on its subscriber connection.
    pub fn probe_channel(&self, pod_id: Uuid) -> String {
        format!("{}:probe:{}", self.prefix, pod_id)
    }

    /// `<prefix>:rl:<key_hash>:<window_start>`: one rate-limit window's counter.
    pub fn rate_limit_key(&self, key_hash: &str, window_start: u64) -> String {
        format!("{}:rl:{}:{}", self.prefix, key_hash, window_start)
    }

    /// `<prefix>:live:<instance_id>`: exists while some gateway holds a client of the instance
    /// (refreshed by heartbeat, expires on its own when the last holder dies).
    pub fn live_key(&self, instance_id: Uuid) -> String {
        format!("{}:live:{}", self.prefix, instance_id)
    }

    /// `<prefix>:pod:<pod_id>`: one gateway's load record for rebalancing (D39),
    /// `"<connections> <ready 0|1>"`, written with a TTL of three rebalance intervals.
    pub fn pod_key(&self, pod_id: Uuid) -> String {
        format!("{}:pod:{}", self.prefix, pod_id)
    }

    /// `<prefix>:pods`: the index of pod records, a sorted set of pod ids scored by the unix
    /// milliseconds of their last write (so readers never SCAN; stale ids are pruned).
    pub fn pods_index(&self) -> String {
        format!("{}:pods", self.prefix)
    }
}

/// What a control message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlOp {
    /// The instance is gone: close its clients with 1008 `instance deleted`.
    InstanceDeleted,
    /// Its config, name or token changed: drop cached auth for it.
    ConfigChanged,
}

/// A message on `<prefix>:ctl` (CONTRACT §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// What happened.
    pub op: ControlOp,
    /// To which instance.
    #[serde(rename = "instanceId")]
    pub instance_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_channel_round_trips_and_foreign_channels_do_not_parse() {
        let n = Names::new("ryze");
        let id = Uuid::new_v4();
        assert_eq!(n.instance_channel(id), format!("ryze:ws:{id}"));
        assert_eq!(n.parse_instance_channel(&n.instance_channel(id)), Some(id));
        assert_eq!(
            n.parse_instance_channel(&Names::new("other").instance_channel(id)),
            None
        );
        assert_eq!(n.parse_instance_channel("ryze:ctl"), None);
    }

    #[test]
    fn hash_tags_put_the_id_in_braces_for_the_channel_and_history_only() {
        let id = Uuid::new_v4();
        let plain = Names::new("ryze");
        let tagged = Names::new("ryze").with_hash_tags(true);
        assert_eq!(plain.history_key(id), format!("ryze:hist:{id}"));
        assert_eq!(plain.resume_key(id), format!("ryze:resume:{id}"));
        assert_eq!(tagged.instance_channel(id), format!("ryze:ws:{{{id}}}"));
        assert_eq!(tagged.history_key(id), format!("ryze:hist:{{{id}}}"));
        assert_eq!(tagged.resume_key(id), format!("ryze:resume:{id}"));
        assert_eq!(tagged.live_key(id), format!("ryze:live:{id}"));
        assert_eq!(
            tagged.parse_instance_channel(&tagged.instance_channel(id)),
            Some(id)
        );
        assert_eq!(
            plain.parse_instance_channel(&tagged.instance_channel(id)),
            None
        );
        assert_eq!(
            tagged.parse_instance_channel(&plain.instance_channel(id)),
            None
        );
        assert_eq!(tagged.parse_instance_channel("ryze:ws:{x}"), None);
    }

    #[test]
    fn control_message_has_the_contract_shape() {
        let id = Uuid::nil();
        let m = ControlMessage {
            op: ControlOp::InstanceDeleted,
            instance_id: id,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            format!(r#"{{"op":"instance_deleted","instanceId":"{id}"}}"#)
        );
    }
}
