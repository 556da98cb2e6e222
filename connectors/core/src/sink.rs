use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{ChannelId, Inbound, SinkError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A poller's position in its source, stored with the items it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorUpdate {
    /// Which cursor of the channel (an IMAP folder, `updates` for a bot).
    pub key: String,
    pub value: String,
}

/// Items committed together, with the cursor that covers them.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub items: Vec<Inbound>,
    pub cursor: Option<CursorUpdate>,
}

/// What became of an item. Every inbound gets one, recorded with it, so an
/// admin can always see why something did or did not become a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    LeadCreated,
    ActivityAdded,
    Duplicate,
    NotLeadSource,
    Spam,
    AutoReply,
    Bounce,
    MailingList,
    InternalSender,
    Outgoing,
    NotLead,
    Invalid,
    /// A later event of a call already stored: merged into its record.
    CallUpdated,
    /// Extension to extension.
    InternalCall,
}

impl Disposition {
    pub const ALL: [Disposition; 14] = [
        Disposition::LeadCreated,
        Disposition::ActivityAdded,
        Disposition::Duplicate,
        Disposition::NotLeadSource,
        Disposition::Spam,
        Disposition::AutoReply,
        Disposition::Bounce,
        Disposition::MailingList,
        Disposition::InternalSender,
        Disposition::Outgoing,
        Disposition::NotLead,
        Disposition::Invalid,
        Disposition::CallUpdated,
        Disposition::InternalCall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::LeadCreated => "lead_created",
            Disposition::ActivityAdded => "activity_added",
            Disposition::Duplicate => "duplicate",
            Disposition::NotLeadSource => "not_lead_source",
            Disposition::Spam => "spam",
            Disposition::AutoReply => "auto_reply",
            Disposition::Bounce => "bounce",
            Disposition::MailingList => "mailing_list",
            Disposition::InternalSender => "internal_sender",
            Disposition::Outgoing => "outgoing",
            Disposition::NotLead => "not_lead",
            Disposition::Invalid => "invalid",
            Disposition::CallUpdated => "call_updated",
            Disposition::InternalCall => "internal_call",
        }
    }

    pub fn parse(s: &str) -> Option<Disposition> {
        Disposition::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Proof that an item is durably stored: only with this in hand may a
/// connector acknowledge to its peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The stored inbound row; for an exact redelivery, the row stored the
    /// first time.
    pub inbound_id: i64,
    pub disposition: Disposition,
    /// The lead this item created or joined, if any.
    pub lead_id: Option<i64>,
}

/// Where connectors deliver. Implemented by the pipeline.
pub trait Sink: Send + Sync + 'static {
    /// Store the items and the cursor in one transaction and return one
    /// receipt per item, in order. On error nothing of the batch is
    /// acknowledged.
    fn submit(&self, batch: Batch) -> BoxFuture<'_, Result<Vec<Receipt>, SinkError>>;

    /// Store a poller's cursor alone: its position moved with nothing to
    /// store (a first start that reads "from now on", a peer that skipped
    /// ahead), and a restart must resume from there. A sink that cannot
    /// refuses, and the poller keeps the position in memory.
    fn save_cursor(
        &self,
        channel: ChannelId,
        cursor: CursorUpdate,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        let _ = (channel, cursor);
        Box::pin(async {
            Err(SinkError::Unavailable(
                "this sink stores cursors only with items".into(),
            ))
        })
    }

    /// Store one item (a webhook request).
    fn submit_one(&self, item: Inbound) -> BoxFuture<'_, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let mut receipts = self
                .submit(Batch {
                    items: vec![item],
                    cursor: None,
                })
                .await?;
            receipts
                .pop()
                .ok_or_else(|| SinkError::Unavailable("store returned no receipt".into()))
        })
    }
}

/// What a poller is handed when it starts.
#[derive(Clone)]
pub struct PollerContext {
    pub channel: ChannelId,
    /// The cursors saved with the last committed batch, by key.
    pub cursors: Vec<CursorUpdate>,
    pub sink: Arc<dyn Sink>,
    /// Cancelled on shutdown or when a reload removes the channel; a poller
    /// stops between batches, never between commit and acknowledgement.
    pub shutdown: CancellationToken,
}
