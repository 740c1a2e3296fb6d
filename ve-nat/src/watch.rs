//! `ve-nat watch` (`up --watch`): apply, then stay and put the rules back whenever
//! someone else takes them away: `nft flush ruleset` (NixOS's nftables reload), a
//! firewalld reload or restart, iptables rules flushed.
//!
//! The kernel says when nf_tables changes: a NETLINK_NETFILTER socket in the group
//! NFNLGRP_NFTABLES gets every change of every table in the namespace, iptables-nft's
//! included. iptables-legacy has no such events, so there the watcher polls. Whatever
//! woke it, it runs the comparison `check` runs and re-applies only when that differs.
//! firewalld's `Reloaded` signal and its (re)appearance on the bus wake it too (its
//! zone settings are part of the comparison). SIGTERM or SIGINT end it with exit 0.
//!
//! Once the first apply is in, it also runs the [`proxy`] that makes IPv6 forwards
//! answer on `[::1]` (the kernel cannot), for as long as it runs.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use common::{Error, Result};

use crate::{firewalld, proxy};

/// Why the watcher woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// nf_tables changed.
    Netfilter,
    /// firewalld reloaded, or came onto or left the bus.
    Firewalld,
    /// SIGTERM or SIGINT.
    Stop,
}

/// After a first event, wait until the ruleset has been quiet this long (a reload is
/// many changes in a row) ...
const QUIET: Duration = Duration::from_millis(30);
/// ... but no longer than this.
const SETTLE_MAX: Duration = Duration::from_millis(300);
/// After a comparison or an apply failed (firewalld still starting, a lock held), try
/// again this soon.
const RETRY: Duration = Duration::from_secs(1);

/// What the watcher is given: the comparison `check` runs, the `up` that fixes it, and
/// how often to look without being woken.
pub struct Watch<'a> {
    pub differences: &'a dyn Fn() -> Result<Vec<String>>,
    pub apply: &'a dyn Fn() -> Result<()>,
    pub poll: Duration,
    /// What the [`proxy`] listens for on ::1 (empty: no proxy).
    pub proxy: Vec<proxy::Route>,
}

/// Apply, say READY=1, then keep the rules in place until SIGTERM or SIGINT (Ok). A
/// failing first apply is the error; later failures are logged and retried.
pub fn run(w: &Watch<'_>) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    start_signals_and_bus(tx.clone())?;
    match nf_events() {
        Ok(sock) => {
            let tx = tx.clone();
            thread::spawn(move || read_events(sock, tx));
        }
        Err(e) => log::warn!(
            "cannot subscribe to nf_tables changes ({e}); looking every {} s instead",
            w.poll.as_secs()
        ),
    }
    (w.apply)()?;
    // Bound before READY=1; closed when this returns (the listeners go with it).
    let _proxy = proxy::start(w.proxy.clone());
    common::notify::ready();
    log::info!("rules applied; watching for changes");
    let mut state = State::default();
    let mut wait = w.poll;
    loop {
        match rx.recv_timeout(wait) {
            Ok(Event::Stop) => return Ok(()),
            Ok(ev) => {
                log::debug!("woken by {ev:?}");
                if settle(&rx) {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        wait = match reconcile(w, &mut state) {
            Ok(true) => RETRY,
            Ok(false) => w.poll,
            Err(e) => {
                log::warn!("{e}; trying again in {} s", RETRY.as_secs());
                RETRY
            }
        };
    }
}

/// Swallow the events of one burst of changes; true when a stop came in.
fn settle(rx: &Receiver<Event>) -> bool {
    let start = Instant::now();
    while start.elapsed() < SETTLE_MAX {
        match rx.recv_timeout(QUIET) {
            Ok(Event::Stop) => return true,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
    false
}

/// How many applies in a row may leave a difference before it counts as one that
/// re-applying cannot fix: a firewalld that is starting flushes iptables more than once,
/// and may do so between our apply and our look.
const TRIES: u32 = 3;

/// What the watcher remembers between comparisons.
#[derive(Debug, Default)]
struct State {
    /// A difference that [`TRIES`] applies in a row left (a foreign chain that drops):
    /// reported once, and not fought over at every event.
    unfixable: Option<Vec<String>>,
    /// Applies in a row that left a difference.
    tries: u32,
}

/// Compare; re-apply when it differs. True when it should look again soon (an apply
/// left a difference that may yet go away).
fn reconcile(w: &Watch<'_>, st: &mut State) -> Result<bool> {
    let diffs = (w.differences)()?;
    if diffs.is_empty() {
        *st = State::default();
        return Ok(false);
    }
    if st.unfixable.as_ref() == Some(&diffs) {
        return Ok(false);
    }
    log::warn!(
        "the installed rules differ ({}{}); re-applying",
        diffs[0],
        if diffs.len() > 1 {
            format!(" and {} more", diffs.len() - 1)
        } else {
            String::new()
        }
    );
    let t = Instant::now();
    (w.apply)()?;
    let after = (w.differences)()?;
    if after.is_empty() {
        log::info!("re-applied in {} ms", t.elapsed().as_millis());
        *st = State::default();
        return Ok(false);
    }
    st.tries += 1;
    if st.tries < TRIES {
        log::info!(
            "still differs after re-applying ({}); looking again in {} s",
            after[0],
            RETRY.as_secs()
        );
        return Ok(true);
    }
    for d in &after {
        log::warn!("still differs after re-applying {TRIES} times: {d}");
    }
    st.tries = 0;
    st.unfixable = Some(after);
    Ok(false)
}

/// `nfnetlink.h`: the multicast group of nf_tables changes.
const NFNLGRP_NFTABLES: u32 = 7;

/// A netlink socket that gets a message for every nf_tables change in this namespace.
fn nf_events() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is a valid value; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
    // SAFETY: addr is a valid sockaddr_nl of the length given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // A big transaction is many messages: a larger buffer overflows less often (an
    // overflow is a wake-up all the same).
    let _ = crate::nfnl::set_int_option(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 1 << 20);
    Ok(sock)
}

/// Turn every message (and every overflow) into an event, until the socket fails.
fn read_events(sock: OwnedFd, tx: Sender<Event>) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: recv into a buffer of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Messages were lost: something changed.
                Some(libc::ENOBUFS) => {}
                _ => {
                    log::warn!("reading nf_tables changes: {e}; looking at intervals only");
                    return;
                }
            }
        }
        if tx.send(Event::Netfilter).is_err() {
            return;
        }
    }
}

/// A thread that turns SIGTERM and SIGINT, and firewalld's `Reloaded` and name changes
/// (when there is a bus), into events. Returns once the signal handlers are in place.
fn start_signals_and_bus(tx: Sender<Event>) -> Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(signals_and_bus(tx, ready_tx));
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::io("installing signal handlers", e)),
        Err(_) => Err(Error::internal("the signal thread ended before it started")),
    }
}

async fn signals_and_bus(tx: Sender<Event>, ready: Sender<io::Result<()>>) {
    use futures_util::StreamExt;
    use tokio::signal::unix::{signal, SignalKind};

    let handlers = signal(SignalKind::terminate())
        .and_then(|t| signal(SignalKind::interrupt()).map(|i| (t, i)));
    let (mut term, mut int) = match handlers {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut streams = bus_streams().await;
    loop {
        let got = match streams.as_mut() {
            Some((reloaded, owners)) => tokio::select! {
                _ = term.recv() => Some(Event::Stop),
                _ = int.recv() => Some(Event::Stop),
                m = reloaded.next() => m.map(|_| Event::Firewalld),
                m = owners.next() => m.map(|_| Event::Firewalld),
            },
            None => tokio::select! {
                _ = term.recv() => Some(Event::Stop),
                _ = int.recv() => Some(Event::Stop),
            },
        };
        let ev = match got {
            Some(ev) => ev,
            None => {
                log::warn!("lost the system bus; no longer hearing of firewalld reloads");
                streams = None;
                continue;
            }
        };
        if ev == Event::Firewalld {
            log::info!("firewalld reloaded, started or stopped");
        }
        let stop = ev == Event::Stop;
        if tx.send(ev).is_err() || stop {
            return;
        }
    }
}

type Streams = (zbus::MessageStream, zbus::MessageStream);

/// Subscriptions to firewalld's `Reloaded` and to its name changing owner; `None`
/// without a system bus. Any sender's `Reloaded` only makes the watcher compare again,
/// so the sender is not checked.
async fn bus_streams() -> Option<Streams> {
    let build = zbus::connection::Builder::system().build();
    let conn = match tokio::time::timeout(Duration::from_secs(10), build).await {
        Ok(Ok(c)) => c,
        _ => {
            log::debug!("no system bus: not listening for firewalld");
            return None;
        }
    };
    let reloaded = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(firewalld::IFACE)
        .member("Reloaded")
        .path(firewalld::PATH)
        .build()
        .ok()?;
    let owner = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .add_arg(firewalld::NAME)
        .build()
        .ok()?;
    let a = zbus::MessageStream::for_match_rule(reloaded, &conn, None)
        .await
        .map_err(|e| log::warn!("subscribing to firewalld's Reloaded: {e}"))
        .ok()?;
    let b = zbus::MessageStream::for_match_rule(owner, &conn, None)
        .await
        .map_err(|e| log::warn!("subscribing to firewalld's name: {e}"))
        .ok()?;
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn reconcile_applies_only_on_a_difference_and_does_not_fight_a_lasting_one() {
        let diffs = Cell::new(0usize);
        let applied = Cell::new(0usize);
        // Applying fixes the difference unless `lasting` is set.
        let lasting = Cell::new(false);
        let differences = || {
            Ok(if diffs.get() > 0 {
                vec!["nat: ve-nat-post missing".to_string()]
            } else {
                vec![]
            })
        };
        let apply = || {
            applied.set(applied.get() + 1);
            if !lasting.get() {
                diffs.set(0);
            }
            Ok(())
        };
        let w = Watch {
            differences: &differences,
            apply: &apply,
            poll: Duration::from_secs(1),
            proxy: Vec::new(),
        };
        let mut st = State::default();
        assert!(!reconcile(&w, &mut st).unwrap());
        assert_eq!(applied.get(), 0);
        diffs.set(1);
        assert!(!reconcile(&w, &mut st).unwrap());
        assert_eq!((applied.get(), diffs.get()), (1, 0));
        lasting.set(true);
        diffs.set(1);
        // Tried again soon, TRIES times in all, then left alone.
        assert!(reconcile(&w, &mut st).unwrap());
        assert!(reconcile(&w, &mut st).unwrap());
        assert!(!reconcile(&w, &mut st).unwrap());
        assert!(!reconcile(&w, &mut st).unwrap());
        assert!(!reconcile(&w, &mut st).unwrap());
        assert_eq!(
            applied.get(),
            1 + TRIES as usize,
            "a lasting difference is fought TRIES times"
        );
        assert!(st.unfixable.is_some());
    }
}
