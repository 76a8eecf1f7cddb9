//! The admin listener against DNS rebinding: a web page on the operator's machine can point
//! a name it controls at 127.0.0.1, but the browser then sends that name as `Host`. The
//! listener answers an IP address or `localhost` as `Host` and refuses any other name
//! (unless it is in `admin.allowed_hosts`) with a 421 problem that does not repeat it, and
//! its warning does not either.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::assert_eventually;
use crate::support::*;

/// `GET /metrics` with the header field `host` on a connection of its own to the admin
/// listener on `port`: (status, content type, body).
async fn metrics_for_host(port: u16, host: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).await.unwrap();
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[tokio::test]
async fn admin_metrics_are_refused_421_to_a_rebound_host_name_and_served_to_an_ip_host() {
    within(async {
        let pki = Pki::default_pki();
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("provider", "http://127.0.0.1:9"))
            .route(RouteSpec::get("r", "/r", "provider"));
        let gw = Gateway::start(&config, &[]).await;
        let port = gw.admin_port;

        let (status, content_type, body) =
            metrics_for_host(port, &format!("evil.example:{port}")).await;
        assert_eq!(status, 421, "{body}");
        assert_eq!(content_type, "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            problem["type"],
            "https://idgate.dev/problems/misdirected-request"
        );
        assert_eq!(problem["status"], 421);
        assert!(!body.contains("evil.example"), "{body}");
        assert!(!body.contains("idgate_"), "metrics in the refusal: {body}");

        for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let (status, content_type, body) = metrics_for_host(port, &host).await;
            assert_eq!(status, 200, "{host}: {body}");
            assert!(
                content_type.starts_with("application/openmetrics-text"),
                "{host}: {content_type}"
            );
            assert!(
                body.contains("idgate_access_log_dropped_total"),
                "{host}: {body}"
            );
        }

        // The refusal is logged as a warning that names the client's address and why,
        // never the Host it sent.
        let warning = "admin request refused: its Host is not an IP address, localhost or a name in admin.allowed_hosts";
        assert_eventually!(
            !log_lines(&gw, "idgate_proxy::admin", warning).is_empty(),
            "no warning for the refused Host; output:\n{}",
            gw.output()
        );
        let lines = log_lines(&gw, "idgate_proxy::admin", warning);
        assert_eq!(lines[0]["level"], "WARN", "{:?}", lines[0]);
        assert_eq!(lines[0]["remote"], "127.0.0.1", "{:?}", lines[0]);
        assert!(
            !gw.output().contains("evil.example"),
            "the Host sent is in the log:\n{}",
            gw.output()
        );
    })
    .await
}
