//! The client over loopback sockets.

use std::collections::VecDeque;
use std::convert::Infallible;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::{Body, Frame};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::conn::*;
use crate::limit::ConnLimit;
use crate::parse::HeadParser;
use crate::write::*;
use crate::*;

/// A caller's body: these data frames, then its end.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|d| Ok(Frame::data(d))))
    }
}

/// A connection to a loopback peer, and the peer's end.
/// A pool that keeps idle connections and never connects anywhere.
fn idle_pool() -> Pool {
    Pool::new(PoolConfig {
        address: "127.0.0.1:9".to_owned(),
        tls: None,
        host: "x".to_owned(),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_idle: 4,
        body_read_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(5),
        limit: Arc::new(ConnLimit::new(4, 0, Duration::from_secs(1))),
    })
}

async fn pair() -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let io = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (peer, _) = listener.accept().await.unwrap();
    let (r, w) = io.into_split();
    let conn = Conn {
        io: Io {
            r: ReadIo::Plain(r),
            w: WriteIo::Plain(w),
        },
        buf: BytesMut::new(),
        out: Zeroizing::new(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n".to_vec()),
        idle_since: Instant::now(),
        _slot: None,
    };
    (conn, peer)
}

#[tokio::test]
async fn debug_output_shows_no_request_head_and_no_body() {
    let (mut conn, _peer) = pair().await;
    conn.out
        .extend_from_slice(b"x-provider-token: s3cr3t-provider-key\r\n");
    conn.buf
        .extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nname=Ana");
    let shown = format!("{conn:?}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("Ana"),
        "{shown}"
    );
    let bodies = format!(
        "{:?} {:?}",
        RequestBody::Buffered(Bytes::from_static(b"dob=1990-01-01")),
        ResponseBody::full(Bytes::from_static(b"name=Ana"))
    );
    assert!(
        !bodies.contains("1990") && !bodies.contains("Ana"),
        "{bodies}"
    );
}

#[tokio::test]
async fn a_body_that_does_not_match_its_announced_length_fails_the_request() {
    for (announced, frames) in [(100, vec!["0123456789"]), (5, vec!["0123", "456789"])] {
        let (mut conn, _peer) = pair().await;
        let body = Frames(
            frames
                .into_iter()
                .map(|f: &'static str| Bytes::from_static(f.as_bytes()))
                .collect(),
        );
        let r = write_streamed(
            &mut conn,
            &mut HeadParser::new(),
            ReqFraming::Length(announced),
            body,
        )
        .await;
        assert!(matches!(r, Err(Error::BodyLength)), "{announced}: {r:?}");
    }
    let (mut conn, _peer) = pair().await;
    let body = Frames([Bytes::from_static(b"0123456789")].into());
    let r = write_streamed(
        &mut conn,
        &mut HeadParser::new(),
        ReqFraming::Length(10),
        body,
    )
    .await;
    assert!(matches!(r, Ok(Sent::Whole)), "{r:?}");
}

#[tokio::test]
async fn an_answer_before_the_body_is_sent_stops_the_sending() {
    let (mut conn, mut peer) = pair().await;
    // The peer answers at once and never reads: 64 MiB cannot fit in socket buffers.
    peer.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mib = Bytes::from(vec![0u8; 1 << 20]);
    let body = Frames(std::iter::repeat_n(mib, 64).collect());
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        write_streamed(
            &mut conn,
            &mut HeadParser::new(),
            ReqFraming::Length(64 << 20),
            body,
        ),
    )
    .await
    .expect("the sending was not stopped by the answer");
    assert!(matches!(r, Ok(Sent::Cut)), "{r:?}");
    assert!(conn.buf.starts_with(b"HTTP/1.1 413"));
}

#[tokio::test]
async fn interim_answers_during_an_upload_do_not_stop_it() {
    for interim in [
        &b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n"[..],
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
    ] {
        let (mut conn, mut peer) = pair().await;
        let head_len = conn.out.len();
        // 8 MiB cannot fit in socket buffers: the sending waits while the interim
        // answer arrives, and the peer reads it all only afterwards.
        let total = 8 << 20;
        let reader = tokio::spawn(async move {
            peer.write_all(interim).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = 0;
            let mut chunk = vec![0u8; 1 << 16];
            while got < head_len + total {
                let n = tokio::io::AsyncReadExt::read(&mut peer, &mut chunk)
                    .await
                    .unwrap();
                assert!(n > 0, "the upload stopped after {got} bytes");
                got += n;
            }
            peer
        });
        let mib = Bytes::from(vec![7u8; 1 << 20]);
        let body = Frames(std::iter::repeat_n(mib, 8).collect());
        let mut head = HeadParser::new();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            write_streamed(&mut conn, &mut head, ReqFraming::Length(total as u64), body),
        )
        .await
        .expect("the upload stalled");
        assert!(matches!(r, Ok(Sent::Whole)), "{r:?}");
        let _peer = reader.await.unwrap();
        assert!(head.saw_interim());
        // The parser goes on from where the upload left it.
        conn.buf
            .extend_from_slice(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
        let h = head.parse(&mut conn.buf, false).unwrap().unwrap();
        assert_eq!(h.status.as_u16(), 201);
    }
}

#[tokio::test]
async fn a_request_head_and_its_small_body_are_gathered_in_one_buffer_that_never_grows() {
    let (mut conn, mut peer) = pair().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-provider-token",
        http::HeaderValue::from_str(&"s3cr3t".repeat(500)).unwrap(),
    );
    let body = Bytes::from(vec![b'b'; 20_000]);
    let request = RequestHead {
        method: &Method::POST,
        path_and_query: "/v1/check",
        host: "provider.example",
        headers: &headers,
        framing: ReqFraming::Length(body.len() as u64),
    };
    let body = RequestBody::Buffered(body);
    request.write(&mut conn.out, &body);
    // Growing from here on could free a copy of the head without zeroing it.
    let total = conn.out.len() + 20_000;
    let (at, room) = (conn.out.as_ptr(), conn.out.capacity());
    assert!(room >= total, "room for {room} bytes of {total}");
    let r = write_request(&mut conn, &mut HeadParser::new(), request.framing, body).await;
    assert!(matches!(r, Ok(Sent::Whole)), "{r:?}");
    assert_eq!(
        (conn.out.as_ptr(), conn.out.capacity()),
        (at, room),
        "the buffer holding the head grew"
    );
    let mut got = vec![0u8; total];
    tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
        .await
        .unwrap();
    assert!(got.starts_with(b"POST /v1/check HTTP/1.1\r\nhost: provider.example\r\n"));
    assert!(got.ends_with(&[b'b'; 20_000]));
}

#[tokio::test]
async fn an_idle_connection_keeps_no_request_head() {
    let (mut conn, _peer) = pair().await;
    conn.out
        .extend_from_slice(b"x-provider-token: s3cr3t-provider-key\r\n\r\n");
    let pool = idle_pool();
    pool.inner.checkin(conn, true);
    let conn = pool.inner.checkout().expect("the connection was pooled");
    assert!(conn.out.is_empty(), "{} bytes kept", conn.out.len());
}

#[tokio::test]
async fn bytes_that_arrive_on_an_idle_connection_take_it_out_of_the_pool() {
    let (conn, mut peer) = pair().await;
    let pool = idle_pool();
    pool.inner.checkin(conn, true);
    // The late rest of an answer, arriving without the task yielding in between: the
    // runtime has not yet seen it, the socket has.
    peer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlate!")
        .await
        .unwrap();
    peer.flush().await.unwrap();
    // Until the kernel holds the bytes on the pooled end: asked of the kernel, without the
    // runtime polling the socket (a loaded machine may deliver them late).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pool.inner.idle().iter().all(|c| c.io.r.bytes_waiting()) {
        assert!(
            Instant::now() < deadline,
            "the bytes never reached the socket"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(pool.inner.checkout().is_none());
}
