//! RFC 7512 `pkcs11:` URIs: which module, token and object, and where the PIN comes from.

use super::*;

/// Where the token PIN comes from (`pin-source=file:/run/idgate/pin` or `env:NAME`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

/// A parsed `pkcs11:` URI (RFC 7512) naming one object in one token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub object: String,
    pub module_path: PathBuf,
    pub pin_source: PinSource,
    pub wrap_key: String,
}

fn pct_decode(s: &str) -> Result<String, SecretRefError> {
    let bytes = idgate_codec::percent::decode(s)
        .ok_or(SecretRefError::BadPkcs11Uri("bad percent-encoding"))?;
    String::from_utf8(bytes).map_err(|_| SecretRefError::BadPkcs11Uri("attribute is not UTF-8"))
}

impl Pkcs11Uri {
    /// Parses the part after `pkcs11:`. A relative `pin-source=file:` path is resolved against
    /// `base_dir`; `module-path` must be absolute: the library it names is loaded into the
    /// gateway, and a relative one would depend on the directory it was started in.
    pub fn parse(rest: &str, base_dir: &Path) -> Result<Self, SecretRefError> {
        Self::parse_inner(rest, base_dir, true)
    }

    /// Like [`Pkcs11Uri::parse`], for commands that address the whole token: `object=` may be
    /// left out (it is then empty).
    pub fn parse_token(rest: &str, base_dir: &Path) -> Result<Self, SecretRefError> {
        Self::parse_inner(rest, base_dir, false)
    }

    fn parse_inner(rest: &str, base_dir: &Path, need_object: bool) -> Result<Self, SecretRefError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = None;
        let mut object = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or(SecretRefError::BadPkcs11Uri(
                "path attributes are name=value",
            ))?;
            let v = pct_decode(v)?;
            match k {
                "token" => token = Some(v),
                "object" => object = Some(v),
                // Accepted by RFC 7512 and harmless; the object label and token are what we use.
                "type"
                | "id"
                | "manufacturer"
                | "model"
                | "serial"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                _ => return Err(SecretRefError::BadPkcs11Uri("unknown path attribute")),
            }
        }
        let mut module_path = None;
        let mut pin_source = None;
        let mut wrap_key = DEFAULT_WRAP_KEY.to_owned();
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or(SecretRefError::BadPkcs11Uri(
                "query attributes are name=value",
            ))?;
            let v = pct_decode(v)?;
            match k {
                "module-path" => {
                    let path = PathBuf::from(v);
                    if !path.is_absolute() {
                        return Err(SecretRefError::BadPkcs11Uri(
                            "module-path must be the module's absolute path",
                        ));
                    }
                    module_path = Some(path);
                }
                "pin-source" => {
                    pin_source = Some(if let Some(p) = v.strip_prefix("file:") {
                        PinSource::File(base_dir.join(p))
                    } else if let Some(n) = v.strip_prefix("env:") {
                        PinSource::Env(n.to_owned())
                    } else {
                        return Err(SecretRefError::BadPkcs11Uri(
                            "pin-source must be file:PATH or env:NAME",
                        ));
                    })
                }
                "pin-value" => {
                    return Err(SecretRefError::BadPkcs11Uri(
                        "pin-value puts the PIN in the configuration; use pin-source=file:PATH or env:NAME",
                    ));
                }
                "wrap-key" => wrap_key = v,
                "module-name" => {
                    return Err(SecretRefError::BadPkcs11Uri(
                        "use module-path with the module's full path",
                    ));
                }
                _ => return Err(SecretRefError::BadPkcs11Uri("unknown query attribute")),
            }
        }
        Ok(Self {
            token,
            object: match object {
                Some(o) if !o.is_empty() => o,
                _ if !need_object => String::new(),
                _ => {
                    return Err(SecretRefError::BadPkcs11Uri(
                        "object= (the label) is required",
                    ));
                }
            },
            module_path: module_path
                .ok_or(SecretRefError::BadPkcs11Uri("module-path= is required"))?,
            pin_source: pin_source
                .ok_or(SecretRefError::BadPkcs11Uri("pin-source= is required"))?,
            wrap_key,
        })
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only; the PIN's source is a place, not a value.
        write!(f, "pkcs11:")?;
        if let Some(t) = &self.token {
            write!(f, "token={t};")?;
        }
        write!(f, "object={}", self.object)
    }
}
