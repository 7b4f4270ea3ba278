//! The cap on requests at the FHIR server at once (`limits.max_upstream_requests`). One set
//! of slots serves every gateway a process builds, so a reload never adds a second allowance
//! beside the requests still running under the configuration before it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Slots for requests at the FHIR server.
#[derive(Debug, Clone)]
pub struct UpstreamSlots {
    slots: Arc<Semaphore>,
}

/// One request's slot, given back when dropped.
#[derive(Debug)]
pub struct UpstreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl UpstreamSlots {
    /// `max` slots.
    pub fn new(max: u32) -> Self {
        let max = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
        }
    }

    /// A free slot, or `None` at once when all are taken: a request over the cap is not
    /// queued, it is answered 503 and the client comes back.
    pub fn take(&self) -> Option<UpstreamSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(UpstreamSlot { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_free_again_once_its_request_is_done() {
        let slots = UpstreamSlots::new(1);
        let first = slots.take().expect("one slot");
        assert!(slots.take().is_none());
        assert!(slots.clone().take().is_none(), "clones share the slots");
        drop(first);
        assert!(slots.take().is_some());
    }
}
