//! Which answers that are not JSON a profile lets through: the media types a profile names
//! (`pass_types`), which types are text renderings of data, and the type a body's first
//! bytes tell when no `Content-Type` names one.
//!
//! The rules only read JSON, so any other representation of the same data (an HTML page, a
//! CSV export, an XML document), which a caller can often ask the upstream for with
//! `Accept` or a query parameter, would carry every value unmasked. A profile therefore
//! passes only the types it names, by default binary media alone (images, video, PDF), and
//! a type that is text passes only when named exactly: a range such as `image/*` never
//! covers one (`image/svg+xml` is XML).

use std::fmt;

/// A media type as a `Content-Type` names it: its type and subtype, parameters left out.
/// Compared without case (RFC 9110 §8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType<'a> {
    pub kind: &'a str,
    pub subtype: &'a str,
}

impl<'a> MediaType<'a> {
    /// The type of a `Content-Type` value; `None` unless it is `type/subtype`, each a token
    /// (RFC 9110 §5.6.2), before any parameters.
    pub fn parse(content_type: &'a str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("");
        let (kind, subtype) = essence.trim_matches([' ', '\t']).split_once('/')?;
        (token(kind) && token(subtype)).then_some(Self { kind, subtype })
    }
}

impl fmt::Display for MediaType<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.subtype)
    }
}

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether masking reads the type as JSON: a subtype `json`, `x-json` or with the suffix
/// `+json` (RFC 6839), whatever the type (`text/json` too).
pub fn is_json(t: MediaType<'_>) -> bool {
    let s = t.subtype.as_bytes();
    s.eq_ignore_ascii_case(b"json")
        || s.eq_ignore_ascii_case(b"x-json")
        || s.len()
            .checked_sub(5)
            .and_then(|at| s.get(at..))
            .is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"))
}

/// The types whose every subtype is text.
const TEXT_KINDS: [&str; 3] = ["text", "multipart", "message"];

/// Subtypes holding one of these are text renderings of data, under any type: XML and
/// `+xml`, JSON that masking does not read as JSON (`x-ndjson`, `json-seq`, `jsonp`),
/// YAML, CSV and TSV, HTML, scripts, form encoding.
const TEXT_SUBTYPES: [&str; 16] = [
    "xml",
    "json",
    "yaml",
    "csv",
    "tab-separated-values",
    "html",
    "sgml",
    "javascript",
    "ecmascript",
    "x-www-form-urlencoded",
    "toml",
    "graphql",
    "sql",
    "rtf",
    "x-sh",
    "tex",
];

/// Whether the type is text a caller reads values from (`text/*`, XML, CSV, YAML, HTML,
/// form encoding, scripts, multipart): such a type passes only when a profile names it.
pub fn is_text(t: MediaType<'_>) -> bool {
    TEXT_KINDS.iter().any(|k| t.kind.eq_ignore_ascii_case(k))
        || TEXT_SUBTYPES
            .iter()
            .any(|s| contains_ignore_case(t.subtype, s))
}

/// One entry of `pass_types`: a type (`application/pdf`) or a range of one type's
/// subtypes (`image/*`), lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    kind: String,
    /// `None` for `*`.
    subtype: Option<String>,
}

/// Why a `pass_types` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaRangeError {
    #[error("write a media type, like \"application/pdf\", or a range, like \"image/*\"")]
    NotAType,
    #[error("write the type without parameters: it passes whatever its parameters")]
    Parameters,
    #[error(
        "name the types: every type would include text renderings of the data (HTML, CSV, XML)"
    )]
    Everything,
    #[error("JSON is always masked, never passed")]
    Json,
    #[error("a text type passes only when named, like \"text/csv\"")]
    TextRange,
}

impl MediaRange {
    /// A `pass_types` entry: `type/subtype` or `type/*`. Refused: parameters, `*/*`, a JSON
    /// type, and a range of text types (`text/*`).
    pub fn parse(s: &str) -> Result<Self, MediaRangeError> {
        if s.contains(';') {
            return Err(MediaRangeError::Parameters);
        }
        let (kind, subtype) = s.split_once('/').ok_or(MediaRangeError::NotAType)?;
        if kind == "*" {
            return Err(MediaRangeError::Everything);
        }
        if !token(kind) || kind.contains('*') || !token(subtype) {
            return Err(MediaRangeError::NotAType);
        }
        let kind = kind.to_ascii_lowercase();
        if subtype == "*" {
            if TEXT_KINDS.contains(&kind.as_str()) {
                return Err(MediaRangeError::TextRange);
            }
            return Ok(Self {
                kind,
                subtype: None,
            });
        }
        if subtype.contains('*') {
            return Err(MediaRangeError::NotAType);
        }
        let subtype = subtype.to_ascii_lowercase();
        if is_json(MediaType {
            kind: &kind,
            subtype: &subtype,
        }) {
            return Err(MediaRangeError::Json);
        }
        Ok(Self {
            kind,
            subtype: Some(subtype),
        })
    }

    /// Whether it names `t`: the same type, or a range over its type when `t` is not text.
    pub fn matches(&self, t: MediaType<'_>) -> bool {
        if !t.kind.eq_ignore_ascii_case(&self.kind) {
            return false;
        }
        match &self.subtype {
            Some(s) => t.subtype.eq_ignore_ascii_case(s),
            None => !is_text(t),
        }
    }

    fn range(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            subtype: None,
        }
    }

    fn exact(kind: &str, subtype: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            subtype: Some(subtype.to_owned()),
        }
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.kind,
            self.subtype.as_deref().unwrap_or("*")
        )
    }
}

/// The types a profile with `non_json = "pass"` lets through untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassTypes {
    ranges: Vec<MediaRange>,
}

impl PassTypes {
    /// `pass_types` when a profile does not set it: binary media only.
    pub const DEFAULT: [&str; 3] = ["image/*", "video/*", "application/pdf"];

    pub fn new(ranges: Vec<MediaRange>) -> Self {
        Self { ranges }
    }

    /// Whether an answer of type `t` passes.
    pub fn passes(&self, t: MediaType<'_>) -> bool {
        !is_json(t) && self.ranges.iter().any(|r| r.matches(t))
    }

    pub fn ranges(&self) -> &[MediaRange] {
        &self.ranges
    }
}

impl Default for PassTypes {
    fn default() -> Self {
        Self::new(vec![
            MediaRange::range("image"),
            MediaRange::range("video"),
            MediaRange::exact("application", "pdf"),
        ])
    }
}

/// The type a body's first bytes show, for a body no `Content-Type` names: PDF, PNG,
/// JPEG, GIF, WebP, TIFF, the ISO media files (MP4, QuickTime, HEIC, AVIF) and
/// WebM/Matroska; `None` for anything else, text and JSON included.
pub fn sniff(body: &[u8]) -> Option<MediaType<'static>> {
    let t = |kind, subtype| Some(MediaType { kind, subtype });
    let at = |offset: usize, magic: &[u8]| body.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"%PDF-") {
        t("application", "pdf")
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        t("image", "png")
    } else if at(0, b"\xff\xd8\xff") {
        t("image", "jpeg")
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        t("image", "gif")
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        t("image", "webp")
    } else if at(0, b"II*\0") || at(0, b"MM\0*") {
        t("image", "tiff")
    } else if body.first() == Some(&0) && at(4, b"ftyp") {
        // An ISO base media file: its first box (a size under 16 MiB, so a first byte of
        // 0) names the brand.
        let brand = body.get(8..12).unwrap_or_default();
        match brand {
            b"heic" | b"heix" | b"mif1" | b"msf1" => t("image", "heic"),
            b"avif" | b"avis" => t("image", "avif"),
            b"qt  " => t("video", "quicktime"),
            _ => t("video", "mp4"),
        }
    } else if at(0, b"\x1a\x45\xdf\xa3") {
        let head = body.get(..64).unwrap_or(body);
        if head.windows(4).any(|w| w == b"webm") {
            t("video", "webm")
        } else {
            t("video", "x-matroska")
        }
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mt(s: &str) -> MediaType<'_> {
        MediaType::parse(s).unwrap_or(MediaType {
            kind: "",
            subtype: "",
        })
    }

    #[test]
    fn a_content_type_is_a_type_and_a_subtype_each_a_token() {
        let t = MediaType::parse(" Image/PNG ; q=1").unwrap();
        assert_eq!((t.kind, t.subtype), ("Image", "PNG"));
        for bad in [
            "",
            "image",
            "image/",
            "/png",
            "image/png, text/html",
            "image /png",
            "image/p\u{e9}ng",
        ] {
            assert_eq!(MediaType::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_default_passes_binary_media_and_no_text_rendering_of_the_data() {
        let d = PassTypes::default();
        for yes in [
            "image/png",
            "image/JPEG",
            "video/mp4",
            "application/pdf",
            "Application/PDF; name=x",
        ] {
            assert!(d.passes(mt(yes)), "{yes}");
        }
        for no in [
            "text/html",
            "text/html; charset=utf-8",
            "text/plain",
            "text/csv",
            "text/xml",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
            "application/x-www-form-urlencoded",
            "application/javascript",
            "application/yaml",
            "application/x-yaml",
            "application/x-ndjson",
            "application/json-seq",
            "application/octet-stream",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "multipart/form-data",
            "application/json",
            "application/problem+json",
        ] {
            assert!(!d.passes(mt(no)), "{no}");
        }
    }

    #[test]
    fn a_text_type_passes_when_named_and_never_through_a_range() {
        let p = |list: &[&str]| {
            PassTypes::new(list.iter().map(|s| MediaRange::parse(s).unwrap()).collect())
        };
        let csv = p(&["text/csv", "image/svg+xml"]);
        assert!(csv.passes(mt("Text/CSV; charset=utf-8")));
        assert!(csv.passes(mt("image/svg+xml")));
        assert!(!csv.passes(mt("text/html")));
        let apps = p(&["application/*"]);
        assert!(apps.passes(mt("application/zip")));
        for no in [
            "application/xml",
            "application/soap+xml",
            "application/x-www-form-urlencoded",
            "application/javascript",
            "application/yaml",
            "application/json",
        ] {
            assert!(!apps.passes(mt(no)), "{no}");
        }
    }

    #[test]
    fn pass_types_entries_that_would_let_text_or_json_through_are_refused() {
        use MediaRangeError::*;
        for (s, e) in [
            ("*/*", Everything),
            ("*/png", Everything),
            ("text/*", TextRange),
            ("Multipart/*", TextRange),
            ("application/json", Json),
            ("application/problem+json", Json),
            ("text/json", Json),
            ("text/csv; charset=utf-8", Parameters),
            ("pdf", NotAType),
            ("image/", NotAType),
            ("image/pn*", NotAType),
            ("im*ge/png", NotAType),
            ("image/png ", NotAType),
        ] {
            assert_eq!(MediaRange::parse(s), Err(e), "{s}");
        }
        let r = MediaRange::parse("Image/*").unwrap();
        assert_eq!(r.to_string(), "image/*");
        assert_eq!(
            MediaRange::parse("TEXT/CSV").unwrap().to_string(),
            "text/csv"
        );
    }

    #[test]
    fn a_body_without_a_type_is_told_by_its_first_bytes_and_text_is_none() {
        let cases: [(&[u8], Option<&str>); 16] = [
            (b"%PDF-1.7\n%\xe2\xe3", Some("application/pdf")),
            (b"\x89PNG\r\n\x1a\n\0\0", Some("image/png")),
            (b"\xff\xd8\xff\xe0", Some("image/jpeg")),
            (b"GIF89a\x01\0", Some("image/gif")),
            (b"RIFF\x10\0\0\0WEBPVP8 ", Some("image/webp")),
            (b"II*\0\x08\0", Some("image/tiff")),
            (b"\0\0\0\x18ftypmp42\0\0", Some("video/mp4")),
            (b"\0\0\0\x18ftypheic\0\0", Some("image/heic")),
            (b"\x1a\x45\xdf\xa3\x9f\x42\x82\x84webm", Some("video/webm")),
            (br#"{"document_number":"BAA000589"}"#, None),
            (b"[1]", None),
            (b"<!DOCTYPE html><html>", None),
            (b"document_number,full_name\n", None),
            (b"<?xml version=\"1.0\"?>", None),
            (b"abcdftypmp42", None),
            (b"", None),
        ];
        for (body, expected) in cases {
            assert_eq!(
                sniff(body).map(|t| t.to_string()).as_deref(),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
