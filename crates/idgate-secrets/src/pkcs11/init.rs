//! Initialising a token (`idgate hsm init-token`).

use super::*;
use crate::ExposeSecret;

/// Which slot [`init_token`] initialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChoice {
    /// The slot with this id.
    Id(u64),
    /// The slot already holding a token with the label (if any), else the first slot with an
    /// uninitialised token (SoftHSM2 always offers one).
    ByLabel,
}

/// What [`init_token`] did.
#[derive(Debug, Clone)]
pub struct InitializedToken {
    /// The slot the token was initialised in.
    pub slot: u64,
    /// The slot the module shows it in now (SoftHSM2 moves a new token to a slot of its own).
    pub slot_now: Option<u64>,
    /// The label of the token that was erased (with `force`).
    pub replaced: Option<String>,
}

/// Initialises a token: `C_InitToken` with the Security Officer PIN and `label`, then, as the
/// SO, `C_InitPIN` with the user PIN. A slot that already holds an initialised token is
/// refused unless `force`, since initialising erases every object in it.
///
/// Both PINs are held to the token's lengths (`C_GetTokenInfo`) first: past `C_InitToken`
/// a PIN the token refuses would leave it initialised without a user PIN. Should setting
/// the user PIN fail all the same, the error says so ([`HsmError::UserPinNotSet`]).
///
/// Blocking; meant for `idgate hsm init-token`.
pub fn init_token(
    module_path: &Path,
    choice: SlotChoice,
    label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
    force: bool,
) -> Result<InitializedToken, HsmError> {
    if label.is_empty() || label.len() > 32 {
        return Err(HsmError::BadLabel);
    }
    let ctx = module(module_path)?;
    let ctx = &ctx.ctx;
    let slots = ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))?;
    let mut chosen = None;
    let mut free = None;
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(ck("C_GetTokenInfo"))?;
        let current = info
            .token_initialized()
            .then(|| info.label().trim_end().to_owned());
        let lengths = PinLengths::of(&info);
        match choice {
            SlotChoice::Id(id) if slot.id() == id => chosen = Some((slot, current, lengths)),
            SlotChoice::ByLabel if current.as_deref() == Some(label) && chosen.is_none() => {
                chosen = Some((slot, current, lengths));
            }
            SlotChoice::ByLabel if current.is_none() && free.is_none() => {
                free = Some((slot, lengths));
            }
            _ => {}
        }
    }
    let (slot, current, lengths) = match (chosen, choice) {
        (Some(c), _) => c,
        (None, SlotChoice::Id(id)) => return Err(HsmError::NoSlot(id)),
        (None, SlotChoice::ByLabel) => {
            let (slot, lengths) = free.ok_or(HsmError::NoFreeSlot)?;
            (slot, None, lengths)
        }
    };
    if let Some(existing) = &current
        && !force
    {
        return Err(HsmError::TokenExists {
            slot: slot.id(),
            label: existing.clone(),
        });
    }
    lengths.check("Security Officer PIN", so_pin)?;
    lengths.check("user PIN", user_pin)?;
    ctx.init_token(slot, so_pin, label).map_err(|e| match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => HsmError::SoPinIncorrect,
        e => ck("C_InitToken")(e),
    })?;
    // From here on the token is initialised: a failure leaves it without a user PIN.
    let set_user_pin = || {
        let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(ck("C_Login (SO)"))?;
        session.init_pin(user_pin).map_err(ck("C_InitPIN"))?;
        // Not logging out leaves nothing behind: closing the session ends the SO login.
        drop(session);
        Ok::<_, HsmError>(())
    };
    set_user_pin().map_err(|e| HsmError::UserPinNotSet {
        label: label.to_owned(),
        cause: e.to_string(),
    })?;
    let slot_now = ctx
        .get_slots_with_token()
        .ok()
        .into_iter()
        .flatten()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.token_initialized() && i.label().trim_end() == label)
        })
        .map(|s| s.id());
    Ok(InitializedToken {
        slot: slot.id(),
        slot_now,
        replaced: current,
    })
}

/// The lengths of PIN a token takes (`ulMinPinLen`, `ulMaxPinLen`, in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PinLengths {
    min: usize,
    /// `None` when the token states no maximum (0, or less than its minimum).
    max: Option<usize>,
}

impl PinLengths {
    fn of(info: &cryptoki::slot::TokenInfo) -> Self {
        let (min, max) = (info.min_pin_length(), info.max_pin_length());
        Self {
            min,
            max: (max != 0 && max >= min).then_some(max),
        }
    }

    fn check(self, which: &'static str, pin: &SecretString) -> Result<(), HsmError> {
        let len = pin.expose_secret().len();
        if len < self.min || self.max.is_some_and(|max| len > max) {
            return Err(HsmError::PinLength {
                which,
                len,
                min: self.min,
                max: self.max.unwrap_or(usize::MAX),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_held_to_the_lengths_the_token_states() {
        let softhsm = PinLengths {
            min: 4,
            max: Some(255),
        };
        let pin = |p: &str| SecretString::from(p.to_owned());
        softhsm.check("user PIN", &pin("1234")).unwrap();
        softhsm.check("user PIN", &pin(&"9".repeat(255))).unwrap();
        let short = softhsm.check("user PIN", &pin("9z!")).unwrap_err();
        assert_eq!(
            short.to_string(),
            "the user PIN is 3 bytes long; this token takes 4 to 255 bytes"
        );
        assert!(matches!(
            softhsm.check("Security Officer PIN", &pin(&"9".repeat(256))),
            Err(HsmError::PinLength {
                which: "Security Officer PIN",
                len: 256,
                ..
            })
        ));
        // A token that states no maximum.
        let open = PinLengths { min: 0, max: None };
        open.check("user PIN", &pin(&"9".repeat(4096))).unwrap();
    }
}
