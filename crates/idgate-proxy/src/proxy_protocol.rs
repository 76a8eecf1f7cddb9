//! The PROXY protocol header (versions 1 and 2) a layer-4 load balancer writes before its
//! client's bytes, naming the client's address: the parser of those bytes. It is pure and
//! never panics; the listener reads the bytes (`listener/proxy_header.rs`) and trusts a
//! header only from a configured load balancer.
//!
//! [`parse`] answers for any prefix of a connection's first bytes: a header and its exact
//! length, "not complete yet" (and then every byte given is known to be part of the header,
//! so a reader may consume them without taking any of what follows, such as a TLS
//! ClientHello), or why the bytes cannot be a header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature: the first 12 bytes of every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, `PROXY ` and the final CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The most address and TLV bytes accepted after a version 2 header's fixed 16 bytes.
/// Addresses take at most 216 (`AF_UNIX`); load balancers add a few short TLVs.
pub const V2_MAX_PAYLOAD: usize = 2048;
/// The longest header [`parse`] accepts.
pub const MAX_LEN: usize = 16 + V2_MAX_PAYLOAD;

const V1_PREFIX: &[u8] = b"PROXY ";

/// What a header says about the connection it precedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// The client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No client address: a v2 `LOCAL` command (the load balancer's own health check), a v1
    /// `UNKNOWN` or a v2 header of an unspecified or UNIX family. The connection's own
    /// addresses stand.
    Unknown,
}

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub addresses: Addresses,
    /// Its length in bytes: what follows is the client's own.
    pub len: usize,
}

/// Why the first bytes of a connection are not a valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxy,
    #[error("a version 1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed version 1 header: {0}")]
    V1Malformed(&'static str),
    #[error("version 2 signature followed by version {0}")]
    V2Version(u8),
    #[error("version 2 command {0:#x} is neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("version 2 address family and protocol {0:#04x} are not TCP")]
    V2Family(u8),
    #[error("version 2 header of {0} bytes beyond its first 16, more than {V2_MAX_PAYLOAD}")]
    V2TooLong(usize),
    #[error("version 2 header too short for its addresses")]
    V2Short,
}

/// Parses the start of a connection. `Ok(None)`: not complete yet, and every byte of `buf`
/// belongs to the header (so reading more than `buf.len()` bytes in all is needed, and
/// consuming `buf` takes nothing that follows the header).
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        // A lone LF or CR in the middle can never become the terminator.
        if window
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' || (b == b'\r' && i + 1 < window.len()))
        {
            return Err(ProxyHeaderError::V1Malformed("stray CR or LF"));
        }
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let len = end + 2;
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| ProxyHeaderError::V1Malformed("not ASCII"))?;
    if !line.is_ascii() || line.contains(['\r', '\n']) {
        return Err(ProxyHeaderError::V1Malformed("not ASCII"));
    }
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The sender may say more; the receiver ignores it.
        return Ok(Some(Header {
            version: 1,
            addresses: Addresses::Unknown,
            len,
        }));
    }
    let mut fields = line.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyHeaderError::V1Malformed(
            "expected TCP4 or TCP6, two addresses and two ports, one space apart",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(v1_addr::<Ipv4Addr>(src)?),
            IpAddr::V4(v1_addr::<Ipv4Addr>(dst)?),
        ),
        "TCP6" => (
            IpAddr::V6(v1_addr::<Ipv6Addr>(src)?),
            IpAddr::V6(v1_addr::<Ipv6Addr>(dst)?),
        ),
        _ => return Err(ProxyHeaderError::V1Malformed("unknown protocol")),
    };
    Ok(Some(Header {
        version: 1,
        addresses: Addresses::Proxied {
            source: SocketAddr::new(src, v1_port(sport)?),
            destination: SocketAddr::new(dst, v1_port(dport)?),
        },
        len,
    }))
}

/// An address of a v1 header. Rust's parsers refuse IPv4 numbers with heading zeroes, as
/// the protocol does; an IPv6 address must not embed a zone or an IPv4 form of another family.
fn v1_addr<A: std::str::FromStr>(s: &str) -> Result<A, ProxyHeaderError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
    {
        return Err(ProxyHeaderError::V1Malformed("bad address"));
    }
    s.parse()
        .map_err(|_| ProxyHeaderError::V1Malformed("bad address"))
}

/// A port of a v1 header: decimal 0..=65535 without heading zeroes.
fn v1_port(s: &str) -> Result<u16, ProxyHeaderError> {
    if s.is_empty()
        || s.len() > 5
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(ProxyHeaderError::V1Malformed("bad port"));
    }
    s.parse()
        .map_err(|_| ProxyHeaderError::V1Malformed("bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        other => return Err(ProxyHeaderError::V2Command(other)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // Families: 0 unspecified, 1 IPv4, 2 IPv6, 3 UNIX; transports: 0 unspecified, 1 stream.
    // A datagram transport or an unknown family is no TCP connection's header.
    if fam >> 4 > 3 || fam & 0x0f > 1 {
        return Err(ProxyHeaderError::V2Family(fam));
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let payload = usize::from(u16::from_be_bytes([hi, lo]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::V2TooLong(payload));
    }
    let len = 16 + payload;
    let needed = match fam {
        0x11 => 12,
        0x21 => 36,
        _ => 0,
    };
    if payload < needed && !local {
        return Err(ProxyHeaderError::V2Short);
    }
    let Some(body) = buf.get(16..len) else {
        return Ok(None);
    };
    // LOCAL: the receiver uses the connection's own addresses, whatever follows.
    let addresses = match (local, fam) {
        (false, 0x11) => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            Addresses::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(body, 8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(body, 10)),
            }
        }
        (false, 0x21) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            Addresses::Proxied {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(body, 32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(body, 34)),
            }
        }
        _ => Addresses::Unknown,
    };
    Ok(Some(Header {
        version: 2,
        addresses,
        len,
    }))
}

fn port(body: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([body[at], body[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// Every proper prefix of a header is incomplete: a reader that consumes it takes none
    /// of what follows.
    fn every_prefix_incomplete(h: &[u8], len: usize) {
        for k in 0..len {
            assert_eq!(parse(&h[..k]), Ok(None), "prefix of {k}");
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_the_client_and_exact_length() {
        let mut h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n".to_vec();
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01rest");
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(got.len, len);
        assert_eq!(
            got.addresses,
            Addresses::Proxied {
                source: "192.0.2.7:56324".parse().unwrap(),
                destination: "198.51.100.1:443".parse().unwrap(),
            }
        );
        every_prefix_incomplete(&h, len);
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";
        let got = parse(h).unwrap().unwrap();
        assert_eq!(
            got.addresses,
            Addresses::Proxied {
                source: "[2001:db8::7]:65535".parse().unwrap(),
                destination: "[2001:db8::1]:0".parse().unwrap(),
            }
        );
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_its_line() {
        for h in [&b"PROXY UNKNOWN\r\n"[..], b"PROXY UNKNOWN ff:: ::1 1 2\r\n"] {
            let got = parse(h).unwrap().unwrap();
            assert_eq!(got.addresses, Addresses::Unknown);
            assert_eq!(got.len, h.len());
        }
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7  198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 \r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7\n198.51.100.1 1 2\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'a');
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
        long.truncate(V1_MAX_LEN - 1);
        assert_eq!(parse(&long), Ok(None));
    }

    #[test]
    fn anything_else_is_not_a_proxy_header() {
        for bad in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXX",
            b"\r\n\r\n\0\r\nQUIT\r",
        ] {
            assert_eq!(parse(bad), Err(ProxyHeaderError::NotProxy));
        }
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0"), Ok(None));
    }

    #[test]
    fn v2_tcp4_and_tcp6_skip_their_tlvs() {
        let mut payload = vec![192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb];
        // A TLV (PP2_TYPE_AUTHORITY) and padding: skipped.
        payload.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'p', b'i', 0x04, 0x00, 0x00]);
        let mut h = v2(1, 0x11, &payload);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01");
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(got.len, len);
        assert_eq!(
            got.addresses,
            Addresses::Proxied {
                source: "192.0.2.7:56324".parse().unwrap(),
                destination: "198.51.100.1:443".parse().unwrap(),
            }
        );
        every_prefix_incomplete(&h, len);

        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut payload = src.octets().to_vec();
        payload.extend_from_slice(&dst.octets());
        payload.extend_from_slice(&[0, 80, 1, 187]);
        let got = parse(&v2(1, 0x21, &payload)).unwrap().unwrap();
        assert_eq!(
            got.addresses,
            Addresses::Proxied {
                source: "[2001:db8::7]:80".parse().unwrap(),
                destination: "[2001:db8::1]:443".parse().unwrap(),
            }
        );
    }

    #[test]
    fn v2_local_and_unspec_keep_the_connection_addresses() {
        for h in [
            v2(0, 0x00, &[]),
            v2(0, 0x11, &[1, 2, 3]),
            v2(1, 0x00, &[9; 5]),
            v2(1, 0x31, &[0; 216]),
        ] {
            let got = parse(&h).unwrap().unwrap();
            assert_eq!(got.addresses, Addresses::Unknown);
            assert_eq!(got.len, h.len());
        }
    }

    #[test]
    fn v2_bad_version_command_family_and_lengths_are_refused() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(ProxyHeaderError::V2Version(1)));
        assert_eq!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyHeaderError::V2Command(2))
        );
        assert_eq!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyHeaderError::V2Family(0x12))
        );
        assert_eq!(
            parse(&v2(1, 0x41, &[0; 12])),
            Err(ProxyHeaderError::V2Family(0x41))
        );
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 11])),
            Err(ProxyHeaderError::V2Short)
        );
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 35])),
            Err(ProxyHeaderError::V2Short)
        );
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&(V2_MAX_PAYLOAD as u16 + 1).to_be_bytes());
        assert_eq!(
            parse(&huge),
            Err(ProxyHeaderError::V2TooLong(V2_MAX_PAYLOAD + 1))
        );
    }
}
