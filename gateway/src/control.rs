//! Control messages (`<prefix>:ctl`, relayed from Postgres NOTIFY by the publishers): what a
//! config or instance change means for this pod. The auth cache is this module's business;
//! the hub is asked only to close a deleted instance's clients.

use crate::auth::AuthCache;
use crate::hub::Hub;
use ryze_core::channel::{ControlMessage, ControlOp};
use ryze_core::close;
use std::sync::Arc;

/// Applies control messages to the hub and the auth cache.
#[derive(Clone)]
pub struct Control {
    hub: Hub,
    cache: Arc<AuthCache>,
}

impl Control {
    /// Control over `hub` and `cache`.
    pub fn new(hub: Hub, cache: Arc<AuthCache>) -> Control {
        Control { hub, cache }
    }

    /// One message: the instance's cached authorisations go (its config or token changed);
    /// a deleted instance's clients are closed with 1008 `instance_deleted`.
    pub fn apply(&self, msg: &ControlMessage) {
        self.cache.invalidate(msg.instance_id);
        if msg.op == ControlOp::InstanceDeleted {
            self.hub
                .close_instance(msg.instance_id, close::INSTANCE_DELETED);
        }
    }

    /// Messages may have been missed (the subscriber reconnected): every cached authorisation
    /// goes, so each is looked up again.
    pub fn missed(&self) {
        self.cache.clear();
    }
}
