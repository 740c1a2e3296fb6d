//! The real [`Netlink`]: a blocking route netlink socket. A batch goes out in as few
//! `send`s as the kernel allows (it runs one dump per socket at a time), and the
//! answers are told apart by sequence number.

use std::{
    cell::Cell,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Instant,
};

use common::{netns::Netns, Error, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};

use super::{msg::Msg, settle, timed_out, wire, Netlink, Reply, Req, TIMEOUT};

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

    /// A socket in the container namespace `ns`; it stays bound to that namespace
    /// wherever it is used. The calling thread steps into `ns` for the one `socket(2)`
    /// and straight back, and nothing else runs on it meanwhile: two `setns` calls,
    /// where a thread of its own cost a start and a join, which waits for the scheduler
    /// (`strace -T`: the join's futex 4.2 ms with both cores busy).
    pub fn inside(ns: &Netns) -> Result<Self> {
        const DOING: &str = "opening a netlink socket in the container namespace";
        let home = Netns::current()?;
        ns.enter()?;
        let sock = netlink_sys::Socket::new(NETLINK_ROUTE);
        if let Err(e) = home.enter() {
            // Cannot happen (the thread just left it, with the right to): but no other
            // work may ever run in the container's namespace by mistake.
            eprintln!("ve-link: error: {e}; stopping");
            std::process::abort();
        }
        let sock = sock.map_err(|e| Error::io(DOING, e))?;
        Self::configure(sock).map_err(|e| Error::io(DOING, e))
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

/// `RTM_DELLINK`: the kernel's notification that a link left the namespace.
const RTM_DELLINK: u16 = 17;
/// `NLMSG_ERROR`: the kernel's answer to a request with `NLM_F_ACK`.
const NLMSG_ERROR: u16 = 2;

impl Socket {
    /// Delete link `index` (a veth takes its peer along) and return once the kernel has
    /// taken it out of the namespace, not when it answers the request. The kernel
    /// unlists the pair, removes its addresses and routes and announces it
    /// (`RTM_DELLINK`) within a few milliseconds, then waits for an RCU grace period
    /// before it frees the devices and answers (`netdev_run_todo`: 15-30 ms here, most
    /// of a teardown), and nothing after a `down` depends on that wait. So a child
    /// process sends the request and waits for the answer, and this returns at the
    /// announcement, or with the child's answer if that comes first (an error, or the
    /// link was gone already). Without a child (fork failed) it waits as before.
    pub fn del_link_unwaited(&self, index: u32) -> io::Result<()> {
        // Children of earlier calls that have left since.
        reap_later(None);
        let req = Req::DelLink(index);
        let seq = self.next_seq();
        let mut bytes = Vec::new();
        for (m, flags) in wire::encode(&req) {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | flags;
            header.sequence_number = seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(Msg::from(m)));
            msg.finalize();
            let at = bytes.len();
            bytes.resize(at + msg.buffer_len(), 0);
            msg.serialize(&mut bytes[at..]);
        }
        // Listening before the request goes out: the announcement cannot be missed.
        let mut watch = netlink_sys::Socket::new(NETLINK_ROUTE)?;
        watch.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
        let mut del = netlink_sys::Socket::new(NETLINK_ROUTE)?;
        del.bind_auto()?;
        del.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&del, TIMEOUT)?;
        let (rd, wr) = pipe()?;
        let mut answer = vec![0u8; 4096];
        // SAFETY: fork has no preconditions; the child below only makes system calls on
        // memory and descriptors it inherited, runs no destructors and leaves by _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            log::debug!(
                "no child for the delete ({}); waiting for the kernel",
                io::Error::last_os_error()
            );
            return self.act(req);
        }
        if pid == 0 {
            // The child: it holds no stdio, so a pipeline or `$(...)` around the caller
            // does not wait for it either.
            // SAFETY: closing and writing descriptors this process owns; _exit ends it
            // without running anything of the parent's.
            unsafe {
                // The two it needs become 3 and 4 (through copies at 10 and up, which
                // no dup2 below overwrites); every other inherited descriptor goes.
                let d = libc::fcntl(del.as_raw_fd(), libc::F_DUPFD, 10);
                let w = libc::fcntl(wr.as_raw_fd(), libc::F_DUPFD, 10);
                if d < 0 || w < 0 || libc::dup2(d, 3) < 0 || libc::dup2(w, 4) < 0 {
                    libc::_exit(1)
                }
                for fd in 0..3 {
                    libc::close(fd);
                }
                if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0 {
                    // Before Linux 5.9: one by one, up to the descriptor limit.
                    let mut lim: libc::rlimit = std::mem::zeroed();
                    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                        lim.rlim_cur.min(1 << 20) as libc::c_int
                    } else {
                        1 << 16
                    };
                    for fd in 5..max {
                        libc::close(fd);
                    }
                }
                let code = answer_to(3, &bytes, seq, &mut answer).to_ne_bytes();
                libc::write(4, code.as_ptr().cast(), code.len());
                libc::_exit(0)
            }
        }
        drop(del);
        drop(wr);
        let mut reaped = false;
        let gone = self.await_gone(index, &watch, &rd, pid, &mut reaped);
        if !reaped {
            // The announcement came first: the child may still wait for its answer.
            reap_later(Some(pid));
        }
        settle(&req, gone.map(|()| Reply::Done)).map(|_| ())
    }

    /// Wait (within [`TIMEOUT`]) for link `index` to be announced gone, or for the
    /// child `pid` to report the kernel's answer on `rd`.
    fn await_gone(
        &self,
        index: u32,
        watch: &netlink_sys::Socket,
        rd: &OwnedFd,
        pid: libc::pid_t,
        reaped: &mut bool,
    ) -> io::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            let mut fds = [
                libc::pollfd {
                    fd: watch.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: rd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: two valid pollfd entries, and their count.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                let mut code = [0u8; 4];
                // SAFETY: reading into a buffer of the length passed.
                let n = unsafe { libc::read(rd.as_raw_fd(), code.as_mut_ptr().cast(), code.len()) };
                // It leaves right after writing: reap it.
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                *reaped = true;
                return match (n, i32::from_ne_bytes(code)) {
                    (4, 0) => Ok(()),
                    (4, errno) => Err(io::Error::from_raw_os_error(errno)),
                    _ => Err(io::Error::other("the process deleting the link died")),
                };
            }
            if fds[0].revents != 0 {
                buf.clear();
                match watch.recv(&mut buf, libc::MSG_DONTWAIT) {
                    Ok(_) if announces_gone(&buf, index) => return Ok(()),
                    Ok(_) => {}
                    // Announcements were dropped (the socket's buffer overflowed): ask.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if self.link_by_index(index)?.is_none() {
                            return Ok(());
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Children of earlier deletes that had not left yet when their delete returned.
static UNREAPED: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

/// Reap `pid` (if any) if it has left, else keep it for the next delete; and reap every
/// earlier child that has left since (none stays a zombie past the next delete).
fn reap_later(pid: Option<libc::pid_t>) {
    let mut pending = UNREAPED.lock().unwrap_or_else(|p| p.into_inner());
    pending.extend(pid);
    // SAFETY: polling our own children, never blocking. 0: still running; else
    // reaped, or not ours to wait for any more (ECHILD): forgotten either way.
    pending.retain(|&p| unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) } == 0);
}

/// Whether a datagram of link notifications says link `index` left the namespace.
fn announces_gone(mut buf: &[u8], index: u32) -> bool {
    // nlmsghdr (length, type, ...: 16 bytes), then ifinfomsg (family, pad, type, index).
    while buf.len() >= 24 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let ifindex = u32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]);
        if kind == RTM_DELLINK && ifindex == index {
            return true;
        }
        let next = (len + 3) & !3;
        if len < 16 || next > buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    false
}

/// In the child: send `req` on socket `fd`, wait for the kernel's answer to `seq`
/// (the socket's receive timeout bounds each wait) and return the errno it carries,
/// 0 for success. Only system calls: it runs between fork and _exit.
fn answer_to(fd: RawFd, req: &[u8], seq: u32, buf: &mut [u8]) -> i32 {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: a buffer and its length.
    if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return errno();
    }
    loop {
        // SAFETY: a buffer and its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return libc::ETIMEDOUT,
                e => return e,
            }
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= 20 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let got = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
            if kind == NLMSG_ERROR && got == seq {
                return i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]).wrapping_neg();
            }
            let next = (len + 3) & !3;
            if len < 16 || next > rest.len() {
                break;
            }
            rest = &rest[next..];
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
    fn del_link_unwaited(&self, index: u32) -> io::Result<()> {
        Socket::del_link_unwaited(self, index)
    }

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

    /// The pair leaves both namespaces a few milliseconds into a delete; the kernel
    /// answers only after an RCU grace period. An unwaited delete returns in between:
    /// timed against waiting for the answer, on identical pairs, alternately.
    #[test]
    fn an_unwaited_delete_returns_with_the_pair_gone_before_the_kernel_answers() {
        if !testbed::privileged("unwaited_delete", &["ip"]) {
            return;
        }
        let mut sb = testbed::Sandbox::new();
        let (host, ctr) = (sb.netns("host"), sb.netns("ctr"));
        let (mut unwaited, mut waited) = (Vec::new(), Vec::new());
        for round in 0..8 {
            host.ip(&[
                "link",
                "add",
                "ve-t",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ctr.name(),
            ]);
            let inside = testbed::spawn_in(&ctr.path(), || Socket::open().unwrap())
                .join()
                .unwrap();
            let took = testbed::spawn_in(&host.path(), move || {
                let s = Socket::open().unwrap();
                let l = s.link_by_name("ve-t").unwrap().unwrap();
                let start = Instant::now();
                if round % 2 == 0 {
                    s.del_link_unwaited(l.index).unwrap();
                } else {
                    s.act(Req::DelLink(l.index)).unwrap();
                }
                let took = start.elapsed();
                assert_eq!(s.link_by_index(l.index).unwrap(), None, "host end");
                assert_eq!(inside.link_by_name("eth0").unwrap(), None, "peer");
                // Gone already is success.
                s.del_link_unwaited(l.index).unwrap();
                took
            })
            .join()
            .unwrap();
            if round % 2 == 0 {
                &mut unwaited
            } else {
                &mut waited
            }
            .push(took);
        }
        let median = |v: &mut Vec<std::time::Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (u, w) = (median(&mut unwaited), median(&mut waited));
        assert!(u * 2 < w, "unwaited {unwaited:?}, waited {waited:?}");
    }

    /// `inside` leaves the calling thread where it was and gives a socket that sees the
    /// container's links, not the caller's.
    #[test]
    fn a_socket_inside_sees_the_container_and_the_caller_stays_home() {
        if !testbed::privileged("socket_inside", &["ip"]) {
            return;
        }
        let mut sb = testbed::Sandbox::new();
        let (host, ctr) = (sb.netns("host"), sb.netns("ctr"));
        host.ip(&[
            "link",
            "add",
            "only-host0",
            "type",
            "veth",
            "peer",
            "name",
            "only-host1",
        ]);
        ctr.ip(&[
            "link",
            "add",
            "only-ctr0",
            "type",
            "veth",
            "peer",
            "name",
            "only-ctr1",
        ]);
        let ctr_path = ctr.path();
        testbed::spawn_in(&host.path(), move || {
            let home = Netns::current().unwrap().id().unwrap();
            let ns = common::netns::NetnsSpec::Path(ctr_path).open().unwrap();
            let inside = Socket::inside(&ns).unwrap();
            assert_eq!(Netns::current().unwrap().id().unwrap(), home);
            assert!(inside.link_by_name("only-ctr0").unwrap().is_some());
            assert_eq!(inside.link_by_name("only-host0").unwrap(), None);
            let here = Socket::open().unwrap();
            assert!(here.link_by_name("only-host0").unwrap().is_some());
            assert_eq!(here.link_by_name("only-ctr0").unwrap(), None);
        })
        .join()
        .unwrap();
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
