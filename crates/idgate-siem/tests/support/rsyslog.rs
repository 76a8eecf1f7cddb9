//! A real rsyslog collector for tests: `rsyslogd` in the foreground with a configuration of
//! its own (imtcp with the GnuTLS stream driver on a loopback port, omfile to a temporary
//! file with a template that writes each parsed RFC 5424 field), killed when dropped.
//!
//! When `rsyslogd` is not installed, [`Rsyslog::start`] returns `None` after a loud message
//! and the test skips itself; with `IDGATE_REQUIRE_RSYSLOG` set (as CI sets it) it panics
//! instead, so a missing collector can never pass for a green run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Pki, free_port, wait_until};

pub const REQUIRE_ENV: &str = "IDGATE_REQUIRE_RSYSLOG";

/// One message as rsyslog parsed it: the template's fields, `|`-separated.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub pri: u8,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub structured_data: String,
    pub msg: String,
}

pub struct Rsyslog {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    conf: PathBuf,
    out: PathBuf,
}

/// `rsyslogd` on the PATH, or where Debian puts it (`/usr/sbin`, which a user's PATH may
/// not name).
fn binary() -> Option<&'static str> {
    ["rsyslogd", "/usr/sbin/rsyslogd"].into_iter().find(|b| {
        Command::new(b)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn available() -> bool {
    if binary().is_some() {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set but rsyslogd cannot be run: install it (apt-get install rsyslog rsyslog-gnutls)"
    );
    eprintln!(
        "\n!!!!! SKIPPED: rsyslogd is not installed; this rsyslog test did not run. \
         Install rsyslog and rsyslog-gnutls, or set {REQUIRE_ENV}=1 to make this a failure. !!!!!\n"
    );
    false
}

impl Rsyslog {
    /// Starts rsyslogd serving the certificate of `prefix` (`""` for the trusted CA,
    /// `"other-"` for the other one), requiring a client certificate when `mtls`.
    pub fn start(pki: &Pki, prefix: &str, mtls: bool) -> Option<Self> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let out = dir.path().join("out.log");
        let conf = dir.path().join("rsyslog.conf");
        let auth = if mtls { "x509/certvalid" } else { "anon" };
        let text = format!(
            r#"global(workDirectory="{work}"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="{auth}")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="fields" type="string"
  string="%PRI%|%TIMESTAMP:::date-rfc3339%|%HOSTNAME%|%APP-NAME%|%PROCID%|%MSGID%|%STRUCTURED-DATA%|%msg%\n")
if $app-name == "idgate" then {{
  action(type="omfile" file="{out}" template="fields")
}} else {{
  action(type="omfile" file="{internal}")
}}
"#,
            work = work.display(),
            ca = pki.path("ca.pem").display(),
            cert = pki.path(&format!("{prefix}server.pem")).display(),
            key = pki.path(&format!("{prefix}server.key")).display(),
            out = out.display(),
            internal = dir.path().join("internal.log").display(),
        );
        std::fs::write(&conf, text).unwrap();
        let mut r = Self {
            dir,
            port,
            child: None,
            conf,
            out,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new(binary().expect("rsyslogd"))
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        let port = self.port;
        // Listening is when the port accepts a connection (rsyslog logs the bare connect
        // and its failed handshake, which is harmless).
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "rsyslogd did not listen: {}",
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
        );
    }

    /// SIGKILL: whatever rsyslogd held and had not written is lost with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn messages(&self) -> Vec<Parsed> {
        super::read_lines(&self.out)
            .into_iter()
            .map(|line| {
                let f: Vec<&str> = line.splitn(8, '|').collect();
                assert_eq!(f.len(), 8, "{line}");
                Parsed {
                    pri: f[0].parse().unwrap(),
                    timestamp: f[1].to_owned(),
                    hostname: f[2].to_owned(),
                    app_name: f[3].to_owned(),
                    procid: f[4].to_owned(),
                    msgid: f[5].to_owned(),
                    structured_data: f[6].to_owned(),
                    msg: f[7].to_owned(),
                }
            })
            .collect()
    }

    pub fn seqs(&self) -> Vec<usize> {
        self.messages().iter().map(|m| super::seq(&m.msg)).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}
