//! One scripted hostile upstream, every case run against both HTTP/1.1 clients an upstream
//! can have: the gateway's own (`client = "native"`, the default) and hyper's
//! (`client = "hyper"`). In each case one caller sends a request that the upstream answers
//! in a hostile or unusual way; a moment later a second caller sends a plain `GET` to the
//! same upstream.
//!
//! The gateway's own client must be safe in every case: the second caller gets the answer
//! to its own request, and the upstream never reads a request that no caller sent. And it
//! must never be less strict than hyper's: an answer hyper refuses, it refuses; a
//! connection hyper does not reuse, it does not reuse. Where it is stricter, that is fine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;
use crate::upstream_h1::{Raw, ok, read_body, read_head};

const TOKEN: &str = "hostile-upstream-token-51d7";
const TOKEN_ENV: &str = "TEST_HOSTILE_UPSTREAM_TOKEN";
/// A request body that is itself the start of a request head: an upstream that does not
/// read it takes the next request on its connection as the rest of this head.
const SMUGGLING_BODY: &str = "GET /t/smuggled HTTP/1.1\r\nx-ignore: ";
/// An upload larger than socket buffers hold, so that it is still going out when the
/// upstream's interim answer arrives.
const UPLOAD: usize = 16 << 20;

/// What the upstream does with the first request it receives; later ones are answered
/// plainly, with their own target in the body.
#[derive(Clone, Copy)]
enum Act {
    /// Reads the whole request, then sends the bytes.
    Answer(&'static [u8]),
    /// Reads the whole request, sends the bytes and closes.
    AnswerAndClose(&'static [u8]),
    /// Answers right after the head and never reads the body, which stays in its buffer as
    /// the start of the next request.
    AnswerIgnoringBody(&'static [u8]),
    /// Reads the whole request, answers, and sends the second bytes 300 ms later.
    AnswerThenLate(&'static [u8], &'static [u8]),
    /// Sends the interim heads right after the request head, reads the body 100 ms later,
    /// then answers `201` with the number of body bytes it read.
    InterimDuringUpload(&'static [u8]),
}

#[derive(Clone, Copy)]
enum Body {
    Empty,
    Smuggling,
    Upload,
}

struct Case {
    name: &'static str,
    method: &'static str,
    body: Body,
    act: Act,
    /// For an answer that must reach the caller: its status, through the own client.
    passes: Option<u16>,
}

const fn case(name: &'static str, act: Act) -> Case {
    Case {
        name,
        method: "GET",
        body: Body::Empty,
        act,
        passes: None,
    }
}

const CASES: &[Case] = &[
    Case {
        method: "POST",
        body: Body::Smuggling,
        passes: Some(401),
        ..case(
            "an early answer to a body the upstream never reads",
            Act::AnswerIgnoringBody(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"),
        )
    },
    Case {
        method: "POST",
        body: Body::Upload,
        passes: Some(201),
        ..case(
            "interim answers while the body is being sent",
            Act::InterimDuringUpload(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n",
            ),
        )
    },
    Case {
        passes: Some(204),
        ..case(
            "a late answer after a 204",
            Act::AnswerThenLate(
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled!",
            ),
        )
    },
    Case {
        passes: Some(204),
        ..case(
            "a 204 announcing a body sent late",
            Act::AnswerThenLate(
                b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                b"smuggled!",
            ),
        )
    },
    Case {
        passes: Some(204),
        ..case(
            "a body on a 204",
            Act::Answer(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\nsmuggled!"),
        )
    },
    Case {
        method: "HEAD",
        passes: Some(200),
        ..case(
            "a body on the answer to HEAD",
            Act::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled!"),
        )
    },
    Case {
        passes: Some(200),
        ..case(
            "two answers to one request",
            Act::Answer(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled!",
            ),
        )
    },
    Case {
        passes: Some(200),
        ..case(
            "chunked with an extension and trailers",
            Act::Answer(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=\"a\"\r\nhello\r\n0\r\nx-trailer: dropped\r\n\r\n",
            ),
        )
    },
    case(
        "CL.TE: Content-Length and chunked",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled!",
        ),
    ),
    case(
        "TE.CL: chunked and Content-Length",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        ),
    ),
    case(
        "a duplicate Content-Length",
        Act::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"),
    ),
    case(
        "differing Content-Lengths",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 11\r\n\r\noksmuggled!",
        ),
    ),
    case(
        "a Content-Length list that differs",
        Act::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 11\r\n\r\noksmuggled!"),
    ),
    case(
        "a signed Content-Length",
        Act::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"),
    ),
    case(
        "obs-fold",
        Act::Answer(b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok"),
    ),
    case(
        "obs-fold hiding a Content-Length",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\nx-folded: a\r\n content-length: 11\r\ncontent-length: 2\r\n\r\noksmuggled!",
        ),
    ),
    case(
        "bare LF line ends",
        Act::Answer(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"),
    ),
    case(
        "a bare LF among CRLFs",
        Act::Answer(b"HTTP/1.1 200 OK\r\nx-a: b\ncontent-length: 2\r\n\r\nok"),
    ),
    case(
        "a bare CR inside a header",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\nx-a: b\rcontent-length: 11\r\ncontent-length: 2\r\n\r\noksmuggled!",
        ),
    ),
    case(
        "Transfer-Encoding: chunked, identity",
        Act::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
    ),
    case(
        "Transfer-Encoding: chunked, gzip",
        Act::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
    ),
    case(
        "Transfer-Encoding: identity",
        Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nok"),
    ),
    case(
        "a chunk size that overflows",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n",
        ),
    ),
    case(
        "NUL in a header value",
        Act::Answer(b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok"),
    ),
    case(
        "a space inside a header name",
        Act::Answer(b"HTTP/1.1 200 OK\r\nx-bad header: 1\r\ncontent-length: 2\r\n\r\nok"),
    ),
    case(
        "a space before the colon",
        Act::Answer(
            b"HTTP/1.1 200 OK\r\ncontent-length : 11\r\ncontent-length: 2\r\n\r\noksmuggled!",
        ),
    ),
    case(
        "a protocol switch never asked for",
        Act::AnswerAndClose(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n"),
    ),
    case(
        "not HTTP at all",
        Act::AnswerAndClose(b"NOT HTTP AT ALL\r\n\r\n"),
    ),
    case(
        "a body cut short",
        Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten.."),
    ),
];

/// One hostile upstream: its requests and connections.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Raw>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(act: Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, act, seen2.clone(), requests.clone()));
            }
        });
        Self {
            port,
            seen,
            connections,
            task,
        }
    }
}

async fn serve(
    mut tcp: TcpStream,
    act: Act,
    seen: Arc<Mutex<Vec<Raw>>>,
    requests: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(mut req) = read_head(&mut tcp, &mut buf).await else {
            return;
        };
        let hostile = (requests.fetch_add(1, Ordering::SeqCst) == 0).then_some(act);
        match hostile {
            Some(Act::AnswerIgnoringBody(bytes)) => {
                seen.lock().unwrap().push(req);
                if tcp.write_all(bytes).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Act::InterimDuringUpload(interim)) => {
                if tcp.write_all(interim).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {}
        }
        if read_body(&mut tcp, &mut buf, &mut req).await.is_none() {
            return;
        }
        let (target, len) = (req.target.clone(), req.body.len());
        seen.lock().unwrap().push(req);
        let written = match hostile {
            None => tcp.write_all(&ok(&format!("for {target}"))).await,
            Some(Act::Answer(bytes)) => tcp.write_all(bytes).await,
            Some(Act::AnswerAndClose(bytes)) => {
                let _ = tcp.write_all(bytes).await;
                return;
            }
            Some(Act::AnswerThenLate(bytes, late)) => {
                let _ = tcp.write_all(bytes).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                tcp.write_all(late).await
            }
            Some(Act::InterimDuringUpload(_)) => {
                let body = format!("got {len}");
                let answer = format!(
                    "HTTP/1.1 201 Created\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(answer.as_bytes()).await
            }
            Some(Act::AnswerIgnoringBody(_)) => unreachable!(),
        };
        if written.is_err() {
            return;
        }
    }
}

/// What one case did through one client.
#[derive(Debug)]
struct Outcome {
    /// The first caller's answer: status, whether it is the gateway's own problem, body;
    /// or how it broke off.
    first: Result<(u16, bool, Vec<u8>), String>,
    /// The second caller's answer.
    next: Result<(u16, Vec<u8>), String>,
    /// Targets of the requests the upstream read, and whether any had a request swallowed
    /// into a header.
    targets: Vec<String>,
    swallowed: bool,
    connections: usize,
    prefix: String,
}

impl Outcome {
    /// The first answer did not reach the caller whole: refused with a problem, or cut off.
    fn refused(&self) -> bool {
        self.first.as_ref().map_or(true, |(_, problem, _)| *problem)
    }

    /// The second request went over the first one's upstream connection.
    fn pooled(&self) -> bool {
        self.connections == 1
    }

    /// Why the exchange was not safe, if it was not.
    fn unsafe_because(&self) -> Option<String> {
        let next = format!("{}/next", self.prefix);
        let expected = format!("for {next}");
        match &self.next {
            Ok((200, body)) if body == expected.as_bytes() => {}
            other => {
                return Some(format!(
                    "the second caller got {:?} instead of its own answer",
                    other
                        .as_ref()
                        .map(|(s, b)| (s, String::from_utf8_lossy(b).into_owned()))
                ));
            }
        }
        let first = format!("{}/first", self.prefix);
        if self.swallowed || self.targets.iter().any(|t| *t != first && *t != next) {
            return Some(format!(
                "the upstream read requests no caller sent: {:?}",
                self.targets
            ));
        }
        None
    }

    fn summary(&self) -> String {
        let first = match &self.first {
            Ok((status, true, _)) => format!("refused {status}"),
            Ok((status, false, _)) => format!("passed {status}"),
            Err(_) => "cut off".to_owned(),
        };
        format!(
            "{first}, {}, {}",
            if self.pooled() {
                "reused"
            } else {
                "not reused"
            },
            if self.unsafe_because().is_some() {
                "DESYNC"
            } else {
                "safe"
            }
        )
    }
}

async fn run(client: Client, case: &'static Case, prefix: String, upstream: Upstream) -> Outcome {
    let body = match case.body {
        Body::Empty => String::new(),
        Body::Smuggling => SMUGGLING_BODY.to_owned(),
        Body::Upload => "u".repeat(UPLOAD),
    };
    let first = client
        .send(case.method, &format!("{prefix}/first"), &[], &body)
        .await
        .map(|r| {
            let problem = r.header("content-type") == Some("application/problem+json");
            (r.status, problem, r.body.to_vec())
        });
    // Past the late bytes of the cases that send them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let next = client
        .get(&format!("{prefix}/next"))
        .await
        .map(|r| (r.status, r.body.to_vec()));
    let seen = upstream.seen.lock().unwrap().clone();
    Outcome {
        first,
        next,
        targets: seen.iter().map(|r| r.target.clone()).collect(),
        swallowed: seen
            .iter()
            .any(|r| r.header("x-ignore").is_some_and(|v| v.contains(TOKEN))),
        connections: upstream.connections.load(Ordering::SeqCst),
        prefix,
    }
}

#[tokio::test]
async fn the_own_client_is_never_less_safe_than_hypers_against_a_hostile_upstream() {
    within(async {
        let pki = Pki::default_pki();
        let mut config = base_config(&pki);
        let mut upstreams = Vec::new();
        for (i, case) in CASES.iter().enumerate() {
            for client in ["native", "hyper"] {
                let upstream = Upstream::start(case.act).await;
                let name = format!("{client}{i}");
                let mut spec =
                    UpstreamSpec::new(&name, &format!("http://127.0.0.1:{}", upstream.port))
                        .with("client", client)
                        // Room for the upload: bodies past max_body_bytes are refused.
                        .with("max_body_bytes", 2 * UPLOAD as i64)
                        .credential(CredentialSpec::header(
                            "x-provider-token",
                            &format!("env:{TOKEN_ENV}"),
                        ));
                spec.request_timeout = Some("5s".into());
                config = config.upstream(spec).route(RouteSpec::new(
                    &name,
                    &["GET", "HEAD", "POST"],
                    &format!("/{name}/{{*rest}}"),
                    &name,
                    &[ONBOARDING],
                ));
                upstreams.push((i, client, upstream));
            }
        }
        let gw = Gateway::start(&config, &[(TOKEN_ENV, TOKEN)]).await;
        let caller = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let runs: Vec<_> = upstreams
            .into_iter()
            .map(|(i, client, upstream)| {
                let caller = caller.clone();
                let task = tokio::spawn(run(caller, &CASES[i], format!("/{client}{i}"), upstream));
                (i, client, task)
            })
            .collect();
        let mut outcomes = std::collections::HashMap::new();
        for (i, client, task) in runs {
            outcomes.insert((i, client), task.await.unwrap());
        }

        let mut failures = Vec::new();
        for (i, case) in CASES.iter().enumerate() {
            let (own, hyper) = (&outcomes[&(i, "native")], &outcomes[&(i, "hyper")]);
            eprintln!(
                "{:<52} own: {:<36} hyper: {}",
                case.name,
                own.summary(),
                hyper.summary()
            );
            let mut fail = |why: String| failures.push(format!("{}: {why}", case.name));
            if let Some(why) = own.unsafe_because() {
                fail(why);
            }
            if let Some(status) = case.passes
                && !matches!(own.first, Ok((s, false, _)) if s == status)
            {
                let got = own.first.as_ref().map(|(s, problem, body)| {
                    (s, problem, String::from_utf8_lossy(body).into_owned())
                });
                fail(format!("the answer {status} did not pass: {got:?}"));
            }
            if hyper.refused() && !own.refused() {
                fail("hyper's client refused the answer, the own client passed it on".into());
            }
            if !hyper.pooled() && own.pooled() {
                fail("hyper's client did not reuse the connection, the own client did".into());
            }
        }
        assert!(
            failures.is_empty(),
            "{}\n{}",
            failures.join("\n"),
            gw.output()
        );
    })
    .await
}
