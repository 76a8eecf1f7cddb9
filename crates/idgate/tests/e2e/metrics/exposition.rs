//! A strict reader of the OpenMetrics text the admin listener serves: every line must be
//! valid, every family must say its HELP and TYPE before its samples and appear once, every
//! sample must belong to its family's type, no series may appear twice, and a histogram's
//! buckets must add up. What it reads is kept for assertions by name and labels.

use std::collections::{BTreeMap, BTreeSet};

/// A series: the sample's name and its labels.
pub(super) type Series = (String, BTreeMap<String, String>);

/// What a scrape holds.
#[derive(Debug, Default)]
pub(super) struct Exposition {
    /// Family name → its type.
    pub(super) types: BTreeMap<String, String>,
    pub(super) samples: BTreeMap<Series, f64>,
}

impl Exposition {
    /// The value of the sample `name` with exactly these labels.
    pub(super) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// Every label value of every sample.
    pub(super) fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples
            .keys()
            .flat_map(|(_, labels)| labels.values().map(String::as_str))
    }

    /// The samples of `name`.
    pub(super) fn series_of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |((n, _), _)| n == name)
            .map(|((_, labels), v)| (labels, *v))
    }
}

fn valid_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// The suffixes a sample of a family of `kind` may add to the family's name.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" | "unknown" | "stateset" => &[""],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[],
    }
}

/// `{a="x",b="y"}` → the labels and what follows; label values unescaped.
fn labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = text.strip_prefix('{') else {
        return Ok((labels, text));
    };
    if let Some(after) = rest.strip_prefix('}') {
        return Ok((labels, after));
    }
    loop {
        let eq = rest.find('=').ok_or("a label without '='")?;
        let name = &rest[..eq];
        if !valid_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("a raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
                None => return Err("an unterminated label value".into()),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        rest = rest
            .strip_prefix(',')
            .ok_or("labels not separated by ','")?;
    }
}

fn number(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad number {text:?}")),
    }
}

/// Parses `text` strictly; the error names the line.
pub(super) fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition does not end with '# EOF'")?;
    let mut out = Exposition::default();
    // The family being read, and whether its HELP was seen; families already closed.
    let mut current: Option<(String, bool)> = None;
    let mut done = BTreeSet::new();
    for (n, line) in body.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
                return Err(fail("a comment that is not metadata".into()));
            };
            if !valid_name(name, true) {
                return Err(fail("bad family name".into()));
            }
            let new_family = current.as_ref().is_none_or(|(f, _)| f != name);
            if new_family {
                if let Some((f, _)) = current.take() {
                    done.insert(f);
                }
                if done.contains(name) || out.types.contains_key(name) {
                    return Err(fail("a family that appears twice".into()));
                }
                current = Some((name.to_owned(), false));
            }
            let Some((_, help)) = current.as_mut() else {
                unreachable!("a family was just set");
            };
            match (keyword, parts.next()) {
                ("HELP", Some(_)) if !*help => *help = true,
                ("TYPE", Some(kind)) if !suffixes(kind).is_empty() && *help => {
                    if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(fail("TYPE twice".into()));
                    }
                }
                ("UNIT", Some(_)) => {}
                _ => return Err(fail("bad or misplaced metadata (HELP, then TYPE)".into())),
            }
            continue;
        }
        let Some((family, _)) = &current else {
            return Err(fail("a sample before any family".into()));
        };
        let Some(kind) = out.types.get(family) else {
            return Err(fail("a sample of a family without TYPE".into()));
        };
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        let suffix = name
            .strip_prefix(family.as_str())
            .filter(|s| suffixes(kind).contains(s))
            .ok_or_else(|| fail(format!("not a sample of the {kind} {family}")))?;
        let (labels, rest) = labels(&line[name_end..]).map_err(fail)?;
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value".into()))?;
        if value.contains(' ') {
            return Err(fail(
                "a timestamp or exemplar, which idgate never writes".into(),
            ));
        }
        let value = number(value).map_err(fail)?;
        if (kind == "counter" || kind == "histogram") && (value.is_nan() || value < 0.0) {
            return Err(fail("a negative or NaN count".into()));
        }
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(fail("a bucket without le".into()));
        }
        if out
            .samples
            .insert((name.to_owned(), labels), value)
            .is_some()
        {
            return Err(fail("a series that appears twice".into()));
        }
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Each histogram series: cumulative buckets ending in `+Inf`, which equals `_count`.
fn check_histograms(out: &Exposition) -> Result<(), String> {
    for (family, _) in out.types.iter().filter(|(_, k)| *k == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for (labels, v) in out.series_of(&bucket) {
            let mut rest = labels.clone();
            let le = number(&rest.remove("le").unwrap_or_default())?;
            by_series.entry(rest).or_default().push((le, v));
        }
        for (labels, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{bucket}{labels:?}: buckets not cumulative"));
            }
            let last = buckets.last().filter(|(le, _)| le.is_infinite());
            let count = out
                .samples
                .get(&(format!("{family}_count"), labels.clone()));
            let sum = (format!("{family}_sum"), labels.clone());
            if last.map(|(_, v)| v) != count || !out.samples.contains_key(&sum) {
                return Err(format!(
                    "{family}{labels:?}: +Inf is not _count, or no _sum"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_reader_refuses_what_is_not_valid_exposition() {
    let good = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# EOF\n";
    let parsed = parse(good).unwrap();
    assert_eq!(parsed.value("a_b_total", &[("x", "1")]), Some(2.0));
    let histogram = "# HELP h H.\n# TYPE h histogram\nh_sum 1.5\nh_count 2\n\
                     h_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    assert!(parse(histogram).is_ok());
    for bad in [
        "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n",
        "# TYPE a_b counter\na_b_total 2\n# EOF\n",
        "# HELP a_b Things.\na_b_total 2\n# EOF\n",
        "# HELP a_b Things.\n# TYPE a_b counter\na_b 2\n# EOF\n",
        "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\na_b_total{x=\"1\"} 3\n# EOF\n",
        "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=1} 2\n# EOF\n",
        "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\",x=\"2\"} 2\n# EOF\n",
        "# HELP a_b Things.\n# TYPE a_b counter\na_b_total two\n# EOF\n",
        "# HELP a_b Things.\n# TYPE a_b counter\na_b_total -1\n# EOF\n",
        "# HELP a_b A.\n# TYPE a_b gauge\na_b 1\n# HELP a_b B.\n# TYPE a_b gauge\n# EOF\n",
        "# HELP h H.\n# TYPE h histogram\nh_sum 1\nh_count 3\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# HELP h H.\n# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"1.0\"} 2\n\
         h_bucket{le=\"+Inf\"} 1\n# EOF\n",
        "garbage\n# EOF\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad}");
    }
}
