//! Redis Cluster liveness per master (D38). A pod holds one subscriber connection per master,
//! but the plain probe (a PUBLISH to the pod's probe channel) exercises only one of them, so
//! a wedged or black-holed other master would go unnoticed. On a cluster the pod therefore
//! also keeps sharded probe channels spread over the whole slot space — one in each 1/16th,
//! so every master owning at least that much of it has one, whatever failovers move — sends
//! an `SPUBLISH` to each per probe round on the command connection (a master that does not
//! answer is a command-connection stall) and judges the silence of each on the subscriber
//! side separately.

use ryze_core::liveness::{Answers, Silence};
use std::time::Duration;

/// Sharded probe channels per pod: one per 1,024 slots.
const SPREAD: u16 = 16;

/// The sharded probe channels of one pod (none off a cluster), each judged on both sides.
pub(super) struct ShardProbes {
    probes: Vec<Shard>,
}

struct Shard {
    channel: String,
    /// Its SPUBLISH on the command connection, answered by the master owning it.
    answers: Answers,
    /// Its probes coming back on the subscriber connection to that master.
    silence: Silence,
}

impl ShardProbes {
    /// `base` is the pod's probe channel; each sharded one adds a hash tag placing it in its
    /// sixteenth of the slot space.
    pub(super) fn new(base: &str, clustered: bool, stall_timeout: Duration) -> ShardProbes {
        let probes = if clustered {
            (0..SPREAD)
                .map(|k| Shard {
                    channel: tagged(base, k),
                    answers: Answers::new(stall_timeout),
                    silence: Silence::new(stall_timeout),
                })
                .collect()
        } else {
            Vec::new()
        };
        ShardProbes { probes }
    }

    /// The channels, to SSUBSCRIBE and SPUBLISH.
    pub(super) fn channels(&self) -> impl Iterator<Item = &str> {
        self.probes.iter().map(|p| p.channel.as_str())
    }

    /// Notes a probe received on `channel`; false when it is not one of these.
    pub(super) fn heard(&self, channel: &str) -> bool {
        match self.find(channel) {
            Some(p) => {
                p.silence.heard();
                true
            }
            None => false,
        }
    }

    /// The SPUBLISH on `channel` was answered: its master takes commands, and a probe is
    /// on its way back.
    pub(super) fn answered(&self, channel: &str) {
        if let Some(p) = self.find(channel) {
            p.answers.answered();
            p.silence.probe_sent();
        }
    }

    /// The SPUBLISH on `channel` failed or timed out: how long its master has been silent,
    /// when this opens a stall episode (see [`Answers::failed`]).
    pub(super) fn failed(&self, channel: &str) -> Option<Duration> {
        self.find(channel).and_then(|p| p.answers.failed())
    }

    /// Every master answered its SPUBLISH recently.
    pub(super) fn commands_live(&self) -> bool {
        self.probes.iter().all(|p| p.answers.is_live())
    }

    /// Subscriber side: the longest stalled silence among them, if any is stalled.
    pub(super) fn stalled(&self) -> Option<Duration> {
        self.probes.iter().filter_map(|p| p.silence.stalled()).max()
    }

    /// After a new subscriber connection: judge afresh.
    pub(super) fn reset(&self) {
        for p in &self.probes {
            p.silence.reset();
        }
    }

    fn find(&self, channel: &str) -> Option<&Shard> {
        self.probes.iter().find(|p| p.channel == channel)
    }
}

/// `base` with the first hash tag `{n}` whose slot falls in the `k`th sixteenth.
fn tagged(base: &str, k: u16) -> String {
    let width = 16384 / SPREAD;
    (0u32..)
        .map(|n| format!("{base}:{{{n}}}"))
        .find(|c| fred::util::redis_keyslot(c.as_bytes()) / width == k)
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_in_each_sixteenth_of_the_slot_space_on_a_cluster_only() {
        let p = ShardProbes::new("ryze:probe:pod", true, Duration::from_secs(3));
        let slots: Vec<u16> = p
            .channels()
            .map(|c| fred::util::redis_keyslot(c.as_bytes()) / 1024)
            .collect();
        assert_eq!(slots, (0..16).collect::<Vec<_>>());
        assert_eq!(
            ShardProbes::new("ryze:probe:pod", false, Duration::from_secs(3))
                .channels()
                .count(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_silent_master_is_a_stall_even_when_the_others_answer() {
        let p = ShardProbes::new("p", true, Duration::from_secs(3));
        let channels: Vec<String> = p.channels().map(str::to_owned).collect();
        for c in &channels {
            p.answered(c);
        }
        for c in &channels[1..] {
            assert!(p.heard(c));
        }
        assert!(!p.heard("another channel"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(p.stalled(), None, "within the timeout");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(p.stalled().is_some(), "the first master never answered");
        p.heard(&channels[0]);
        assert_eq!(p.stalled(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_master_that_stops_answering_is_one_stall_episode() {
        let p = ShardProbes::new("p", true, Duration::from_secs(3));
        let channels: Vec<String> = p.channels().map(str::to_owned).collect();
        assert!(!p.commands_live(), "no answer yet");
        for c in &channels {
            p.answered(c);
        }
        assert!(p.commands_live());
        tokio::time::advance(Duration::from_secs(4)).await;
        for c in &channels[1..] {
            p.answered(c);
        }
        assert!(p.failed(&channels[0]).is_some(), "silent past the timeout");
        assert!(p.failed(&channels[0]).is_none(), "counted once per episode");
        assert!(!p.commands_live());
        p.answered(&channels[0]);
        assert!(p.commands_live());
    }
}
