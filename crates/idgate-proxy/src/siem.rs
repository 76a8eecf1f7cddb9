//! The SIEM export (`[siem]`): every line the audit trail writes goes on, as it is, to the
//! organisation's SIEM through [`idgate_siem::Exporter`]'s sinks. The exporter is fed by the
//! audit writer's thread and never makes it wait (its sinks buffer, drop and count).

use std::sync::Arc;

use idgate_audit::Export;
use idgate_config::Config;
use idgate_siem::Exporter;

/// The exporter as the audit trail's export hook.
pub(crate) struct SiemExport(Exporter);

impl Export for SiemExport {
    fn export(&self, line: &[u8]) {
        self.0.export(line);
    }
}

impl SiemExport {
    pub(crate) fn metrics(&self) -> &idgate_siem::SiemMetrics {
        self.0.metrics()
    }
}

/// Opens `[siem]`'s sinks (files, TLS material; on a blocking thread) and starts them; a
/// collector out of reach is not an error, its events wait in the sink's buffer.
pub(crate) async fn start(cfg: &Config) -> std::io::Result<Option<Arc<SiemExport>>> {
    let Some(siem) = cfg.siem.clone() else {
        return Ok(None);
    };
    let started = tokio::task::spawn_blocking(move || Exporter::start(&siem))
        .await
        .map_err(std::io::Error::other)?;
    let exporter =
        started.map_err(|e| std::io::Error::other(format!("{}: {e}", cfg.file.display())))?;
    tracing::info!(sinks = ?exporter, "SIEM export started");
    Ok(Some(Arc::new(SiemExport(exporter))))
}

/// Lets every sink write what it holds (at most `[siem] shutdown_timeout`), once the audit
/// trail is closed and has handed over its last lines.
pub(crate) async fn stop(export: Arc<SiemExport>) {
    match Arc::try_unwrap(export) {
        Ok(SiemExport(exporter)) => {
            let left = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
            match left {
                Ok(0) => tracing::info!("SIEM export closed"),
                Ok(n) => tracing::warn!(
                    unwritten = n,
                    "SIEM export closed with events its sinks could not write in time"
                ),
                Err(e) => tracing::warn!(error = %e, "SIEM export did not close"),
            }
        }
        // The audit writer did not finish (it was given up on): its sinks are closed without
        // waiting when the last holder lets go.
        Err(_) => tracing::warn!("SIEM export closed without waiting for its sinks"),
    }
}
