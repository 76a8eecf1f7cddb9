//! Didit's session statuses and how a session may move between them: by the user on the
//! hosted page (and Didit's own timers and reviewers), or by the customer through
//! `update-status`. Didit's API reference and its "verification statuses" page are the source.
//!
//! ```text
//! Not Started ──▶ In Progress ──▶ Approved ──▶ Kyc Expired
//!      │               │  ▲   ├──▶ Declined
//!      ▼               │  │   ├──▶ In Review ──▶ Approved / Declined
//!   Expired            │  │   └──▶ Abandoned
//!                      ▼  │
//!              Awaiting User        Resubmitted ──▶ In Progress
//! ```
//!
//! `update-status` takes a finished session (Approved, Declined, In Review, Kyc Expired,
//! Abandoned, Resubmitted) to Approved, Declined or Resubmitted; anything else is a 400.

/// Didit's session statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    NotStarted,
    InProgress,
    AwaitingUser,
    InReview,
    Approved,
    Declined,
    Abandoned,
    Resubmitted,
    Expired,
    KycExpired,
}

impl Status {
    pub(crate) const ALL: [Status; 10] = [
        Self::NotStarted,
        Self::InProgress,
        Self::AwaitingUser,
        Self::InReview,
        Self::Approved,
        Self::Declined,
        Self::Abandoned,
        Self::Resubmitted,
        Self::Expired,
        Self::KycExpired,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "Not Started",
            Self::InProgress => "In Progress",
            Self::AwaitingUser => "Awaiting User",
            Self::InReview => "In Review",
            Self::Approved => "Approved",
            Self::Declined => "Declined",
            Self::Abandoned => "Abandoned",
            Self::Resubmitted => "Resubmitted",
            Self::Expired => "Expired",
            // Didit's spelling: one capital K.
            Self::KycExpired => "Kyc Expired",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The user may still be working on the session: creating another with the same
    /// `vendor_data` hands this one back instead.
    pub(crate) fn is_unfinished(self) -> bool {
        matches!(
            self,
            Self::NotStarted | Self::InProgress | Self::AwaitingUser | Self::Resubmitted
        )
    }

    /// The status webhook carries a `decision` (Didit: Approved, Declined, In Review and
    /// Abandoned).
    pub(crate) fn webhook_has_decision(self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Declined | Self::InReview | Self::Abandoned
        )
    }

    /// The workflow has run its checks when the session first reaches one of these; the
    /// decision's check blocks are `null` before.
    pub(crate) fn has_results(self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Declined | Self::InReview | Self::KycExpired
        )
    }

    /// What `update-status` accepts a session in.
    pub(crate) fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Approved
                | Self::Declined
                | Self::InReview
                | Self::KycExpired
                | Self::Abandoned
                | Self::Resubmitted
        )
    }

    /// What `update-status` may set.
    pub(crate) fn settable_by_api(self) -> bool {
        matches!(self, Self::Approved | Self::Declined | Self::Resubmitted)
    }

    /// Whether the verifying user (or Didit's timers and reviewers) can take a session
    /// from `self` to `to`.
    pub(crate) fn flows_to(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (NotStarted, InProgress | Expired)
                | (
                    InProgress,
                    Approved | Declined | InReview | Abandoned | AwaitingUser
                )
                | (AwaitingUser, InProgress | Abandoned)
                | (InReview, Approved | Declined)
                | (Approved, KycExpired)
                | (Resubmitted, InProgress | Abandoned)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("KYC Expired"), None);
    }

    #[test]
    fn a_session_is_finished_before_the_api_may_decide_it() {
        use Status::*;
        assert!(!NotStarted.is_finished() && !InProgress.is_finished());
        assert!(InReview.is_finished() && Abandoned.is_finished());
        assert!(!InReview.settable_by_api() && Resubmitted.settable_by_api());
        assert!(NotStarted.flows_to(InProgress) && !NotStarted.flows_to(Approved));
        assert!(InProgress.flows_to(InReview) && InReview.flows_to(Approved));
        assert!(
            !Declined.flows_to(Approved),
            "only the API turns a decline around"
        );
        // Every status the user's flow reaches is reachable from Not Started.
        let mut seen = vec![NotStarted];
        let mut i = 0;
        while i < seen.len() {
            for to in Status::ALL {
                if seen[i].flows_to(to) && !seen.contains(&to) {
                    seen.push(to);
                }
            }
            i += 1;
        }
        assert_eq!(seen.len(), Status::ALL.len() - 1, "all but Resubmitted");
        assert!(!seen.contains(&Resubmitted));
    }
}
