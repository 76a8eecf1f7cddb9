//! `idgate --help`: what idgate is and what each subcommand does.

use crate::support::idgate_cli;

/// The `Commands:` section of `idgate --help`: (name, one-line description), with wrapped
/// descriptions joined.
fn listed_subcommands(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let section = help
        .split_once("Commands:")
        .map_or("", |(_, rest)| rest)
        .split("\n\n")
        .next()
        .unwrap_or("");
    for line in section.lines().filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        match out.last_mut() {
            // A continuation of the previous description is indented further.
            Some((_, desc)) if indent > 2 => {
                desc.push(' ');
                desc.push_str(line.trim());
            }
            _ => {
                let (name, desc) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
                out.push((name.to_owned(), desc.trim().to_owned()));
            }
        }
    }
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn help_describes_idgate_and_each_subcommand() {
    let (code, out, err) = idgate_cli(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("identity-verification providers"),
        "idgate --help does not say what idgate is:\n{out}"
    );
    let listed = listed_subcommands(&out);
    for name in ["serve", "check", "dev-pki"] {
        assert!(
            listed.iter().any(|(n, _)| n == name),
            "idgate --help does not list {name}:\n{out}"
        );
    }
    // Every listed subcommand answers --help with the description it is listed with.
    for (name, desc) in listed.iter().filter(|(n, _)| n != "help") {
        assert!(
            !desc.is_empty(),
            "{name} is listed without a description:\n{out}"
        );
        let (code, sub, err) = idgate_cli(&[name, "--help"]);
        assert_eq!(code, 0, "idgate {name} --help: {err}");
        assert!(
            squash(&sub).contains(&squash(desc)),
            "idgate {name} --help does not describe itself as {desc:?}:\n{sub}"
        );
        assert!(sub.contains(&format!("Usage: idgate {name}")), "{sub}");
    }
    for (sub, words) in [
        ("serve", &["--config", "SIGTERM"][..]),
        ("check", &["--config", "Exits 0"][..]),
        ("dev-pki", &["--out", "--trust-domain", "--workload"][..]),
    ] {
        let (_, out, _) = idgate_cli(&[sub, "--help"]);
        for word in words {
            assert!(
                out.contains(word),
                "idgate {sub} --help lacks {word:?}:\n{out}"
            );
        }
    }
}
