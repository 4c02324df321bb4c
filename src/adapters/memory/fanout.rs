//! Standalone fanout: a published event goes straight to this process's
//! rooms. Subscribing is a no-op because every room of the process already
//! receives everything the registry routes to it.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::collab::model::Event;
use crate::error::Error;
use crate::ports::{Fanout, RoomSink};

pub struct MemoryFanout {
    rooms: Arc<dyn RoomSink>,
}

impl MemoryFanout {
    pub fn new(rooms: Arc<dyn RoomSink>) -> Self {
        MemoryFanout { rooms }
    }
}

#[async_trait]
impl Fanout for MemoryFanout {
    async fn publish(&self, event: &Event) -> Result<(), Error> {
        self.rooms.deliver(event.clone());
        Ok(())
    }

    async fn subscribe(&self, _draft_id: Uuid) -> Result<(), Error> {
        Ok(())
    }

    async fn unsubscribe(&self, _draft_id: Uuid) -> Result<(), Error> {
        Ok(())
    }
}
