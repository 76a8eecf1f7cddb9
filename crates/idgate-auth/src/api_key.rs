//! Caller API keys (to be completed): format, keyed hashing, verification.
