//! Reading a PROXY protocol header off a load balancer's connection: exactly the header's
//! bytes and never one more, since the client's TLS ClientHello follows in the same stream.
//! The bytes are peeked first; only those the parser knows to be the header's are consumed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::proxy_protocol::{Addresses, MAX_LEN, ProxyHeaderError, parse};

/// Why a load balancer's connection was closed before TLS.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeaderError {
    #[error("no complete PROXY header within the timeout")]
    Timeout,
    #[error("closed before a complete PROXY header")]
    Closed,
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Malformed(#[from] ProxyHeaderError),
}

impl HeaderError {
    /// The metric's reason label.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "proxy_header_timeout",
            Self::Closed | Self::Io(_) => "proxy_header_closed",
            Self::Malformed(_) => "proxy_header_malformed",
        }
    }
}

/// Reads the header within `timeout` and returns the client's address: the one the header
/// names, or `peer` itself when it names none (`LOCAL`, `UNKNOWN`).
pub(super) async fn read(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, HeaderError> {
    let header = tokio::time::timeout(timeout, read_header(tcp))
        .await
        .map_err(|_| HeaderError::Timeout)??;
    Ok(match header {
        Addresses::Proxied { source, .. } => {
            SocketAddr::new(source.ip().to_canonical(), source.port())
        }
        Addresses::Unknown => peer,
    })
}

async fn read_header(tcp: &mut TcpStream) -> Result<Addresses, HeaderError> {
    let mut taken: Vec<u8> = Vec::with_capacity(128);
    let mut peeked = vec![0u8; MAX_LEN];
    loop {
        // What is waiting beyond the bytes already taken, up to the longest header.
        let room = MAX_LEN - taken.len();
        let n = tcp.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let before = taken.len();
        taken.extend_from_slice(&peeked[..n]);
        match parse(&taken)? {
            Some(header) => {
                // Consume exactly the header's remaining bytes: the rest is the client's.
                let mut rest = vec![0u8; header.len - before];
                tcp.read_exact(&mut rest).await?;
                return Ok(header.addresses);
            }
            None => {
                // Every byte seen belongs to the header: take them off the socket, so that
                // the next peek waits for more instead of returning the same bytes.
                let mut part = vec![0u8; n];
                tcp.read_exact(&mut part).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        (client, server, peer)
    }

    #[tokio::test]
    async fn a_header_sent_in_pieces_is_read_exactly_and_the_rest_stays() {
        let (mut client, mut server, peer) = pair().await;
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
        let task = tokio::spawn(async move {
            for chunk in header.chunks(7) {
                client.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.write_all(b"\x16\x03\x01after").await.unwrap();
            client
        });
        let got = read(&mut server, peer, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, "192.0.2.7:56324".parse().unwrap());
        let _client = task.await.unwrap();
        let mut rest = [0u8; 8];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01after");
    }

    #[tokio::test]
    async fn a_v2_local_header_keeps_the_peer_and_garbage_is_refused() {
        let (mut client, mut server, peer) = pair().await;
        let mut local = crate::proxy_protocol::V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00, 0x16]);
        client.write_all(&local).await.unwrap();
        let got = read(&mut server, peer, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, peer);
        let mut next = [0u8; 1];
        server.read_exact(&mut next).await.unwrap();
        assert_eq!(next[0], 0x16);

        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"\x16\x03\x01\x02\x00").await.unwrap();
        let err = read(&mut server, peer, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "proxy_header_malformed");
    }

    #[tokio::test]
    async fn a_slow_header_times_out() {
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"PROXY TCP4 192.0").await.unwrap();
        let err = read(&mut server, peer, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "proxy_header_timeout");
        drop(client);
    }
}
