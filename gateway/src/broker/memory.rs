//! The in-process bus of the single-process mode without Redis: the embedded publisher's frames
//! go straight into the hub, with no serialisation beyond the publisher's one and no header
//! parsing (the stamp travels beside the frame).

use crate::control::Control;
use crate::hub::Hub;
use futures_util::future::BoxFuture;
use ryze_core::bus::{Bus, BusError, Outgoing};
use ryze_core::channel::ControlMessage;
use ryze_core::wire::WireFrame;
use std::sync::OnceLock;
use uuid::Uuid;

/// Connects the embedded publisher to the hub.
#[derive(Default)]
pub struct MemoryBroker {
    wired: OnceLock<(Hub, Control)>,
}

impl MemoryBroker {
    /// Wires the hub and control in once they exist (the hub itself holds this broker).
    pub fn attach(&self, hub: Hub, control: Control) {
        let _ = self.wired.set((hub, control));
    }

    fn hub(&self) -> Result<&Hub, BusError> {
        self.wired.get().map(|w| &w.0).ok_or(BusError::Unavailable)
    }
}

impl Bus for MemoryBroker {
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, BusError>> {
        Box::pin(async move {
            let hub = self.hub()?;
            Ok(ids.iter().map(|id| hub.has_holders(*id)).collect())
        })
    }

    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let hub = self.hub()?;
            // No history here, so history-only messages have nowhere to go.
            for m in messages.into_iter().filter(|m| m.live) {
                let frame = WireFrame {
                    published_micros: m.published_micros,
                    offset: None,
                    frame: m.frame(),
                };
                hub.dispatch(m.instance_id, frame, false);
            }
            Ok(())
        })
    }

    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let (_, control) = self.wired.get().ok_or(BusError::Unavailable)?;
            control.apply(msg);
            Ok(())
        })
    }
}
