//! What the serving process keeps to itself: no core dump, whatever the host's limits, and
//! no memory for another process of the same user to read.

use std::os::unix::fs::MetadataExt;

use crate::support::*;

use super::Setup;

/// A crash must not write the provider's key, the Vault token or the SVID's private key to
/// a core file or a core handler: the gateway sets its own core size to zero.
#[tokio::test]
async fn the_serving_gateway_writes_no_core_dump() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.gw.child.id())).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or_else(|| panic!("no core size in /proc/PID/limits:\n{limits}"));
        let fields: Vec<&str> = core.split_whitespace().collect();
        // "Max core file size  SOFT  HARD  bytes"
        assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    })
    .await
}

/// The gateway makes itself not dumpable, so no other process of its user can attach to it
/// or read its memory and environment. The kernel shows it in the owner of the files in
/// `/proc/PID`: root's for a process that is not dumpable, the process's own user's otherwise. Under
/// root the two are the same, so a test running as root starts the gateway as `nobody`.
#[tokio::test]
async fn the_serving_gateway_is_not_dumpable() {
    within(async {
        let pki = Pki::default_pki();
        let config = base_config(&pki);
        let gw = if rustix::process::geteuid().is_root() {
            chown_tree(pki.path(), NOBODY);
            Gateway::start_as(&config, &[], NOBODY).await
        } else {
            Gateway::start(&config, &[]).await
        };
        let pid = gw.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no Uid in /proc/{pid}/status:\n{status}"));
        assert_ne!(
            uid, 0,
            "the gateway runs as root: its dumpability cannot be seen"
        );
        // The directory itself keeps the process's owner: `ps` reads the user from it.
        for file in ["environ", "mem"] {
            let path = format!("/proc/{pid}/{file}");
            let owner = std::fs::metadata(&path).unwrap().uid();
            assert_eq!(
                owner, 0,
                "{path} is owned by {owner}: the gateway is dumpable"
            );
        }
    })
    .await
}
