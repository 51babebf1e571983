//! Redis names shared by both processes, and the control-channel message.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Builds every Redis channel and key name from the configured prefix (`REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (default `ryze`).
    pub fn new(prefix: impl Into<String>) -> Names {
        Names {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:ws:<instance_id>`: the instance's fan-out channel (keyed by id, D31).
    pub fn instance_channel(&self, instance_id: Uuid) -> String {
        format!("{}:ws:{}", self.prefix, instance_id)
    }

    /// The instance id named by a fan-out channel, if `channel` is one of ours.
    pub fn parse_instance_channel(&self, channel: &str) -> Option<Uuid> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ws:")?;
        Uuid::parse_str(rest).ok()
    }

    /// `<prefix>:ctl`: the control channel every gateway subscribes to.
    pub fn control_channel(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// `<prefix>:hist:<instance_id>`: the instance's history, a Redis Stream whose entry ids
    /// are the offsets (SPEC D37, CONTRACT §5). Field `f`: the frame; `t`: publish micros.
    pub fn history_key(&self, instance_id: Uuid) -> String {
        format!("{}:hist:{}", self.prefix, instance_id)
    }

    /// `<prefix>:resume:<instance_id>`: exists while a resumable (`since`) client of the
    /// instance was connected within `HISTORY_TTL`; the publisher keeps appending to history
    /// while it exists, even with no client connected.
    pub fn resume_key(&self, instance_id: Uuid) -> String {
        format!("{}:resume:{}", self.prefix, instance_id)
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
