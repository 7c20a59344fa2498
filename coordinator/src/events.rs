//! Campaign progress events: the gRPC services publish, `Watch` streams subscribe.

use tokio::sync::broadcast;

/// What happened to a campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignEvent {
    /// Campaign id.
    pub campaign_id: String,
    /// Event kind, e.g. `submitted`, `unit_leased`, `step_finished`, `cancelled`.
    pub kind: String,
    /// Unit concerned, when any.
    pub unit_id: Option<String>,
    /// Unit label, when any.
    pub unit_label: Option<String>,
    /// Free text (error, agent id).
    pub detail: String,
}

/// A fan-out of campaign events. Subscribers that fall behind lose events and are told
/// so by `broadcast::error::RecvError::Lagged`; `Watch` then re-reads a snapshot.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<CampaignEvent>,
}

impl EventBus {
    /// A bus keeping up to `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity);
        EventBus { sender }
    }

    /// Publishes an event; having no subscriber is fine.
    pub fn publish(&self, event: CampaignEvent) {
        let _ = self.sender.send(event);
    }

    /// Whether anyone is subscribed; an event published now would reach somebody.
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// A new subscription receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CampaignEvent> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(1024)
    }
}
