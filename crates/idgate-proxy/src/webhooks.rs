//! Provider webhooks in the gateway: a configuration's webhooks put into use with the
//! masking profiles their subscribers name (the endpoints and the delivery itself are
//! `idgate_webhooks`'s).

use idgate_config::Config;
use idgate_webhooks::{SetupError, SubscriberMask, Webhooks};

use crate::masking::MaskingProfiles;

/// Loads the webhooks of `config`; blocking (secrets and keys are read).
pub fn load(config: &Config, masking: &MaskingProfiles) -> Result<Webhooks, Vec<SetupError>> {
    Webhooks::load(&config.webhooks, |i| {
        masking.get(i).map(|p| SubscriberMask {
            profile_name: p.name.clone(),
            profile: p.profile.clone(),
            key: p.key.clone(),
            non_json: p.non_json.clone(),
        })
    })
}
