//! Network rules, the PROXY protocol from a load balancer, and the per-identity connection
//! cap, over real sockets: a test client binds its own loopback address (127.0.0.x) to be a
//! load balancer or a direct client, writes a PROXY header when it plays the balancer, then
//! does mutual TLS and HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::assert_eventually;
use crate::support::*;

const PATH: &str = "/v1/anything";

/// A TCP connection to the gateway from the loopback address `from`.
async fn tcp_from(from: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// From `from`: writes `header` (if any), then mutual TLS as `client` and one GET.
async fn get_via(
    client: &Client,
    from: &str,
    header: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut tcp = tcp_from(from, client.port).await;
    if let Some(h) = header {
        tcp.write_all(h).await.map_err(|e| e.to_string())?;
    }
    let tls = tokio_rustls::TlsConnector::from(client.config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::get(PATH).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

fn v2_tcp6(src: &str) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    h.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    h.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    h
}

/// A gateway that takes PROXY headers from 127.0.0.1, passes the client's address on in
/// `x-forwarded-for`, and has `extra` in `[listener]`.
async fn behind_balancer(
    pki: &Pki,
    upstream: &TestUpstream,
    extra: toml::Table,
    network: Option<toml::Table>,
) -> Gateway {
    let mut listener_extra = toml::toml! {
        proxy_protocol = { from = ["127.0.0.1"], timeout = "500ms" }
    };
    listener_extra.extend(extra);
    let mut config = OneRoute {
        url: &upstream.url(false),
        upstream_extra: toml::toml! { forwarded_for = true },
        allow: &[ONBOARDING, FRONTEND],
        listener_extra,
        ..OneRoute::default()
    }
    .config(pki);
    if let Some(network) = network {
        config = config.section("network", network);
    }
    Gateway::start(&config, &[]).await
}

#[tokio::test]
async fn a_balancer_names_the_real_client_in_v1_and_v2_and_must_send_a_header() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = behind_balancer(&pki, &upstream, toml::Table::new(), None).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n";
        let (status, _) = get_via(&client, "127.0.0.1", Some(v1), &[]).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(upstream.last().headers["x-forwarded-for"], "192.0.2.7");

        let v2 = v2_tcp4([198, 51, 100, 9], 40001);
        let (status, _) = get_via(&client, "127.0.0.1", Some(&v2), &[]).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(upstream.last().headers["x-forwarded-for"], "198.51.100.9");

        let (status, _) = get_via(&client, "127.0.0.1", Some(&v2_tcp6("2001:db8::7")), &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(upstream.last().headers["x-forwarded-for"], "2001:db8::7");

        // The listed balancer without a header: refused (its ClientHello is no header).
        let bare = get_via(&client, "127.0.0.1", None, &[]).await;
        assert!(bare.is_err(), "served without a PROXY header: {bare:?}");
        // Malformed headers: refused, and the gateway goes on serving.
        for bad in [
            &b"PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 999.0.2.7 127.0.0.1 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        ] {
            let r = get_via(&client, "127.0.0.1", Some(bad), &[]).await;
            assert!(r.is_err(), "{bad:?} was served: {r:?}");
        }
        // From a peer that is not a balancer, a header is not accepted: it goes to TLS.
        let forged = get_via(&client, "127.0.0.2", Some(v1), &[]).await;
        assert!(forged.is_err(), "a forged header was accepted: {forged:?}");
        let (status, _) = get_via(&client, "127.0.0.2", None, &[]).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(upstream.last().headers["x-forwarded-for"], "127.0.0.2");

        // A header trickled past its timeout: closed before TLS.
        let mut slow = tcp_from("127.0.0.1", gw.port).await;
        slow.write_all(b"PROXY TCP4 192.0").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a slow header held its connection: {read:?}"
        );

        // The access log names the client the balancer named, not the balancer. Its lines
        // come through the access log's writer thread and a pipe: waited for.
        let remotes = || -> Vec<String> {
            log_lines(&gw, "idgate::access", "request")
                .iter()
                .filter_map(|l| l.get("remote").and_then(|r| r.as_str()).map(str::to_owned))
                .collect()
        };
        for client in ["192.0.2.7", "198.51.100.9", "2001:db8::7", "127.0.0.2"] {
            assert_eventually!(
                remotes().iter().any(|r| r == client),
                "{client}: {:?}",
                remotes()
            );
        }
        let remotes = remotes();
        assert!(!remotes.iter().any(|r| r == "127.0.0.1"), "{remotes:?}");

        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        for reason in ["proxy_header_malformed", "proxy_header_timeout"] {
            assert!(
                metrics.contains(&format!(
                    "idgate_connections_refused_total{{reason=\"{reason}\"}} "
                )),
                "{reason}: {metrics}"
            );
        }
        assert_eq!(
            get_via(&client, "127.0.0.1", Some(v1), &[])
                .await
                .unwrap()
                .0,
            200
        );
    })
    .await
}

#[tokio::test]
async fn network_rules_close_denied_clients_before_tls_and_routes_answer_403() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let network = toml::toml! {
            deny = ["127.0.0.3", "192.0.2.66/32"]
            deny_user_agents = ["sqlmap", "evil-scanner/*"]
        };
        let mut config = OneRoute {
            url: &upstream.url(false),
            allow: &[ONBOARDING, FRONTEND],
            listener_extra: toml::toml! {
                proxy_protocol = { from = ["127.0.0.1"] }
            },
            ..OneRoute::default()
        }
        .config(&pki)
        .section("network", network);
        config.routes[0].extra = toml::toml! {
            deny_cidrs = ["127.0.0.4"]
            deny_user_agents = ["curl/*"]
        };
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        // Denied globally: no handshake, directly or through the balancer.
        assert!(get_via(&client, "127.0.0.3", None, &[]).await.is_err());
        let header = b"PROXY TCP4 192.0.2.66 127.0.0.1 40000 443\r\n";
        assert!(
            get_via(&client, "127.0.0.1", Some(header), &[])
                .await
                .is_err()
        );
        // Denied on the route: 403 problem.
        let header = b"PROXY TCP4 127.0.0.4 127.0.0.1 40000 443\r\n";
        let (status, body) = get_via(&client, "127.0.0.1", Some(header), &[])
            .await
            .unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("forbidden-network"), "{body}");
        let direct = b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 443\r\n";
        for (ua, want) in [
            ("Mozilla/5.0 sqlmap/1.7", 403),
            ("evil-scanner/2", 403),
            ("curl/8.5.0", 403),
            ("my-service/1.0 (curl/8)", 200),
        ] {
            let (status, body) = get_via(&client, "127.0.0.1", Some(direct), &[("user-agent", ua)])
                .await
                .unwrap();
            assert_eq!(status, want, "{ua}: {body}");
        }
        assert_eq!(upstream.requests().len(), 1);
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains(r#"idgate_connections_refused_total{reason="network_deny"} 2"#),
            "{metrics}"
        );
    })
    .await
}

#[tokio::test]
async fn a_deny_rule_added_by_a_reload_reaches_connections_already_open() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut config = OneRoute {
            url: &upstream.url(false),
            allow: &[ONBOARDING],
            ..OneRoute::default()
        }
        .config(&pki);
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        // One keep-alive connection from 127.0.0.6, served before the rule exists.
        let tls = tokio_rustls::TlsConnector::from(client.config.clone())
            .connect(
                ServerName::try_from("localhost").unwrap(),
                tcp_from("127.0.0.6", gw.port).await,
            )
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let get = || {
            http::Request::get(PATH)
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let resp = send.send_request(get()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;

        config = config.section("network", toml::toml! { deny = ["127.0.0.6"] });
        std::fs::write(&gw.config_path, config.to_toml()).unwrap();
        gw.signal("HUP");
        assert_eventually!(
            gw.output().contains("configuration reloaded"),
            "{}",
            gw.output()
        );
        // The same connection's next request is refused by the new rule.
        let resp = send.send_request(get()).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("forbidden-network"));
        assert_eq!(
            upstream.requests().len(),
            1,
            "the refused request never went upstream"
        );
    })
    .await
}

#[tokio::test]
async fn one_identity_at_its_cap_does_not_lock_out_another_behind_the_same_balancer() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = behind_balancer(
            &pki,
            &upstream,
            toml::toml! {
                max_connections_per_ip = 3
                max_connections_per_identity = 3
            },
            None,
        )
        .await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);

        // The onboarding workload holds its three connections open, trickling nothing,
        // all through the one balancer address.
        let mut held = Vec::new();
        for i in 0..3u16 {
            let header = v2_tcp4([192, 0, 2, 10 + i as u8], 41000 + i);
            let mut tcp = tcp_from("127.0.0.1", gw.port).await;
            tcp.write_all(&header).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(onboarding.config.clone())
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            held.push(tls);
        }
        // Its fourth is closed right after the handshake.
        let fourth = get_via(
            &onboarding,
            "127.0.0.1",
            Some(&v2_tcp4([192, 0, 2, 20], 1)),
            &[],
        )
        .await;
        assert!(fourth.is_err(), "over its cap: {fourth:?}");
        // Another workload behind the same balancer is served: the balancer's address is
        // not counted, and its identity has its own share.
        for i in 0..3u8 {
            let (status, _) = get_via(
                &frontend,
                "127.0.0.1",
                Some(&v2_tcp4([192, 0, 2, 30 + i], 2)),
                &[],
            )
            .await
            .unwrap();
            assert_eq!(status, 200);
        }
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains(
                r#"idgate_connections_refused_total{reason="max_connections_per_identity"} "#
            ),
            "{metrics}"
        );
        drop(held);
        assert_eventually!(
            get_via(
                &onboarding,
                "127.0.0.1",
                Some(&v2_tcp4([192, 0, 2, 21], 3)),
                &[]
            )
            .await
            .is_ok_and(|(s, _)| s == 200),
            "a place freed is not available again"
        );
    })
    .await
}

#[test]
fn check_refuses_network_rules_and_caps_that_cannot_work() {
    let pki = Pki::default_pki();
    for (listener, network, route, key, reason) in [
        (
            toml::toml! { proxy_protocol = { from = [] } },
            toml::Table::new(),
            toml::Table::new(),
            "listener.proxy_protocol.from",
            "list the load balancers",
        ),
        (
            toml::toml! { proxy_protocol = { from = ["10.0.0.1/8"] } },
            toml::Table::new(),
            toml::Table::new(),
            "listener.proxy_protocol.from[0]",
            "bits set past its prefix length",
        ),
        (
            toml::toml! {
                max_connections = 10
                max_connections_per_identity = 11
            },
            toml::Table::new(),
            toml::Table::new(),
            "listener.max_connections_per_identity",
            "must not be more than listener.max_connections",
        ),
        (
            toml::toml! { max_header_count = 0 },
            toml::Table::new(),
            toml::Table::new(),
            "listener.max_header_count",
            "between 1 and 10000",
        ),
        (
            toml::Table::new(),
            toml::toml! { deny = ["10.0.0.0/8", "not-a-network"] },
            toml::Table::new(),
            "network.deny[1]",
            "not an address or a CIDR",
        ),
        (
            toml::Table::new(),
            toml::toml! { deny_user_agents = ["**"] },
            toml::Table::new(),
            "network.deny_user_agents[0]",
            "would refuse every caller",
        ),
        (
            toml::Table::new(),
            toml::Table::new(),
            toml::toml! { deny_user_agents = ["bad\tx"] },
            "routes[0].deny_user_agents[0]",
            "visible ASCII",
        ),
        (
            toml::Table::new(),
            toml::Table::new(),
            toml::toml! { allow_cidrs = ["::ffff:10.0.0.0/9"] },
            "routes[0].allow_cidrs[0]",
            "bits set past its prefix length",
        ),
        (
            toml::Table::new(),
            toml::Table::new(),
            toml::toml! { max_body_bytes = 0 },
            "routes[0].max_body_bytes",
            "must be more than zero",
        ),
    ] {
        let mut config = base_config(&pki)
            .upstream(UpstreamSpec::new("u", "http://127.0.0.1:9"))
            .route(RouteSpec::get("r", "/x", "u"));
        config.listener.extra = listener.clone();
        config.routes[0].extra = route.clone();
        if !network.is_empty() {
            config = config.section("network", network.clone());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        let (code, out, err) = run(std::process::Command::new(bin())
            .arg("check")
            .arg("--config")
            .arg(&path));
        let all = format!("{out}{err}");
        assert_eq!(code, 2, "{key}: {all}");
        assert!(
            all.contains(&format!("{key}: ")) && all.contains(reason),
            "{key}: {all}"
        );
    }
}
