//! The real [`Netlink`]: a blocking route netlink socket. A batch goes out in as few
//! `send`s as the kernel allows (it runs one dump per socket at a time), and the
//! answers are told apart by sequence number.

use std::{
    cell::Cell,
    io,
    os::fd::{AsFd, AsRawFd},
    time::Instant,
};

use common::{netns::Netns, Error, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};

use super::{msg::Msg, timed_out, wire, Netlink, Reply, Req, TIMEOUT};

/// Room for one datagram: the kernel sizes dump parts to what the reader asks for.
const RECV_BUF: usize = 64 * 1024;

/// At most this many messages unanswered: the kernel answers a whole `send` before it
/// returns, and answers that do not fit the receive buffer (about 200 KiB; a link is
/// over 1 KiB) are dropped, which would leave the batch waiting for them.
const WINDOW: usize = 64;

/// How far the socket's receive timeout may be from what is left of the deadline.
const SLACK: std::time::Duration = std::time::Duration::from_millis(50);

/// A route netlink socket of one namespace.
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: Cell<u32>,
    /// The socket's receive timeout as last set.
    timeout: Cell<std::time::Duration>,
}

/// One message in flight and what has come back for it.
struct Flight {
    msg: NetlinkMessage<Msg>,
    /// Which request (of the batch) it belongs to.
    req: usize,
    replies: Vec<RouteNetlinkMessage>,
    error: Option<io::Error>,
    done: bool,
}

impl Flight {
    fn flags(&self) -> u16 {
        self.msg.header.flags
    }
    fn is_dump(&self) -> bool {
        self.flags() & NLM_F_DUMP == NLM_F_DUMP
    }
}

impl Socket {
    /// A socket in the calling thread's namespace, with strict checking (the kernel
    /// rejects attributes it does not support in requests and filters dumps).
    pub fn open() -> io::Result<Self> {
        Self::configure(netlink_sys::Socket::new(NETLINK_ROUTE)?)
    }

    /// The host side: a socket in ve-link's own namespace.
    pub fn host() -> Result<Self> {
        Self::open().map_err(|e| Error::io("opening a netlink socket", e))
    }

    /// A socket in the container namespace `ns`, opened on a short-lived thread that
    /// entered it; the socket stays bound to that namespace wherever it is used.
    pub fn inside(ns: &Netns) -> Result<Self> {
        let t = ns.spawn("ve-link-netns", || {
            netlink_sys::Socket::new(NETLINK_ROUTE)
                .map_err(|e| Error::io("opening a netlink socket in the container namespace", e))
        })?;
        let sock = t
            .join()
            .map_err(|_| Error::internal("the container namespace thread died"))??;
        Self::configure(sock)
            .map_err(|e| Error::io("opening a netlink socket in the container namespace", e))
    }

    fn configure(mut sock: netlink_sys::Socket) -> io::Result<Self> {
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_netlink_get_strict_chk(true)?;
        set_recv_timeout(&sock, TIMEOUT)?;
        Ok(Socket {
            sock,
            seq: Cell::new(0),
            timeout: Cell::new(TIMEOUT),
        })
    }

    fn next_seq(&self) -> u32 {
        let s = self.seq.get().wrapping_add(1).max(1);
        self.seq.set(s);
        s
    }

    /// Send `flights` and wait (within [`TIMEOUT`] in all) until each is answered.
    fn fly(&self, flights: &mut [Flight]) -> io::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        let mut next = 0;
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            self.send_some(flights, &mut next)?;
            if flights[..next].iter().all(|f| f.done) {
                if next == flights.len() {
                    return Ok(());
                }
                continue;
            }
            // Keep the socket's receive timeout within the deadline of the whole batch.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            let t = self.timeout.get();
            if t > left + SLACK || t + SLACK < left {
                set_recv_timeout(&self.sock, left)?;
                self.timeout.set(left);
            }
            buf.clear();
            match self.sock.recv(&mut buf, libc::MSG_TRUNC) {
                Ok(n) if n > buf.len() => {
                    return Err(io::Error::other(format!(
                        "netlink reply of {n} bytes does not fit in {RECV_BUF}"
                    )))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Past the deadline is checked at the top of the loop.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            take(&buf, flights);
        }
    }

    /// Send what may go now, in one `send`: nothing while a dump runs (the kernel runs
    /// one per socket), at most up to and including the next dump, and no more than
    /// [`WINDOW`] unanswered messages (their answers must fit the receive buffer).
    fn send_some(&self, flights: &mut [Flight], next: &mut usize) -> io::Result<()> {
        let sent = &flights[..*next];
        if sent.iter().any(|f| f.is_dump() && !f.done) {
            return Ok(());
        }
        let mut budget = WINDOW.saturating_sub(sent.iter().filter(|f| !f.done).count());
        let mut out = Vec::new();
        while *next < flights.len() && budget > 0 {
            let f = &mut flights[*next];
            f.msg.finalize();
            let at = out.len();
            out.resize(at + f.msg.buffer_len(), 0);
            f.msg.serialize(&mut out[at..]);
            *next += 1;
            budget -= 1;
            if f.is_dump() {
                break;
            }
        }
        if !out.is_empty() {
            self.sock.send(&out, 0)?;
        }
        Ok(())
    }
}

/// File the messages of one datagram under the flights they answer.
fn take(mut buf: &[u8], flights: &mut [Flight]) {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let (one, rest) = buf.split_at(len);
        buf = rest.get(((len + 3) & !3) - len..).unwrap_or_default();
        let Ok(m) = NetlinkMessage::<Msg>::deserialize(one) else {
            log::debug!("netlink message skipped: no valid header");
            continue;
        };
        let seq = m.header.sequence_number;
        let Some(f) = flights
            .iter_mut()
            .find(|f| !f.done && f.msg.header.sequence_number == seq)
        else {
            continue;
        };
        let multi = m.header.flags & NLM_F_MULTIPART == NLM_F_MULTIPART;
        let answered = !multi && f.flags() & (NLM_F_ACK | NLM_F_DUMP) == 0;
        match m.payload {
            NetlinkPayload::InnerMessage(Msg::Route(r)) => {
                f.replies.push(r);
                f.done = answered;
            }
            NetlinkPayload::InnerMessage(Msg::Opaque(_)) => f.done = answered,
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    f.error = Some(io::Error::from_raw_os_error(code.get().abs()));
                }
                f.done = true;
            }
            NetlinkPayload::Done(d) => {
                if d.code < 0 {
                    f.error = Some(io::Error::from_raw_os_error(d.code.abs()));
                }
                f.done = true;
            }
            _ => {}
        }
    }
}

fn set_recv_timeout(sock: &netlink_sys::Socket, t: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros().max(1) as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Socket {
    /// The raw exchange behind [`Netlink::exchange`]: the replies of each message.
    fn messages(&self, msgs: Vec<(NetlinkPayload<Msg>, u16, usize)>) -> io::Result<Vec<Flight>> {
        let mut flights: Vec<Flight> = msgs
            .into_iter()
            .map(|(payload, flags, req)| {
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | flags;
                header.sequence_number = self.next_seq();
                Flight {
                    msg: NetlinkMessage::new(header, payload),
                    req,
                    replies: Vec::new(),
                    error: None,
                    done: false,
                }
            })
            .collect();
        self.fly(&mut flights)?;
        Ok(flights)
    }
}

impl Netlink for Socket {
    fn exchange(&self, reqs: &[Req]) -> Vec<io::Result<Reply>> {
        let msgs = reqs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                wire::encode(r)
                    .into_iter()
                    .map(move |(m, flags)| (NetlinkPayload::InnerMessage(Msg::from(m)), flags, i))
            })
            .collect();
        let flights = match self.messages(msgs) {
            Ok(f) => f,
            Err(e) => {
                // The whole exchange failed (a timeout): every request says so.
                return reqs
                    .iter()
                    .map(|_| {
                        Err(match e.raw_os_error() {
                            Some(code) => io::Error::from_raw_os_error(code),
                            None => io::Error::new(e.kind(), e.to_string()),
                        })
                    })
                    .collect();
            }
        };
        let mut parts: Vec<(Vec<RouteNetlinkMessage>, Option<io::Error>)> =
            reqs.iter().map(|_| (Vec::new(), None)).collect();
        for f in flights {
            let p = &mut parts[f.req];
            p.0.extend(f.replies);
            if p.1.is_none() {
                p.1 = f.error;
            }
        }
        reqs.iter()
            .zip(parts)
            .map(|(r, (replies, err))| match err {
                Some(e) => Err(e),
                None => Ok(wire::decode(r, replies)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_the_kernel_never_answers_ends_after_the_timeout_with_exit_75() {
        let s = Socket::open().unwrap();
        // NLMSG_NOOP without NLM_F_ACK: the kernel takes it and says nothing.
        let start = Instant::now();
        let e = match s.messages(vec![(NetlinkPayload::Noop, 0, 0)]) {
            Err(e) => e,
            Ok(_) => panic!("answered"),
        };
        let took = start.elapsed();
        assert!(took >= TIMEOUT && took < TIMEOUT * 2, "{took:?}");
        let e = super::super::step_error("listing links", e);
        assert_eq!(e.exit(), common::Exit::TempFail, "{e}");
        assert_eq!(
            e.to_string(),
            "listing links: no answer from the kernel within 5 s"
        );
    }

    #[test]
    fn a_batch_gets_each_answer_back_by_sequence_number_dumps_included() {
        let s = Socket::open().unwrap();
        let r = s.batch(&[
            Req::Links,
            Req::LinkByName("lo".into()),
            Req::Addrs {
                index: 1,
                nsid: None,
            },
            Req::LinkByName("no-such-link0".into()),
            Req::Links,
            Req::LinkByIndex(1),
        ]);
        let mut r = r.into_iter().map(|r| r.unwrap());
        let all = r.next().unwrap().links().unwrap();
        let lo = r.next().unwrap().link().unwrap().unwrap();
        assert_eq!(lo.name, "lo");
        assert!(all.iter().any(|l| l.index == lo.index));
        r.next().unwrap().addrs().unwrap();
        assert_eq!(r.next().unwrap().link().unwrap(), None);
        assert_eq!(r.next().unwrap().links().unwrap().len(), all.len());
        assert_eq!(r.next().unwrap().link().unwrap().unwrap().name, "lo");
    }

    #[test]
    fn a_batch_larger_than_the_receive_buffer_holds_gets_every_answer() {
        let s = Socket::open().unwrap();
        // Over 1 KiB each: 1,000 at once would not fit the receive buffer.
        let reqs = vec![Req::LinkByIndex(1); 1000];
        let start = Instant::now();
        let r = s.batch(&reqs);
        assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
        assert_eq!(r.len(), 1000);
        for a in r {
            assert_eq!(a.unwrap().link().unwrap().unwrap().index, 1);
        }
    }
}
