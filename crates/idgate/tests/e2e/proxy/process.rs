//! What the serving process keeps to itself: no core dump, whatever the host's limits.

use crate::support::*;

use super::Setup;

/// A crash must not write the provider's key, the Vault token or the SVID's private key to
/// a core file or a core handler: the gateway sets its own core size to zero (and makes
/// itself not dumpable, which `/proc` does not show to root; see `keep_memory_private`).
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
