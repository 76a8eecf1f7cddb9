//! A strict reader of RFC 5425 frames (`MSGLEN SP SYSLOG-MSG`) and RFC 5424 messages, for
//! the test collector: anything the grammar does not allow is an error, not a guess.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub facility: u8,
    pub severity: u8,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    /// SD elements: (SD-ID, [(name, unescaped value)]).
    pub sd: Vec<(String, Vec<(String, String)>)>,
    pub bom: bool,
    pub msg: String,
}

/// Takes every whole frame off the front of `buf`; an error for a malformed one.
pub fn frames(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(sp) = buf.iter().position(|&b| b == b' ') else {
            if buf.len() > 10 || buf.iter().any(|b| !b.is_ascii_digit()) {
                return Err(format!("no MSGLEN at {:?}", String::from_utf8_lossy(buf)));
            }
            return Ok(out);
        };
        let digits = &buf[..sp];
        if digits.is_empty()
            || digits.len() > 10
            || digits[0] == b'0'
            || !digits.iter().all(u8::is_ascii_digit)
        {
            return Err(format!("bad MSGLEN {:?}", String::from_utf8_lossy(digits)));
        }
        let len: usize = std::str::from_utf8(digits).unwrap().parse().unwrap();
        if buf.len() < sp + 1 + len {
            return Ok(out);
        }
        out.push(buf[sp + 1..sp + 1 + len].to_vec());
        buf.drain(..sp + 1 + len);
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.s.get(self.at) == Some(&b) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", b as char, self.at))
        }
    }

    /// 1..=max PRINTUSASCII up to a space.
    fn field(&mut self, name: &str, max: usize) -> Result<&'a str, String> {
        let start = self.at;
        while self.at < self.s.len() && self.s[self.at] != b' ' {
            if !(33..=126).contains(&self.s[self.at]) {
                return Err(format!("{name}: not PRINTUSASCII"));
            }
            self.at += 1;
        }
        let f = &self.s[start..self.at];
        if f.is_empty() || f.len() > max {
            return Err(format!("{name}: length {}", f.len()));
        }
        Ok(std::str::from_utf8(f).unwrap())
    }
}

pub fn parse(msg: &[u8]) -> Result<Message, String> {
    let mut c = Cursor { s: msg, at: 0 };
    c.expect(b'<')?;
    let start = c.at;
    while c.at < msg.len() && msg[c.at].is_ascii_digit() {
        c.at += 1;
    }
    let pri = &msg[start..c.at];
    if pri.is_empty() || pri.len() > 3 || (pri.len() > 1 && pri[0] == b'0') {
        return Err("PRI".into());
    }
    let pri: u16 = std::str::from_utf8(pri).unwrap().parse().unwrap();
    if pri > 191 {
        return Err(format!("PRI {pri} > 191"));
    }
    c.expect(b'>')?;
    c.expect(b'1')?;
    c.expect(b' ')?;
    let timestamp = c.field("TIMESTAMP", 32)?.to_owned();
    check_timestamp(&timestamp)?;
    c.expect(b' ')?;
    let hostname = c.field("HOSTNAME", 255)?.to_owned();
    c.expect(b' ')?;
    let app_name = c.field("APP-NAME", 48)?.to_owned();
    c.expect(b' ')?;
    let procid = c.field("PROCID", 128)?.to_owned();
    c.expect(b' ')?;
    let msgid = c.field("MSGID", 32)?.to_owned();
    c.expect(b' ')?;
    let sd = structured_data(&mut c)?;
    let rest = &msg[c.at..];
    let (bom, body) = match rest {
        [] => (false, &[][..]),
        [b' ', body @ ..] => match body.strip_prefix(b"\xEF\xBB\xBF") {
            Some(b) => (true, b),
            None => (false, body),
        },
        _ => return Err("no SP before MSG".into()),
    };
    let msg = String::from_utf8(body.to_vec()).map_err(|_| "MSG is not UTF-8".to_owned())?;
    Ok(Message {
        facility: (pri / 8) as u8,
        severity: (pri % 8) as u8,
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        sd,
        bom,
        msg,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.F{1,6}(Z|±HH:MM)`, with the fraction this exporter promises.
fn check_timestamp(t: &str) -> Result<(), String> {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let ok = b.len() >= 21
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.';
    if !ok {
        return Err(format!("TIMESTAMP {t}"));
    }
    let frac = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
    let zone = &t[20 + frac..];
    let zone_ok = zone == "Z"
        || (zone.len() == 6
            && (zone.starts_with('+') || zone.starts_with('-'))
            && zone.as_bytes()[3] == b':');
    if !(1..=6).contains(&frac) || !zone_ok {
        return Err(format!("TIMESTAMP {t}"));
    }
    Ok(())
}

type Sd = Vec<(String, Vec<(String, String)>)>;

fn sd_name(c: &mut Cursor<'_>) -> Result<String, String> {
    let start = c.at;
    while c.at < c.s.len() && (33..=126).contains(&c.s[c.at]) && !b"= ]\"".contains(&c.s[c.at]) {
        c.at += 1;
    }
    let n = &c.s[start..c.at];
    if n.is_empty() || n.len() > 32 {
        return Err("SD-NAME".into());
    }
    Ok(String::from_utf8(n.to_vec()).unwrap())
}

fn structured_data(c: &mut Cursor<'_>) -> Result<Sd, String> {
    if c.s.get(c.at) == Some(&b'-') {
        c.at += 1;
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    while c.s.get(c.at) == Some(&b'[') {
        c.at += 1;
        let id = sd_name(c)?;
        let mut params = Vec::new();
        while c.s.get(c.at) == Some(&b' ') {
            c.at += 1;
            let name = sd_name(c)?;
            c.expect(b'=')?;
            c.expect(b'"')?;
            let mut value = Vec::new();
            loop {
                match c.s.get(c.at) {
                    None => return Err("unterminated PARAM-VALUE".into()),
                    Some(b'"') => break,
                    Some(b'\\') if matches!(c.s.get(c.at + 1), Some(b'"' | b'\\' | b']')) => {
                        value.push(c.s[c.at + 1]);
                        c.at += 2;
                    }
                    Some(b']') => return Err("unescaped ] in PARAM-VALUE".into()),
                    Some(&b) => {
                        value.push(b);
                        c.at += 1;
                    }
                }
            }
            c.expect(b'"')?;
            let value = String::from_utf8(value).map_err(|_| "PARAM-VALUE not UTF-8")?;
            params.push((name, value));
        }
        c.expect(b']')?;
        out.push((id, params));
    }
    if out.is_empty() {
        return Err("STRUCTURED-DATA".into());
    }
    Ok(out)
}
