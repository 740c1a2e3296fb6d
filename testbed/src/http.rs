//! HTTP served and fetched inside network namespaces, std only: a server that answers
//! with the peer address it saw, and `GET /` from a namespace.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::netns::{enter, in_netns};

/// A tiny HTTP/1.0 server listening inside a network namespace, answering every
/// request with `200 OK` and a body made from the peer address it saw.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Listen on `addr` inside the namespace at `ns`; returns once the socket is bound.
    pub fn start(
        ns: &Path,
        addr: SocketAddr,
        body: impl Fn(SocketAddr) -> String + Send + 'static,
    ) -> io::Result<HttpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, stop2) = (ns.to_path_buf(), stop.clone());
        let thread = thread::spawn(move || {
            let listener = enter(&ns)
                .and_then(|()| TcpListener::bind(addr))
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let _ = answer(conn, &body(peer));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("server thread died"))??;
        Ok(HttpServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request (up to the blank line) and write the response.
fn answer(mut conn: TcpStream, body: &str) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    write!(
        conn,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.shutdown(Shutdown::Write)
}

/// `GET /` from inside the namespace at `ns`; the body of a `200` answer.
pub fn http_get(ns: &Path, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    in_netns(ns, move || get(addr, timeout))
        .map_err(|e| format!("entering {}: {e}", ns.display()))?
}

/// [`http_get`], retried for up to `within` while it fails: for a connection that must
/// work, where a loaded machine may still be resolving neighbours in a namespace made a
/// moment ago. The last error when it never worked.
pub fn http_get_within(ns: &Path, addr: SocketAddr, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match http_get(ns, addr, left.max(Duration::from_millis(500))) {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let fail = |e: io::Error| format!("GET http://{addr}/: {e}");
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    conn.set_read_timeout(Some(timeout)).map_err(fail)?;
    write!(conn, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(fail)?;
    let mut resp = String::new();
    conn.read_to_string(&mut resp).map_err(fail)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}/: malformed answer {resp:?}"))?;
    if !head.starts_with("HTTP/1.0 200 ") && !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!(
            "GET http://{addr}/: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}
