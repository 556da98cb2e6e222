//! Placeholder until this channel's issue is taken up.
