//! `routes --watch`: the routes emitted again whenever they change, woken by etcd's
//! watch on the node records and blocks (the JSON gateway's `/v3/watch`, a chunked
//! HTTP/1.1 response on a connection of its own, opened at the revision of the listing
//! it follows). Every change is listed again in one read, so what is emitted is always
//! a whole set as of one revision. The watch runs on one member; it moves to the next
//! when that member closes the connection, loses its leader (the `hasleader` metadata
//! makes etcd cancel the watch then), or stays silent for [`PROBE`] and then cannot
//! list. A compaction past the watch's revision, like any restart, lists again first.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use common::{Error, Kind, Result};

use super::{b64, client::Client, int, list_routes, prefix_end, tls::Stream, EtcdStore, Route};

/// How long the watch stream may stay silent before its member is asked for the whole
/// set: a member that went away without closing the connection fails that, and a set
/// the watch missed is emitted then.
const PROBE: Duration = Duration::from_secs(5);
/// The pause between listings while no member answers.
const RETRY: Duration = Duration::from_millis(500);
/// gRPC UNAUTHENTICATED: the token expired.
const UNAUTHENTICATED: i64 = 16;

/// Why a watch session ended.
enum End {
    /// The member failed: watch on the next one.
    Failed(String),
    /// The watch must start again from a new listing.
    Compacted,
    Canceled(String),
}

impl EtcdStore {
    /// Call `emit` with the current routes and their revision, then again each time
    /// they change, until `emit` fails (the reader went away: a broken pipe) or the
    /// reader of stdout is gone. The first listing fails as `routes` does (69 or 75
    /// within `wait`); after that, etcd trouble is retried for ever, every listing
    /// again within `wait`, and the set last emitted stands meanwhile.
    pub fn watch_routes(
        &mut self,
        wait: Duration,
        mut emit: impl FnMut(i64, &[Route]) -> Result<()>,
    ) -> Result<()> {
        let (mut rev, mut last) =
            list_routes(&mut self.client, &self.prefix, &self.node, self.block_bits)?;
        emit(rev, &last)?;
        let mut member = 0usize;
        loop {
            let started = Instant::now();
            match self.session(member, rev, &mut last, &mut emit)? {
                End::Failed(why) => {
                    log::warn!("etcd watch: {why}; watching on the next member");
                    member += 1;
                }
                End::Compacted => {
                    log::info!("etcd watch: compacted past its revision; listing again")
                }
                End::Canceled(why) => {
                    log::warn!("etcd watch: canceled by etcd: {why}; listing again")
                }
            }
            // A member that accepts the watch and drops it at once is not retried in a
            // tight loop.
            if started.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(RETRY);
            }
            loop {
                reader_check()?;
                self.client.renew(Instant::now() + wait);
                match list_routes(&mut self.client, &self.prefix, &self.node, self.block_bits) {
                    Ok((r, routes)) => {
                        rev = r;
                        if routes != last {
                            emit(r, &routes)?;
                            last = routes;
                        }
                        break;
                    }
                    Err(e) => {
                        log::warn!("etcd watch: listing the routes again: {e}");
                        std::thread::sleep(RETRY);
                    }
                }
            }
        }
    }

    /// One watch stream on member `member` from revision `rev + 1`, until it fails or
    /// must restart. Errors are only `emit`'s and the reader's.
    fn session(
        &mut self,
        member: usize,
        rev: i64,
        last: &mut Vec<Route>,
        emit: &mut impl FnMut(i64, &[Route]) -> Result<()>,
    ) -> Result<End> {
        let i = member % self.client.endpoints().len();
        let endpoint = self.client.endpoints()[i].clone();
        let auth = match self.client.auth_header() {
            Ok(a) => a,
            Err(e) => return Ok(End::Failed(e.to_string())),
        };
        let timeout = self.client.request_timeout();
        let body: String = ["node/", "block/"]
            .iter()
            .map(|k| {
                let key = format!("{}/{k}", self.prefix).into_bytes();
                json!({"create_request": {
                    "key": b64(&key),
                    "range_end": b64(&prefix_end(&key)),
                    "start_revision": (rev + 1).to_string(),
                }})
                .to_string()
            })
            .collect();
        let mut stream = match open(&self.client, &endpoint, &auth, &body, timeout) {
            Ok(s) => s,
            Err(e) => return Ok(End::Failed(format!("{endpoint}: {e}"))),
        };
        log::debug!("etcd watch on {endpoint} from revision {}", rev + 1);
        let mut chunks = Dechunk::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(line) = chunks.line() {
                match classify(&line) {
                    Msg::Quiet => {}
                    Msg::Compacted => return Ok(End::Compacted),
                    Msg::Canceled(why) => return Ok(End::Canceled(why)),
                    Msg::Failed {
                        unauthenticated,
                        message,
                    } => {
                        if unauthenticated {
                            self.client.forget_token();
                        }
                        return Ok(End::Failed(format!("{endpoint}: {message}")));
                    }
                    Msg::Changed => {
                        self.client.renew(Instant::now() + timeout * 2);
                        match list_routes(
                            &mut self.client,
                            &self.prefix,
                            &self.node,
                            self.block_bits,
                        ) {
                            Ok((r, routes)) => {
                                if routes != *last {
                                    emit(r, &routes)?;
                                    *last = routes;
                                }
                            }
                            Err(e) => {
                                return Ok(End::Failed(format!("listing after a change: {e}")))
                            }
                        }
                    }
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => return Ok(End::Failed(format!("{endpoint} closed the watch"))),
                Ok(n) => {
                    if let Err(e) = chunks.feed(&buf[..n]) {
                        return Ok(End::Failed(format!("{endpoint}: {e}")));
                    }
                    if chunks.done {
                        return Ok(End::Failed(format!("{endpoint} ended the watch")));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    reader_check()?;
                    let mut probe = self.client.pinned(i, Instant::now() + timeout);
                    let listed = list_routes(&mut probe, &self.prefix, &self.node, self.block_bits);
                    self.client.adopt_token(&probe);
                    match listed {
                        Ok((r, routes)) => {
                            if routes != *last {
                                log::info!("etcd watch: a listing found a change the watch missed");
                                emit(r, &routes)?;
                                *last = routes;
                            }
                        }
                        Err(e) => return Ok(End::Failed(format!("{endpoint} is silent: {e}"))),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(End::Failed(format!("{endpoint}: {e}"))),
            }
        }
    }
}

/// What one message of the watch stream says.
#[derive(Debug, PartialEq)]
enum Msg {
    /// Nothing to do (a watcher created, a progress notice).
    Quiet,
    /// Keys changed: list again.
    Changed,
    /// The watch is over: list, then watch again.
    Compacted,
    Canceled(String),
    /// An error: watch on the next member (fetching a new token first when it expired).
    Failed {
        unauthenticated: bool,
        message: String,
    },
}

fn classify(line: &[u8]) -> Msg {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Msg::Failed {
            unauthenticated: false,
            message: "not JSON in the watch stream".into(),
        };
    };
    if let Some(e) = v.get("error") {
        return Msg::Failed {
            unauthenticated: int(e.get("grpc_code")) == UNAUTHENTICATED,
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
    }
    let r = v.get("result").unwrap_or(&Value::Null);
    if int(r.get("compact_revision")) > 0 {
        return Msg::Compacted;
    }
    if r.get("canceled").and_then(Value::as_bool) == Some(true) {
        let why = r.get("cancel_reason").and_then(Value::as_str).unwrap_or("");
        return Msg::Canceled(why.to_string());
    }
    let changed = r
        .get("events")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty());
    if changed {
        Msg::Changed
    } else {
        Msg::Quiet
    }
}

/// Connect to `endpoint`, send the watch request and read the response's head: a
/// stream positioned at the first chunk.
fn open(
    client: &Client,
    endpoint: &str,
    auth: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<Stream> {
    let mut s = client.connect(endpoint, timeout)?;
    // hasleader: etcd cancels the watch when this member loses its leader, rather
    // than leaving it open and silent on a minority.
    let req = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
         Grpc-Metadata-hasleader: true\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err(bad("response head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(bad(&format!("watch answered HTTP {status}")));
    }
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Err(bad("watch answered without a chunked stream"));
    }
    s.tcp().set_read_timeout(Some(PROBE))?;
    Ok(s)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Whether whoever reads our stdout is still there; a pipe whose reader closed it
/// polls as an error. Checked while nothing is printed, so `--watch` ends with its
/// reader even when the routes never change.
fn reader_check() -> Result<()> {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    if n > 0 && fd.revents & libc::POLLERR != 0 {
        return Err(Error::new(
            Kind::BrokenPipe,
            "writing stdout: the reader went away",
        ));
    }
    Ok(())
}

/// The body of a chunked HTTP/1.1 response, fed as bytes arrive (a read that timed
/// out loses nothing), handed out as the gateway's newline-terminated messages.
#[derive(Default)]
struct Dechunk {
    raw: Vec<u8>,
    body: Vec<u8>,
    /// Bytes left in the current chunk.
    left: usize,
    /// The CRLF after a chunk's data is due.
    crlf: bool,
    /// The last (empty) chunk came.
    done: bool,
}

impl Dechunk {
    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.raw.extend_from_slice(data);
        let mut at = 0;
        while !self.done {
            if self.left > 0 {
                let n = self.left.min(self.raw.len() - at);
                if n == 0 {
                    break;
                }
                self.body.extend_from_slice(&self.raw[at..at + n]);
                at += n;
                self.left -= n;
                self.crlf = self.left == 0;
            } else if self.crlf {
                if self.raw.len() - at < 2 {
                    break;
                }
                if &self.raw[at..at + 2] != b"\r\n" {
                    return Err(bad("no CRLF after a chunk"));
                }
                at += 2;
                self.crlf = false;
            } else {
                let Some(end) = self.raw[at..].windows(2).position(|w| w == b"\r\n") else {
                    if self.raw.len() - at > 1024 {
                        return Err(bad("bad chunk size"));
                    }
                    break;
                };
                let line = String::from_utf8_lossy(&self.raw[at..at + end]).into_owned();
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                at += end + 2;
                if size == 0 {
                    self.done = true;
                } else {
                    self.left = size;
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    /// The next whole message, without its newline.
    fn line(&mut self) -> Option<Vec<u8>> {
        let end = self.body.iter().position(|b| *b == b'\n')?;
        let mut line: Vec<u8> = self.body.drain(..=end).collect();
        line.pop();
        Some(line)
    }
}

/// What `routes --watch` prints per set: `BLOCK via ADDR` lines and a blank line, or
/// with `json` one line `{"revision":N,"routes":[...]}`.
pub fn render(rev: i64, routes: &[Route], json: bool) -> Result<String> {
    if json {
        return common::output::json_line(&json!({"revision": rev, "routes": routes}));
    }
    let mut text: String = routes
        .iter()
        .map(|r| format!("{} via {}\n", r.block, r.via))
        .collect();
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out
    }

    #[test]
    fn messages_come_out_whole_however_the_bytes_are_split() {
        let wire = chunked(&["{\"a\":1}\n{\"b\"", ":2}\n", "{\"c\":3}\n"]);
        for step in [1, 2, 3, 7, wire.len()] {
            let mut d = Dechunk::default();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                d.feed(piece).unwrap();
                while let Some(l) = d.line() {
                    got.push(String::from_utf8(l).unwrap());
                }
            }
            assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"], "step {step}");
            assert!(!d.done);
        }
        let mut d = Dechunk::default();
        d.feed(b"0\r\n\r\n").unwrap();
        assert!(d.done);
        assert!(Dechunk::default().feed(b"zz\r\n").is_err());
        assert!(Dechunk::default().feed(b"1\r\nxyz").is_err());
    }

    #[test]
    fn watch_messages_as_the_gateway_writes_them() {
        let h = r#""header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"}"#;
        let m = |s: String| classify(s.as_bytes());
        assert_eq!(
            m(format!(r#"{{"result":{{{h},"created":true}}}}"#)),
            Msg::Quiet
        );
        assert_eq!(
            m(format!(
                r#"{{"result":{{{h},"watch_id":"1","created":true}}}}"#
            )),
            Msg::Quiet
        );
        assert_eq!(
            m(format!(
                r#"{{"result":{{{h},"watch_id":"1","events":[{{"type":"DELETE","kv":{{"key":"YQ=="}}}}]}}}}"#
            )),
            Msg::Changed
        );
        assert_eq!(
            m(format!(
                r#"{{"result":{{{h},"canceled":true,"compact_revision":"5"}}}}"#
            )),
            Msg::Compacted
        );
        assert_eq!(
            m(format!(
                r#"{{"result":{{{h},"canceled":true,"cancel_reason":"x"}}}}"#
            )),
            Msg::Canceled("x".into())
        );
        assert_eq!(
            m(
                r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#
                    .into()
            ),
            Msg::Failed {
                unauthenticated: false,
                message: "etcdserver: no leader".into()
            }
        );
        assert!(matches!(
            m(r#"{"error":{"grpc_code":16,"message":"invalid auth token"}}"#.into()),
            Msg::Failed {
                unauthenticated: true,
                ..
            }
        ));
        assert!(matches!(m("nope".into()), Msg::Failed { .. }));
    }

    #[test]
    fn a_set_is_lines_and_a_blank_line_or_one_json_line() {
        let r = [Route {
            block: "10.233.0.64/26".into(),
            via: "198.51.100.12".parse().unwrap(),
            node: "n2".into(),
        }];
        assert_eq!(
            render(7, &r, false).unwrap(),
            "10.233.0.64/26 via 198.51.100.12\n\n"
        );
        assert_eq!(render(7, &[], false).unwrap(), "\n");
        let j = render(7, &r, true).unwrap();
        assert_eq!(j.lines().count(), 1);
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["revision"], 7);
        assert_eq!(v["routes"][0]["via"], "198.51.100.12");
        assert_eq!(v["routes"][0]["node"], "n2");
    }
}
