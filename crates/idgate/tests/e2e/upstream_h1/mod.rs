//! The gateway's HTTP/1.1 client, against an upstream scripted byte for byte over a raw
//! socket (cleartext, so the bytes are the test's own; the TLS hop is the same code over
//! rustls, and most other end-to-end tests go through it): body framing both ways, interim responses, HEAD,
//! connection reuse, an idle connection the upstream closed, and responses whose framing
//! could be read two ways.
//!
//! This module holds the scripted upstream the tests share; each submodule tests one concern.

mod connections;
mod request_bodies;
mod responses;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const TOKEN: &str = "h1-upstream-token-9c2e";
const TOKEN_ENV: &str = "TEST_H1_UPSTREAM_TOKEN";

/// A request as the upstream read it off the wire.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Raw {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the upstream does with a request: the bytes to send back, then whether to close.
#[derive(Clone)]
enum Answer {
    Send(Vec<u8>),
    SendAndClose(Vec<u8>),
    /// Sends the pieces with a pause between them, then keeps the connection.
    Trickle(Vec<Vec<u8>>),
    /// Sends the bytes, then one more byte (`.`) after each pause, for as long as the
    /// connection takes them.
    Drip(Vec<u8>, Duration),
    /// Closes the connection without a word.
    Close,
    /// Never answers.
    Hang,
}

type Script = Arc<dyn Fn(usize, &Raw) -> Answer + Send + Sync>;

/// An HTTP/1.1 upstream that reads requests strictly and answers from a script. `n` counts
/// requests over all connections.
struct RawUpstream {
    port: u16,
    /// Requests that arrived (the head; the body only when read before answering).
    seen: Arc<Mutex<Vec<Raw>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(script: impl Fn(usize, &Raw) -> Answer + Send + Sync + 'static) -> Self {
        Self::start_with(None, script).await
    }

    /// With `early`, the upstream answers a request `early` after its head, before reading
    /// its body, and then reads and drops the body as its Content-Length says, as an HTTP
    /// server keeping its connection in step must.
    async fn start_with(
        early: Option<Duration>,
        script: impl Fn(usize, &Raw) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns2.fetch_add(1, Ordering::SeqCst);
                let (script, seen, count) = (script.clone(), seen2.clone(), count.clone());
                tokio::spawn(serve(tcp, script, seen, count, early));
            }
        });
        Self {
            port,
            seen,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Raw> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut tcp: TcpStream,
    script: Script,
    seen: Arc<Mutex<Vec<Raw>>>,
    n: Arc<AtomicUsize>,
    early: Option<Duration>,
) {
    let mut buf = Vec::new();
    loop {
        let req = match early {
            None => read_request(&mut tcp, &mut buf).await,
            Some(_) => read_head(&mut tcp, &mut buf).await,
        };
        let Some(req) = req else {
            return;
        };
        seen.lock().unwrap().push(req.clone());
        let answer = script(n.fetch_add(1, Ordering::SeqCst), &req);
        if let Some(delay) = early {
            tokio::time::sleep(delay).await;
            if let Answer::Send(bytes) = &answer
                && tcp.write_all(bytes).await.is_err()
            {
                return;
            }
            // Now the body, to stay in step for the next request.
            let len: usize = req
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap());
            while buf.len() < len {
                if fill(&mut tcp, &mut buf).await.is_none() {
                    return;
                }
            }
            buf.drain(..len);
            continue;
        }
        match answer {
            Answer::Send(bytes) => {
                if tcp.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::SendAndClose(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                return;
            }
            Answer::Trickle(pieces) => {
                for p in pieces {
                    if tcp.write_all(&p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Answer::Drip(head, pause) => {
                if tcp.write_all(&head).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(pause).await;
                    if tcp.write_all(b".").await.is_err() {
                        return;
                    }
                }
            }
            Answer::Close => return,
            Answer::Hang => {
                tokio::time::sleep(TEST_LIMIT).await;
                return;
            }
        }
    }
}

/// Reads one request: the head, then a body framed by Content-Length or chunked.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Raw> {
    let mut raw = read_head(tcp, buf).await?;
    read_body(tcp, buf, &mut raw).await?;
    Some(raw)
}

pub(crate) async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Raw> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(tcp, buf).await?;
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, target) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.to_owned(), v.trim().to_owned())
        })
        .collect();
    Some(Raw {
        method,
        target,
        headers,
        body: Vec::new(),
    })
}

pub(crate) async fn read_body(tcp: &mut TcpStream, buf: &mut Vec<u8>, raw: &mut Raw) -> Option<()> {
    if raw.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(tcp, buf).await?;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16)
                .expect("chunk size");
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(tcp, buf).await?;
            }
            raw.body.extend_from_slice(&buf[..size]);
            assert_eq!(&buf[size..size + 2], b"\r\n", "chunk data ends with CRLF");
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = raw.header("content-length") {
        let len: usize = len.parse().expect("content-length");
        while buf.len() < len {
            fill(tcp, buf).await?;
        }
        raw.body = buf.drain(..len).collect();
    }
    Some(())
}

pub(crate) async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

pub(crate) fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A gateway with one route, `/{*rest}` for any of the usual methods, to `upstream`.
async fn gateway(pki: &Pki, upstream: &RawUpstream, extra: toml::Table) -> Gateway {
    OneRoute {
        url: &upstream.url(),
        upstream_extra: extra,
        credential: Some(CredentialSpec::header(
            "x-provider-token",
            &format!("env:{TOKEN_ENV}"),
        )),
        methods: &["GET", "HEAD", "POST", "PUT"],
        path: "/{*rest}",
        ..OneRoute::default()
    }
    .start(pki, &[(TOKEN_ENV, TOKEN)])
    .await
}

fn client(pki: &Pki, gw: &Gateway) -> Client {
    Client::new(pki, Some(ONBOARDING), gw.port, false)
}
