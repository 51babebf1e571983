//! The in-process bus of the single-process mode: the embedded publisher's output goes
//! straight into the hub, with no serialisation beyond the publisher's one.

use crate::hub::Hub;
use futures_util::future::BoxFuture;
use ryze_core::channel::ControlMessage;
use ryze_core::wire;
use ryze_publisher::outlet::{Outgoing, Outlet, OutletError};
use std::sync::OnceLock;
use uuid::Uuid;

/// Connects the embedded publisher to the hub.
#[derive(Default)]
pub struct MemoryBroker {
    hub: OnceLock<Hub>,
}

impl MemoryBroker {
    /// Wires the hub in once it exists (the hub itself holds this broker).
    pub fn attach(&self, hub: Hub) {
        let _ = self.hub.set(hub);
    }

    fn hub(&self) -> Result<&Hub, OutletError> {
        self.hub.get().ok_or(OutletError::Unavailable)
    }
}

impl Outlet for MemoryBroker {
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, OutletError>> {
        Box::pin(async move {
            let hub = self.hub()?;
            Ok(ids.iter().map(|id| hub.has_holders(*id)).collect())
        })
    }

    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), OutletError>> {
        Box::pin(async move {
            let hub = self.hub()?;
            for m in messages {
                match wire::decode(m.body) {
                    Ok(frame) => hub.dispatch(m.instance_id, frame, false),
                    Err(e) => {
                        tracing::error!(error = %e, "embedded publisher produced a bad message")
                    }
                }
            }
            Ok(())
        })
    }

    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), OutletError>> {
        Box::pin(async move {
            self.hub()?.control(msg);
            Ok(())
        })
    }
}
