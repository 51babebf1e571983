//! The six documented event types and the filter that selects among them.

use std::fmt;

/// One of the six documented event types (SPEC §1). Nothing else is ever delivered (D29).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Messages, edits and revocations.
    MessageExchange,
    /// Delivery and read receipts.
    MessageStatus,
    /// Calls.
    CallUpdate,
    /// Group membership and metadata.
    GroupFlow,
    /// Connection state of the instance.
    InstanceState,
    /// Labels.
    LabelUpdate,
}

impl EventType {
    /// All six, in the documented order.
    pub const ALL: [EventType; 6] = [
        EventType::MessageExchange,
        EventType::MessageStatus,
        EventType::CallUpdate,
        EventType::GroupFlow,
        EventType::InstanceState,
        EventType::LabelUpdate,
    ];

    /// The exact wire name, e.g. `message.exchange`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::MessageExchange => "message.exchange",
            EventType::MessageStatus => "message.status",
            EventType::CallUpdate => "call.update",
            EventType::GroupFlow => "group.flow",
            EventType::InstanceState => "instance.state",
            EventType::LabelUpdate => "label.update",
        }
    }

    /// Parses an exact, case-sensitive name; anything else is `None`.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == name)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `events` filter of a config, as a bit set. Empty means "all six" (documented).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFilter(u8);

impl EventFilter {
    /// Builds the filter from the stored list.
    pub fn from_events(events: &[EventType]) -> EventFilter {
        EventFilter(events.iter().fold(0, |acc, e| acc | e.bit()))
    }

    /// Whether an event of this type passes the filter.
    pub fn allows(self, event: EventType) -> bool {
        self.0 == 0 || self.0 & event.bit() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_exactly_the_six_names() {
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
        }
        for bad in [
            "",
            "message",
            "Message.exchange",
            "message.exchange ",
            "connection.state",
        ] {
            assert_eq!(EventType::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn empty_filter_allows_all_and_listed_filter_only_those() {
        let all = EventFilter::from_events(&[]);
        assert!(EventType::ALL.into_iter().all(|e| all.allows(e)));
        let only = EventFilter::from_events(&[EventType::MessageStatus]);
        assert!(only.allows(EventType::MessageStatus));
        assert!(!only.allows(EventType::MessageExchange));
    }
}
