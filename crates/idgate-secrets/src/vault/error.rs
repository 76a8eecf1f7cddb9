//! Why Vault did not give a value.

use std::time::Duration;

/// Why Vault did not give a value. Never carries a token, a `secret_id` or a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    #[error("vault: references need a [vault] section")]
    NotConfigured,
    #[error("cannot set up the Vault client: {0}")]
    Setup(String),
    #[error("Vault is unreachable: {0}")]
    Unreachable(String),
    #[error("Vault did not answer within {0:?}")]
    Timeout(Duration),
    #[error("permission denied by Vault (check the token or AppRole and its policy)")]
    PermissionDenied,
    #[error("no secret at this path in Vault")]
    NotFound,
    #[error("version {0} of this secret is deleted or destroyed")]
    Deleted(u64),
    #[error("the secret has no field \"{0}\"")]
    NoField(String),
    #[error("field \"{0}\" is not a non-empty string")]
    NotAString(String),
    #[error("Vault login failed: {0}")]
    Login(String),
    #[error("Vault answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("unexpected answer from Vault: {0}")]
    BadResponse(&'static str),
}

impl VaultError {
    /// Worth retrying later: the network, a timeout or a Vault that is busy or sealed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
