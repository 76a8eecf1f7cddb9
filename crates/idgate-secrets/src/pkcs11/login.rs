//! Logging in to a token with the user PIN, without ever presenting a PIN the token refused.
//!
//! HSMs lock the user after a few refused logins (Luna and CloudHSM after about ten), which
//! takes down every application on the partition. So the PIN is read from its source when a
//! login is needed, never kept between logins, and a PIN the token refused is presented
//! again only once its source holds another: a typo, or a PIN rotated in the token before
//! its file, costs one refused login, not one per credential, per session or per retry. The
//! refused PINs are kept with the module, by token, so a handle let go and made again (a
//! reload that stops naming a PIN source, then names it again) does not present them once
//! more; a successful login forgets them.

use std::collections::HashMap;

use secrecy::ExposeSecret;

use super::*;

/// The PINs each token of a module refused, by token label: at most [`KEPT`] a token, the
/// latest last.
#[derive(Default)]
pub(super) struct Refusals {
    by_token: HashMap<Option<String>, Vec<Refused>>,
}

/// The most refused PINs remembered for one token: as many sources as a configuration
/// could name for it, and more.
const KEPT: usize = 8;

/// A PIN the token refused, kept (zeroized on drop) only to tell whether a source still
/// holds it.
struct Refused {
    pin: SecretString,
    code: &'static str,
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A place, never the PIN.
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Env(name) => write!(f, "env:{name}"),
        }
    }
}

/// Reads the PIN from its source now. Blocking.
pub(super) fn read_pin(source: &PinSource) -> Result<SecretString, HsmError> {
    match source {
        PinSource::Env(name) => std::env::var(name)
            .map(SecretString::from)
            .map_err(|_| HsmError::Pin(format!("environment variable {name} is not set"))),
        PinSource::File(path) => crate::SecretRef::File(path.clone())
            .resolve()
            .map_err(|e| HsmError::Pin(e.to_string())),
    }
}

/// The return codes of a login that the same PIN would get again: presenting it again can
/// only add to the token's count of failures.
fn refusal(rv: RvError) -> Option<&'static str> {
    Some(match rv {
        RvError::PinIncorrect => "CKR_PIN_INCORRECT",
        RvError::PinLocked => "CKR_PIN_LOCKED",
        RvError::PinExpired => "CKR_PIN_EXPIRED",
        RvError::PinLenRange => "CKR_PIN_LEN_RANGE",
        RvError::PinInvalid => "CKR_PIN_INVALID",
        _ => return None,
    })
}

/// Whether `session` is logged in as the user. A login holds for every session the
/// application has with the token, so a new session is often logged in already.
pub(super) fn logged_in(session: &Session) -> bool {
    use cryptoki::session::SessionState;
    session.get_session_info().is_ok_and(|info| {
        matches!(
            info.session_state(),
            SessionState::RwUser | SessionState::RoUser
        )
    })
}

impl Hsm {
    /// Logs `session` (and with it every session of this application on the token) in,
    /// unless it is already. One login at a time per token: a PIN refused by one is known to
    /// the next before it presents anything.
    pub(super) fn log_in(&self, session: &Session) -> Result<(), HsmError> {
        let mut logins = self
            .module
            .logins
            .lock()
            .map_err(|_| HsmError::Pin("PIN state poisoned".into()))?;
        // Another call may have logged in while this one waited.
        if logged_in(session) {
            return Ok(());
        }
        let value = read_pin(&self.pin_source)?;
        let refused = logins.by_token.entry(self.token_label.clone()).or_default();
        if let Some(known) = refused
            .iter()
            .find(|r| r.pin.expose_secret().as_bytes() == value.expose_secret().as_bytes())
        {
            return Err(HsmError::PinRefused {
                pin_source: self.pin_source.to_string(),
                code: known.code,
            });
        }
        #[cfg(test)]
        self.login_attempts.fetch_add(1, Ordering::SeqCst);
        match session.login(UserType::User, Some(&value)) {
            Ok(()) => {
                refused.clear();
                Ok(())
            }
            // Logged in meanwhile by another user of the module: this PIN was not checked.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => {
                let Some(code) = (match &e {
                    CkError::Pkcs11(rv, _) => refusal(*rv),
                    _ => None,
                }) else {
                    return Err(ck("C_Login")(e));
                };
                let pin_source = self.pin_source.to_string();
                tracing::error!(token = %self.label(), pin_source = %pin_source, code, "the PKCS#11 token refused the user PIN: it is not presented again until its source holds another");
                if refused.len() == KEPT {
                    refused.remove(0);
                }
                refused.push(Refused { pin: value, code });
                Err(HsmError::PinRefused { pin_source, code })
            }
        }
    }
}
