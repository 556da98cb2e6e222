//! Classification: the recorded reason an inbound makes no lead, decided
//! from the channel's `lead_source` flag and the facts its connector saw.

use leadgate_connector::{Disposition, Flag};

/// `None` means "may become a lead" (identify decides lead or activity).
pub fn classify(flags: &[Flag], lead_source: bool, channel: &str) -> Option<(Disposition, String)> {
    if let Some(Flag::Invalid(e)) = flags.iter().find(|f| matches!(f, Flag::Invalid(_))) {
        return Some((Disposition::Invalid, e.clone()));
    }
    if let Some(Flag::Spam(why)) = flags.iter().find(|f| matches!(f, Flag::Spam(_))) {
        return Some((Disposition::Spam, why.clone()));
    }
    if !lead_source {
        return Some((
            Disposition::NotLeadSource,
            format!("channel {channel:?} has lead_source = false"),
        ));
    }
    flags.iter().find_map(|f| {
        let (d, why) = match f {
            Flag::AutoReply(w) => (Disposition::AutoReply, w),
            Flag::Bounce(w) => (Disposition::Bounce, w),
            Flag::MailingList(w) => (Disposition::MailingList, w),
            Flag::Internal(w) => (Disposition::InternalSender, w),
            Flag::Outgoing(w) => (Disposition::Outgoing, w),
            Flag::NotLead(w) => (Disposition::NotLead, w),
            Flag::Invalid(_) | Flag::Spam(_) => return None,
        };
        Some((d, why.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_follow_flags_and_the_lead_source_switch() {
        assert_eq!(classify(&[], true, "site"), None);
        assert_eq!(
            classify(&[], false, "vendors").unwrap().0,
            Disposition::NotLeadSource
        );
        let spam = [Flag::Spam("honeypot".into())];
        assert_eq!(classify(&spam, false, "x").unwrap().0, Disposition::Spam);
        let bounce = [Flag::Bounce("dsn".into())];
        assert_eq!(
            classify(&bounce, true, "x").unwrap(),
            (Disposition::Bounce, "dsn".into())
        );
        let bad = [
            Flag::AutoReply("a".into()),
            Flag::Invalid("truncated".into()),
        ];
        assert_eq!(classify(&bad, true, "x").unwrap().0, Disposition::Invalid);
    }
}
