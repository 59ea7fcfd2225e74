//! The vocabulary of an onboarding's event log, and the three-way field update every change
//! uses. One closed set: the store keeps the names, the proto documents them (a test holds the
//! `OnboardingEvent.type` comment to this list), control flow matches on the enum.

use std::fmt;
use std::str::FromStr;

/// What an event of the log says happened. Stored and sent by [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The onboarding was accepted.
    Created,
    /// Its canonical state changed.
    StateChanged,
    /// A pipeline step finished (state unchanged).
    StepSucceeded,
    /// A step failed and will run again.
    StepRetry,
    /// Every step finished (state unchanged).
    PipelineCompleted,
    /// `RetryPipeline` restarted the failed steps.
    PipelineRestarted,
    /// The provider's raw status moved without a state change.
    ProviderStatus,
    /// A provider callback was applied.
    Callback,
    /// `CancelOnboarding` was accepted.
    CancelRequested,
    /// The provider refused the cancellation.
    CancelRefused,
    /// A verification code was passed on to the provider.
    VerificationCodeSubmitted,
    /// `GetAppToken` returned the token (attributes: `who`, `resource_id`).
    TokenRead,
    /// A subscription was created at the provider.
    SubscriptionCreated,
    /// A subscription was deleted at the provider.
    SubscriptionDeleted,
    /// `ExtendChannel` is about to add days (written before the provider call: `request_id`,
    /// `days`, `active_till_ms` before), so a retry anywhere can tell whether it happened.
    ChannelExtendRequested,
    /// Days were added to a channel (attributes: `request_id`, `days`, `active_till_ms`).
    ChannelExtended,
    /// That attempt failed (attributes: `request_id`, `error`, the provider's raw code): a
    /// retry checks whether the days landed before extending again.
    ChannelExtendFailed,
    /// A channel's mode was switched.
    ChannelModeSet,
    /// A channel was deleted (the onboarding is recorded `CANCELLED`).
    ChannelDeleted,
    /// A QR or pairing code was handed out (attributes: `method`; never the code).
    ConnectCodeIssued,
    /// An expiry announced ahead of time (attributes: `expire_time`, `remaining_secs`,
    /// `threshold_secs`).
    ExpiryWarning,
}

impl EventKind {
    /// Every kind, in the order the proto lists them.
    pub const ALL: [EventKind; 21] = [
        Self::Created,
        Self::StateChanged,
        Self::StepSucceeded,
        Self::StepRetry,
        Self::PipelineCompleted,
        Self::PipelineRestarted,
        Self::ProviderStatus,
        Self::Callback,
        Self::CancelRequested,
        Self::CancelRefused,
        Self::VerificationCodeSubmitted,
        Self::TokenRead,
        Self::SubscriptionCreated,
        Self::SubscriptionDeleted,
        Self::ChannelExtendRequested,
        Self::ChannelExtended,
        Self::ChannelExtendFailed,
        Self::ChannelModeSet,
        Self::ChannelDeleted,
        Self::ConnectCodeIssued,
        Self::ExpiryWarning,
    ];

    /// The stored and wire name (`OnboardingEvent.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::StateChanged => "state_changed",
            Self::StepSucceeded => "step_succeeded",
            Self::StepRetry => "step_retry",
            Self::PipelineCompleted => "pipeline_completed",
            Self::PipelineRestarted => "pipeline_restarted",
            Self::ProviderStatus => "provider_status",
            Self::Callback => "callback",
            Self::CancelRequested => "cancel_requested",
            Self::CancelRefused => "cancel_refused",
            Self::VerificationCodeSubmitted => "verification_code_submitted",
            Self::TokenRead => "token_read",
            Self::SubscriptionCreated => "subscription_created",
            Self::SubscriptionDeleted => "subscription_deleted",
            Self::ChannelExtendRequested => "channel_extend_requested",
            Self::ChannelExtended => "channel_extended",
            Self::ChannelExtendFailed => "channel_extend_failed",
            Self::ChannelModeSet => "channel_mode_set",
            Self::ChannelDeleted => "channel_deleted",
            Self::ConnectCodeIssued => "connect_code_issued",
            Self::ExpiryWarning => "expiry_warning",
        }
    }

    /// `kind` when the state moved, otherwise `quiet`: the engine reports a state change
    /// first, whatever else the same change did.
    pub fn or_state_change(quiet: EventKind, from: super::OnboardingState, to: super::OnboardingState) -> EventKind {
        if from != to { Self::StateChanged } else { quiet }
    }

    /// Whether the engine should look at the pipeline again: everything but a bare
    /// provider-status move.
    pub fn wakes_engine(self) -> bool {
        self != Self::ProviderStatus
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown event kind '{s}'"))
    }
}

/// A field of a change: left alone, set, or cleared. Replaces `Option<Option<T>>`, whose
/// `Some(None)` read as "set to nothing" to some and "unchanged" to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Patch<T> {
    /// Leave the stored value as it is (the default: a change touches only what it names).
    #[default]
    Keep,
    /// Set to this value.
    Set(T),
    /// Store no value (SQL `NULL`), e.g. a deadline that no longer applies.
    Clear,
}

impl<T> Patch<T> {
    /// The value after the patch, given the value before it.
    pub fn apply(self, old: Option<T>) -> Option<T> {
        match self {
            Self::Keep => old,
            Self::Set(v) => Some(v),
            Self::Clear => None,
        }
    }

    /// `Set(v)` for `Some(v)`, `Clear` for `None`: a field whose new value is known either way.
    pub fn replace(v: Option<T>) -> Self {
        v.map_or(Self::Clear, Self::Set)
    }

    /// Whether the patch changes anything.
    pub fn is_keep(&self) -> bool {
        matches!(self, Self::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert!(seen.insert(k.as_str()), "{k} twice");
        }
        assert!("nope".parse::<EventKind>().is_err());
    }

    #[test]
    fn the_proto_lists_exactly_these_event_types() {
        let proto = include_str!("../../proto/wa/onboard/v1/onboarding.proto");
        let start = proto.find("message OnboardingEvent").expect("OnboardingEvent in the proto");
        let body = &proto[start..];
        let field = body.find("string type = 3;").expect("OnboardingEvent.type");
        let comment = &body[..field];
        let list = &comment[comment.rfind("One of").expect("an 'One of' list above OnboardingEvent.type")..];
        let list = &list[..list.find("`.").expect("the list ends with a full stop") + 1];
        let listed: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
        let ours: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(listed, ours, "the OnboardingEvent.type comment must list every EventKind, in order");
    }

    #[test]
    fn patch_applies_keep_set_clear() {
        assert_eq!(Patch::Keep.apply(Some(1)), Some(1));
        assert_eq!(Patch::Set(2).apply(Some(1)), Some(2));
        assert_eq!(Patch::<i32>::Clear.apply(Some(1)), None);
        assert_eq!(Patch::replace(None::<i32>), Patch::Clear);
        assert_eq!(Patch::replace(Some(3)), Patch::Set(3));
    }
}
