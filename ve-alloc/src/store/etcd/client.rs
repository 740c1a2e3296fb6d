//! A client for etcd's v3 JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`) over
//! kept-alive HTTP/1.1 on a `TcpStream`, with TLS (rustls) for `etcd+tls://`: no protoc
//! at build time (etcd-client's gRPC stubs need it). Requests that find no answer in
//! time, or an answer without quorum, move on to the next endpoint until the deadline
//! (`--wait`) has passed; a certificate refused either way ends the command at once.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use common::{Error, Kind, Result};
use serde_json::Value;

use super::tls::{Stream, Tls};

/// The longest one request may take before the next endpoint is tried: a quarter of
/// `--wait` within these bounds, so a loaded cluster still answers (a quorum write takes
/// 1-2 ms idle) and a dead member still leaves time for others.
const REQUEST_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(1000), Duration::from_millis(3000));
/// The pause between two rounds over the endpoints while none answers.
const BACKOFF: Duration = Duration::from_millis(50);
/// gRPC status codes the gateway reports that mean "try again, maybe elsewhere":
/// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE (no leader, request
/// timed out, leader changed).
const RETRY_CODES: [i64; 4] = [4, 8, 10, 14];

/// gRPC status codes for a refused identity: UNAUTHENTICATED (also an expired
/// token), PERMISSION_DENIED.
const UNAUTHENTICATED: i64 = 16;
const PERMISSION_DENIED: i64 = 7;
/// What etcd answers an authentication with an unknown user or a wrong password, and
/// any request without a token when authentication is enabled ("user name is empty"),
/// as well as requests that are simply malformed.
const INVALID_ARGUMENT: i64 = 3;
const AUTHENTICATE: &str = "/v3/auth/authenticate";
/// The flags a refused identity is mended with.
const AUTH_FLAGS: &str = "--etcd-user and --etcd-password-file";

/// A user name and password for etcd's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

pub struct Client {
    endpoints: Vec<String>,
    auth: Option<Credentials>,
    /// The token `auth` got, sent with every request.
    token: Option<String>,
    /// The gRPC code of the last refused request.
    last_code: i64,
    current: usize,
    tls: Option<Tls>,
    conn: Option<BufReader<Stream>>,
    deadline: Instant,
    timeout: Duration,
    /// Whether any endpoint ever answered: then a failure is "no quorum" (75), else
    /// "unreachable" (69).
    answered: bool,
    /// Whether an endpoint took the connection and closed it without a word, as a TLS
    /// listener does to plain HTTP.
    closed_unanswered: bool,
}

impl Client {
    /// A client for `endpoints` (HOST:PORT) that gives up at `deadline`.
    pub fn new(
        endpoints: Vec<String>,
        auth: Option<Credentials>,
        tls: Option<Tls>,
        deadline: Instant,
    ) -> Client {
        Client {
            endpoints,
            auth,
            tls,
            token: None,
            last_code: 0,
            timeout: (deadline.saturating_duration_since(Instant::now()) / 4)
                .clamp(REQUEST_TIMEOUT.0, REQUEST_TIMEOUT.1),
            current: 0,
            conn: None,
            deadline,
            answered: false,
            closed_unanswered: false,
        }
    }

    /// Give requests from now on until `deadline`: a long-running `routes --watch`
    /// renews it before each listing.
    pub fn renew(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.answered = false;
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The longest one request may take.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// The `Authorization` header line for a request made outside [`Client::call`]
    /// (the watch stream), authenticating first when there are credentials and no token.
    pub fn auth_header(&mut self) -> Result<String> {
        if self.auth.is_some() && self.token.is_none() {
            self.authenticate()?;
        }
        Ok(match &self.token {
            Some(t) => format!("Authorization: {t}\r\n"),
            None => String::new(),
        })
    }

    /// Fetch a new token before the next request (etcd no longer knew this one).
    pub fn forget_token(&mut self) {
        self.token = None;
    }

    /// A new connection to `endpoint` (TLS when the store is `etcd+tls://`), each step
    /// and later reads and writes bounded by `timeout`.
    pub fn connect(&self, endpoint: &str, timeout: Duration) -> std::io::Result<Stream> {
        let addr = resolve(endpoint)?;
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        match &self.tls {
            Some(tls) => tls.connect(host_of(endpoint), s),
            None => Ok(Stream::Plain(s)),
        }
    }

    /// Take the token `other` (a [`Client::pinned`] one) may have fetched anew.
    pub fn adopt_token(&mut self, other: &Client) {
        if other.token.is_some() {
            self.token.clone_from(&other.token);
        }
    }

    /// A client for endpoint `i` alone, with this one's credentials and token, that
    /// gives up at `deadline`: asks whether that one member still answers.
    pub fn pinned(&self, i: usize, deadline: Instant) -> Client {
        let mut c = Client::new(
            vec![self.endpoints[i % self.endpoints.len()].clone()],
            self.auth.clone(),
            self.tls.clone(),
            deadline,
        );
        c.token = self.token.clone();
        c.timeout = self.timeout;
        c
    }

    /// POST `body` to `path` and return the answer's JSON, retrying on other endpoints
    /// until the deadline. A gateway error that is not temporary is returned at once.
    /// With credentials, a token is fetched first, and fetched again once when etcd
    /// no longer knows it (simple tokens expire).
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value> {
        if self.auth.is_some() && self.token.is_none() {
            self.authenticate()?;
        }
        match self.call_inner(path, body) {
            Err(_) if self.last_code == UNAUTHENTICATED && self.token.is_some() => {
                self.token = None;
                self.authenticate()?;
                self.call_inner(path, body)
            }
            r => r,
        }
    }

    fn authenticate(&mut self) -> Result<()> {
        let Some(c) = self.auth.clone() else {
            return Ok(());
        };
        let v = self
            .call_inner(
                AUTHENTICATE,
                &serde_json::json!({"name": c.user, "password": c.password}),
            )
            .map_err(|e| {
                if self.last_code == INVALID_ARGUMENT {
                    Error::new(
                        Kind::Permission,
                        format!(
                            "etcd refused the user {:?} (check {AUTH_FLAGS}): {e}",
                            c.user
                        ),
                    )
                } else {
                    e
                }
            })?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::new(Kind::Io, "etcd authentication answered without a token"))?;
        self.token = Some(token.to_string());
        Ok(())
    }

    /// Whether etcd has authentication enabled: a login with no name is refused as an
    /// invalid argument then, and as a failed precondition (9) when it is not enabled.
    fn auth_enabled(&mut self) -> bool {
        let r = self.call_inner(
            AUTHENTICATE,
            &serde_json::json!({"name": "", "password": ""}),
        );
        let enabled = r.is_err() && self.last_code == INVALID_ARGUMENT;
        log::debug!(
            "etcd authentication enabled: {enabled} (an anonymous login got code {})",
            self.last_code
        );
        enabled
    }

    fn call_inner(&mut self, path: &str, body: &Value) -> Result<Value> {
        self.last_code = 0;
        let body = serde_json::to_vec(body)
            .map_err(|e| Error::internal(format!("encoding an etcd request: {e}")))?;
        let mut last = String::from("no endpoint tried");
        let mut first = true;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !first {
                let (kind, what) = if self.answered {
                    (
                        Kind::TempFail,
                        "etcd did not commit the request in time (no quorum?)",
                    )
                } else if self.closed_unanswered && self.tls.is_none() {
                    (
                        Kind::Unavailable,
                        "etcd is unreachable (its members close plain connections unanswered: \
                         do they want TLS, an etcd+tls:// store?)",
                    )
                } else {
                    (Kind::Unavailable, "etcd is unreachable")
                };
                return Err(Error::new(
                    kind,
                    format!(
                        "{what}: endpoints {}, last error: {last}",
                        self.endpoints.join(",")
                    ),
                ));
            }
            // A request's first try gets at least 1 s, even past `--wait` (so `--wait 0`
            // still answers, and a command overruns by 1 s at most); a failover to the
            // next member only what is left.
            let timeout = if first {
                self.timeout.min(left.max(Duration::from_secs(1)))
            } else {
                self.timeout.min(left).max(Duration::from_millis(100))
            };
            first = false;
            let endpoint = self.endpoints[self.current].clone();
            match self.once(&endpoint, path, &body, timeout) {
                Ok(Answer::Foreign(status, text)) => {
                    let hint = if self.tls.is_none() {
                        ": do the members want TLS, an etcd+tls:// store?"
                    } else {
                        ""
                    };
                    return Err(Error::config(format!(
                        "{endpoint} answered HTTP {status} but not as etcd's gateway does \
                         ({text:?}){hint}"
                    )));
                }
                Ok(Answer::Gateway(200, v)) => {
                    self.answered = true;
                    return Ok(v);
                }
                Ok(Answer::Gateway(status, v)) => {
                    self.answered = true;
                    let code = v.get("code").and_then(Value::as_i64).unwrap_or(0);
                    let msg = v
                        .get("message")
                        .or_else(|| v.get("error"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    last = format!("{endpoint}: HTTP {status}: {msg}");
                    self.last_code = code;
                    if matches!(code, UNAUTHENTICATED | PERMISSION_DENIED) {
                        return Err(Error::new(
                            Kind::Permission,
                            format!(
                                "etcd refused the request (check {AUTH_FLAGS}, and the \
                                 user's roles): {last}"
                            ),
                        ));
                    }
                    // "User name is empty" has the code of a malformed request: ask etcd
                    // whether it wants credentials, by the code of an anonymous login.
                    if code == INVALID_ARGUMENT
                        && self.auth.is_none()
                        && path != AUTHENTICATE
                        && self.auth_enabled()
                    {
                        self.last_code = code;
                        return Err(Error::new(
                            Kind::Permission,
                            format!(
                                "etcd has authentication enabled and no user was given: give \
                                 {AUTH_FLAGS} ({last})"
                            ),
                        ));
                    }
                    if !(RETRY_CODES.contains(&code) || status == 503) {
                        return Err(Error::new(Kind::Io, format!("etcd {last}")));
                    }
                }
                Err(e) => {
                    if let Some(refused) = self.tls.as_ref().and_then(|t| t.refusal(&endpoint, &e))
                    {
                        return Err(refused);
                    }
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        self.closed_unanswered = true;
                    }
                    last = format!("{endpoint}: {e}");
                }
            }
            log::debug!("etcd request failed, trying the next endpoint: {last}");
            self.conn = None;
            self.current = (self.current + 1) % self.endpoints.len();
            if self.current == 0 {
                std::thread::sleep(
                    BACKOFF.min(self.deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }

    /// One request on the kept-alive connection (opened when there is none).
    fn once(
        &mut self,
        endpoint: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Answer> {
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(self.connect(endpoint, timeout)?));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        conn.get_ref().tcp().set_read_timeout(Some(timeout))?;
        conn.get_ref().tcp().set_write_timeout(Some(timeout))?;
        let auth = match &self.token {
            Some(t) => format!("Authorization: {t}\r\n"),
            None => String::new(),
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
             {auth}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        conn.get_mut().write_all(&req)?;
        conn.get_mut().flush()?;
        let (status, body, keep) = read_response(conn)?;
        if !keep {
            // The answer ended the connection: the next request opens a new one.
            self.conn = None;
        }
        if (400..500).contains(&status) && serde_json::from_slice::<Value>(&body).is_err() {
            // Not the gateway's answer: etcd's TLS listener answering plain HTTP, say.
            self.conn = None;
            let text = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(100)
                .collect();
            return Ok(Answer::Foreign(status, text));
        }
        let v = serde_json::from_slice(&body).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not JSON from the gateway: {e}"),
            )
        })?;
        Ok(Answer::Gateway(status, v))
    }
}

/// What one request got back.
enum Answer {
    /// The gateway's status and JSON.
    Gateway(u16, Value),
    /// A client error that is not JSON, so not from the gateway (a TLS listener's
    /// answer to plain HTTP): the status and the start of the text.
    Foreign(u16, String),
}

/// The host of `HOST:PORT` (an IPv6 address keeps its brackets).
fn host_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h)
}

fn resolve(endpoint: &str) -> std::io::Result<SocketAddr> {
    endpoint.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the endpoint")
    })
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Status and body of one HTTP/1.1 response (Content-Length or chunked), and whether
/// the connection may carry another request: not after `Connection: close`, an
/// HTTP/1.0 answer without `Connection: keep-alive`, or a body that ended with the
/// connection.
fn read_response(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<u8>, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let mut keep = !line.starts_with("HTTP/1.0");
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                for token in v.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep = true;
                    }
                }
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        // HTTP/1.0 style: the body ends where the connection does.
        r.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((status, body, keep))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway's JSON carries bytes.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unb64(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(Error::new(Kind::Io, "etcd gateway sent bad base64")),
        };
        n = (n << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("/ve-alloc/lease/web", "L3ZlLWFsbG9jL2xlYXNlL3dlYg=="),
        ] {
            assert_eq!(b64(raw.as_bytes()), enc);
            assert_eq!(unb64(enc).unwrap(), raw.as_bytes());
        }
        assert!(unb64("a*b").is_err());
    }

    #[test]
    fn responses_with_length_or_chunks() {
        let mut r = &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"[..];
        assert_eq!(read_response(&mut r).unwrap(), (200, b"{}".to_vec(), true));
        let mut r =
            &b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n"[..];
        assert_eq!(
            read_response(&mut r).unwrap(),
            (503, b"{\"a\":1}".to_vec(), true)
        );
        // No length: the body ends with the connection (an HTTP/1.0 answer).
        let mut r = &b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request\n"[..];
        assert_eq!(
            read_response(&mut r).unwrap(),
            (400, b"Client sent an HTTP request\n".to_vec(), false)
        );
        let mut r = &b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\n{}"[..];
        assert!(!read_response(&mut r).unwrap().2);
        let mut r =
            &b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}"[..];
        assert!(read_response(&mut r).unwrap().2);
        let mut r = &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"[..];
        assert!(!read_response(&mut r).unwrap().2);
    }

    /// A gateway stand-in on loopback that answers the first request on each of three
    /// connections: with `Connection: close`, then with a body that ends with the
    /// connection, then kept alive. After answering it shuts its sending side but goes
    /// on reading, and returns how many requests each connection carried.
    fn one_shot_server(l: std::net::TcpListener) -> Vec<usize> {
        use std::io::Read;
        let mut counts = Vec::new();
        for mode in 0..3 {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut n = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut length = 0;
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                n += 1;
                let answer: &[u8] = match (mode, n) {
                    (0, 1) => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 8\r\n\r\n{\"n\":10}",
                    (1, 1) => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"n\":11}",
                    (2, _) => b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"n\":12}",
                    _ => continue,
                };
                w.write_all(answer).unwrap();
                if mode < 2 {
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                }
            }
            counts.push(n);
        }
        counts
    }

    /// A response that ends the connection (`Connection: close`, or a body read up to
    /// the end of the connection) is the last on that connection: the next request
    /// goes on a new one, without a failed attempt first.
    #[test]
    fn a_connection_the_answer_ended_is_not_used_again() {
        if !testbed::privileged("a_connection_the_answer_ended_is_not_used_again", &["ip"]) {
            return;
        }
        let mut sandbox = testbed::Sandbox::new();
        let ns = sandbox.netns("conn");
        let (counts, answers, closed) = testbed::in_netns(&ns.path(), || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = l.local_addr().unwrap().to_string();
            let server = std::thread::spawn(move || one_shot_server(l));
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut c = Client::new(vec![endpoint], None, None, deadline);
            let answers: Vec<Value> = (0..3)
                .map(|_| c.call("/v3/kv/range", &serde_json::json!({})).unwrap())
                .collect();
            let closed = c.closed_unanswered;
            drop(c);
            (server.join().unwrap(), answers, closed)
        })
        .unwrap();
        let n: Vec<i64> = answers.iter().map(|v| v["n"].as_i64().unwrap()).collect();
        assert_eq!(n, [10, 11, 12]);
        assert_eq!(counts, [1, 1, 1], "requests per connection");
        assert!(!closed, "a request met a closed connection");
    }
}
