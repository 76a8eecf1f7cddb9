//! The memory budget for buffered request bodies (256 MiB for all of them at once) over real
//! sockets: a body takes its share as it arrives, so callers that announce a body and stall
//! hold next to nothing, and a genuine webhook is still read while they wait.

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use crate::webhooks::*;

/// The largest body a webhook endpoint may take: 16 of them fill the budget.
const WEBHOOK_LIMIT: i64 = 16 * 1024 * 1024;

/// Bodies held back at once: together their limits are half again the budget.
const STALLED: usize = 24;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// The head of a chunked POST to the webhook endpoint, with no length and
/// `Expect: 100-continue`: the gateway's `100 Continue` says it has begun to read the body.
async fn stalled_upload(client: &Client) -> Tls {
    let tcp = TcpStream::connect(("127.0.0.1", client.port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// The next response head on `tls`.
async fn response_head(tls: &mut Tls) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_does_not_hold_the_body_budget_of_other_callers() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let mut limit = toml::Table::new();
        limit.insert("max_body_bytes".into(), WEBHOOK_LIMIT.into());
        let gw = Gateway::start(&webhook_config(&pki, dir.path(), &sub.url(), limit), &[]).await;
        let client = provider_client(&pki, gw.port);

        // Each announces a body it may make as large as the limit, sends a little and
        // stalls, being read all the while.
        let mut stalled = Vec::with_capacity(STALLED);
        for n in 0..STALLED {
            let mut tls = stalled_upload(&client).await;
            let head = response_head(&mut tls).await;
            assert!(
                head.starts_with("HTTP/1.1 100 "),
                "upload {n} was not read (its limit and those before it fill the budget \
                 only if each holds its limit): {head:?}"
            );
            tls.write_all(b"400\r\n").await.unwrap();
            tls.write_all(&[b' '; 1024]).await.unwrap();
            tls.flush().await.unwrap();
            stalled.push(tls);
        }

        // A genuine event is read, verified and kept meanwhile.
        let event = envelope("evt-while-stalled", "sess-1", 1, now_secs());
        let r = post_signed(&client, DIDIT_SECRET, &event).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        drop(stalled);
    })
    .await;
}
