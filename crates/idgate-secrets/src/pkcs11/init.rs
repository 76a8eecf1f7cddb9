//! Initialising a token (`idgate hsm init-token`).

use super::*;

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
        match choice {
            SlotChoice::Id(id) if slot.id() == id => chosen = Some((slot, current)),
            SlotChoice::ByLabel if current.as_deref() == Some(label) && chosen.is_none() => {
                chosen = Some((slot, current));
            }
            SlotChoice::ByLabel if current.is_none() && free.is_none() => free = Some(slot),
            _ => {}
        }
    }
    let (slot, current) = match (chosen, choice) {
        (Some(c), _) => c,
        (None, SlotChoice::Id(id)) => return Err(HsmError::NoSlot(id)),
        (None, SlotChoice::ByLabel) => (free.ok_or(HsmError::NoFreeSlot)?, None),
    };
    if let Some(existing) = &current
        && !force
    {
        return Err(HsmError::TokenExists {
            slot: slot.id(),
            label: existing.clone(),
        });
    }
    ctx.init_token(slot, so_pin, label).map_err(|e| match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => HsmError::SoPinIncorrect,
        e => ck("C_InitToken")(e),
    })?;
    let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
    session
        .login(UserType::So, Some(so_pin))
        .map_err(ck("C_Login (SO)"))?;
    session.init_pin(user_pin).map_err(ck("C_InitPIN"))?;
    // Not logging out leaves nothing behind: closing the session ends the SO login.
    drop(session);
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
