//! The live handler of each entity type on this shard: a Wasm sandbox or native
//! code behind [`EntityHandler`], made on first use and again after a fault.

use std::sync::Arc;

use crate::component::{EntityHandler, LoadedComponent};
use crate::error::{CommandError, CommandResult};

use super::Shard;

impl Shard {
    /// The active component of an entity type.
    pub(super) fn component(&self, entity_type: &str) -> CommandResult<Arc<LoadedComponent>> {
        self.shared.registry.require(entity_type)
    }

    /// This shard's live handler of the component's version.
    pub(super) fn handler(&mut self, comp: &LoadedComponent) -> CommandResult<&mut dyn EntityHandler> {
        let current = matches!(self.handlers.get(&comp.entity_type), Some((v, _)) if *v == comp.version);
        if !current {
            let handler =
                comp.instantiate(self.shared.registry.runtime()).map_err(|reason| CommandError::GuestFault {
                    entity_type: comp.entity_type.clone(),
                    reason: format!("instantiation failed: {reason}"),
                })?;
            self.handlers.insert(comp.entity_type.clone(), (comp.version, handler));
        }
        Ok(self.handlers.get_mut(&comp.entity_type).unwrap().1.as_mut())
    }

    /// A trapped instance cannot be entered again: forget it, the next call makes a new one.
    pub(super) fn fault(&mut self, comp: &LoadedComponent, reason: String) -> CommandError {
        self.handlers.remove(&comp.entity_type);
        tracing::warn!(entity_type = %comp.entity_type, "guest fault: {reason}");
        CommandError::GuestFault { entity_type: comp.entity_type.clone(), reason }
    }
}
