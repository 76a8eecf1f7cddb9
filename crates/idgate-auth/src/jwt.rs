//! JWT access tokens (to be completed): JWS verification, JWKS, issuers.
