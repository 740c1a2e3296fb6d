//! `ve-link routes`: the host's routes to other nodes' blocks converged to exactly a
//! given set of `BLOCK via ADDR` lines (what `ve-alloc routes` prints), once or for
//! every set of a stream (`--follow`: each set ends with a blank line, as `ve-alloc
//! routes --watch` prints them). Which routes are these is `crate::ours::is_node_route`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    net::IpAddr,
    os::fd::AsRawFd,
    time::Duration,
};

use common::{Error, Exit, Result};

use crate::{
    kernel::{step_error, Netlink, Req, Socket},
    request::{full_len, Route},
};

/// How often `--follow` converges the last set again while no new one comes: a route
/// someone removed (a link that went down takes its routes along) is put back, and one
/// the kernel refused is tried again.
const RECHECK: Duration = Duration::from_secs(5);

/// The set of `text` (`origin` names it in messages): one `BLOCK via ADDR` per line,
/// blank lines and `#` comments ignored. A block with host bits set, a gateway of
/// another family or no unicast address, and one block with two gateways are refused
/// (65), the whole set with them.
pub fn parse_set<'a>(
    lines: impl IntoIterator<Item = (usize, &'a str)>,
    origin: &str,
) -> Result<Vec<Route>> {
    let mut set: BTreeMap<(IpAddr, u8), IpAddr> = BTreeMap::new();
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::data(format!("{origin} line {n}: {why}: {line:?}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let [block, "via", via] = words[..] else {
            return Err(bad("not BLOCK via ADDR"));
        };
        let (addr, len) = block
            .split_once('/')
            .ok_or_else(|| bad("the block has no prefix length"))?;
        let dst: IpAddr = addr.parse().map_err(|_| bad("the block is no address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| (1..=full_len(dst)).contains(l))
            .ok_or_else(|| bad("the block's prefix length is out of range"))?;
        if network(dst, len) != dst {
            return Err(bad(&format!(
                "the block has host bits set (the network is {}/{len})",
                network(dst, len)
            )));
        }
        let via: IpAddr = via.parse().map_err(|_| bad("the gateway is no address"))?;
        if via.is_ipv4() != dst.is_ipv4() {
            return Err(bad(
                "the gateway is of another address family than the block",
            ));
        }
        if via.is_unspecified() || via.is_loopback() || via.is_multicast() {
            return Err(bad("the gateway is no unicast address"));
        }
        if let Some(other) = set.insert((dst, len), via) {
            if other != via {
                return Err(bad(&format!("the block already goes via {other}")));
            }
        }
    }
    Ok(set
        .into_iter()
        .map(|((dst, len), via)| Route {
            dst,
            len,
            via: Some(via),
        })
        .collect())
}

/// `a` with the bits after the first `len` cleared.
fn network(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v) & mask).into())
        }
        IpAddr::V6(v) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v) & mask).into())
        }
    }
}

/// The requests that turn `have` (ours now) into `want`: a changed gateway replaces the
/// route in one step, a new block is added (refused where someone else's route to it is
/// in the way), a block no longer wanted is removed.
pub fn plan(have: &[Route], want: &[Route]) -> Vec<Req> {
    let key = |r: &Route| (r.dst, r.len);
    let mut reqs: Vec<Req> = have
        .iter()
        .filter(|h| !want.iter().any(|w| key(w) == key(h)))
        .map(|h| Req::DelNodeRoute(*h))
        .collect();
    for w in want {
        if have.contains(w) {
            continue;
        }
        let replace = have.iter().any(|h| key(h) == key(w));
        reqs.push(Req::AddNodeRoute { route: *w, replace });
    }
    reqs
}

/// Bring the host's node routes to `want`: one dump, then every change in one batch.
/// Everything that can be done is; the first failure is returned with the others.
pub fn converge(nl: &impl Netlink, want: &[Route]) -> Result<()> {
    let mut have = Vec::new();
    for r in nl.batch(&[Req::NodeRoutes { v6: false }, Req::NodeRoutes { v6: true }]) {
        have.extend(
            r.and_then(|r| r.routes())
                .map_err(|e| step_error("listing the node routes", e))?,
        );
    }
    let reqs = plan(&have, want);
    let mut errors = Vec::new();
    for (req, r) in reqs.iter().zip(nl.batch(&reqs)) {
        let (what, route) = match req {
            Req::DelNodeRoute(r) => ("removing", r),
            Req::AddNodeRoute {
                route,
                replace: true,
            } => ("replacing", route),
            Req::AddNodeRoute { route, .. } => ("adding", route),
            _ => continue,
        };
        match r.and_then(|r| r.done()) {
            Ok(()) => log::info!("{what} route {route}"),
            Err(e) => errors.push(step_error(format!("{what} route {route}"), e)),
        }
    }
    match super::first_of(errors) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// `ve-link routes --from FILE` (not following): the whole file is one set.
///
/// Input with no bytes at all is refused (65), nothing changed: it is what a failed
/// `ve-alloc routes` leaves in the pipe, and taking it for the empty set would remove
/// every route to the other hosts. The empty set is a blank line, as `ve-alloc routes`
/// prints it.
pub fn once(text: &str, origin: &str) -> Result<()> {
    if text.is_empty() {
        return Err(Error::data(format!(
            "{origin}: no input (did the command before the pipe fail?); the empty set, \
             which removes every route of ours, is a blank line"
        )));
    }
    let want = parse_set(text.lines().enumerate().map(|(i, l)| (i + 1, l)), origin)?;
    super::require_privilege(false)?;
    converge(&Socket::host()?, &want)
}

/// `--follow`: converge after every set of `input` (a blank line ends one). A bad set
/// ends the command with 65 and the routes of the last good set in place. While no new
/// set comes, the last is converged again every [`RECHECK`] (a route removed behind its
/// back comes back, one the kernel refused is tried again). At the end of the input,
/// lines after the last blank line are a set cut off (its writer died while printing
/// it): they are ignored, with a warning (and 65 when malformed).
pub fn follow<R: Read + AsRawFd>(mut input: BufReader<R>, origin: &str) -> Result<()> {
    super::require_privilege(false)?;
    let nl = Socket::host()?;
    let mut pending: Vec<(usize, String)> = Vec::new();
    // The last good set, and whether the kernel has it all.
    let mut current: Option<Vec<Route>> = None;
    let mut in_place = true;
    let mut n = 0usize;
    let mut line = String::new();
    loop {
        if let Some(want) = &current {
            let idle = pending.is_empty() && input.buffer().is_empty();
            if idle && !readable(input.get_ref().as_raw_fd(), RECHECK)? {
                match converge(&nl, want) {
                    Ok(()) if !in_place => {
                        log::info!("the routes are in place now");
                        in_place = true;
                    }
                    Ok(()) => {}
                    Err(e) => log::debug!("still: {e}"),
                }
                continue;
            }
        }
        line.clear();
        let got = input
            .read_line(&mut line)
            .map_err(|e| Error::io(format!("reading route sets from {origin}"), e))?;
        if got == 0 {
            if !pending.is_empty() {
                // Malformed is still bad input; a well-formed one may be cut short.
                parse_set(pending.iter().map(|(i, l)| (*i, l.as_str())), origin)?;
                log::warn!(
                    "{origin} ended inside a set (no blank line after line {n}): leaving \
                     the routes as they are"
                );
            }
            return Ok(());
        }
        n += 1;
        if !line.trim().is_empty() {
            pending.push((n, line.clone()));
            continue;
        }
        let want = parse_set(pending.iter().map(|(i, l)| (*i, l.as_str())), origin)?;
        pending.clear();
        in_place = match converge(&nl, &want) {
            Ok(()) => true,
            Err(e) => {
                log::error!("{e}; trying again every {} s", RECHECK.as_secs());
                false
            }
        };
        current = Some(want);
    }
}

/// Whether `fd` becomes readable (or closed) within `timeout`.
fn readable(fd: i32, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::new(Exit::OsErr, format!("waiting for input: {e}")));
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::fake::World, plan::Where};

    fn set(text: &str) -> Result<Vec<Route>> {
        parse_set(text.lines().enumerate().map(|(i, l)| (i + 1, l)), "test")
    }

    #[test]
    fn no_input_at_all_is_refused_before_anything_is_looked_at() {
        // What a failed `ve-alloc routes` leaves in the pipe: not the empty set.
        let e = once("", "stdin").unwrap_err();
        assert_eq!(e.code(), 65, "{e}");
        assert!(
            e.to_string()
                .contains("did the command before the pipe fail"),
            "{e}"
        );
        // A blank line is the empty set.
        assert_eq!(set("\n").unwrap(), []);
    }

    fn r(block: &str, via: &str) -> Route {
        let (a, l) = block.split_once('/').unwrap();
        Route {
            dst: a.parse().unwrap(),
            len: l.parse().unwrap(),
            via: Some(via.parse().unwrap()),
        }
    }

    #[test]
    fn sets_parse_and_bad_lines_are_65_with_their_line() {
        let s = set(
            "# fleet\n10.233.0.64/26 via 198.51.100.12\n\n  fd42::/122 via 2001:db8::2 \n\
                     10.233.0.64/26 via 198.51.100.12\n",
        )
        .unwrap();
        assert_eq!(
            s,
            [
                r("10.233.0.64/26", "198.51.100.12"),
                r("fd42::/122", "2001:db8::2")
            ]
        );
        assert_eq!(set("").unwrap(), []);
        for (bad, why) in [
            ("10.233.0.64/26 198.51.100.12", "not BLOCK via ADDR"),
            ("10.233.0.64 via 198.51.100.12", "no prefix length"),
            (
                "10.233.0.65/26 via 198.51.100.12",
                "host bits set (the network is 10.233.0.64/26)",
            ),
            ("10.233.0.0/33 via 198.51.100.12", "out of range"),
            ("10.233.0.0/0 via 198.51.100.12", "out of range"),
            ("x/26 via 198.51.100.12", "no address"),
            ("10.233.0.0/26 via fd00::1", "another address family"),
            ("10.233.0.0/26 via 0.0.0.0", "no unicast"),
            ("10.233.0.0/26 via 1.2.3.4 extra", "not BLOCK via ADDR"),
        ] {
            let e = set(&format!("10.233.1.0/26 via 198.51.100.13\n{bad}")).unwrap_err();
            assert_eq!(e.code(), 65, "{bad}");
            assert!(e.to_string().contains("test line 2"), "{e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let e =
            set("10.233.0.0/26 via 198.51.100.12\n10.233.0.0/26 via 198.51.100.13").unwrap_err();
        assert!(
            e.to_string().contains("already goes via 198.51.100.12"),
            "{e}"
        );
    }

    #[test]
    fn plan_replaces_moved_blocks_adds_new_ones_and_removes_gone_ones() {
        let have = [
            r("10.233.0.0/26", "198.51.100.12"),
            r("10.233.0.64/26", "198.51.100.13"),
        ];
        let want = [
            r("10.233.0.64/26", "198.51.100.14"),
            r("10.233.0.128/26", "198.51.100.12"),
        ];
        assert_eq!(
            plan(&have, &want),
            [
                Req::DelNodeRoute(have[0]),
                Req::AddNodeRoute {
                    route: want[0],
                    replace: true
                },
                Req::AddNodeRoute {
                    route: want[1],
                    replace: false
                },
            ]
        );
        assert_eq!(plan(&want, &want), []);
    }

    fn host_routes(w: &World) -> Vec<(u8, Route)> {
        let mut v = Vec::new();
        w.with(|s| {
            v = s
                .gw_routes
                .iter()
                .filter(|(n, _, _)| *n == Where::Host)
                .map(|(_, p, r)| (*p, *r))
                .collect()
        });
        v
    }

    #[test]
    fn converging_leaves_container_routes_and_others_routes_alone_and_is_idempotent() {
        let w = World::default();
        // A container's host route (ours, no gateway) on its veth, a route of someone
        // else's (protocol static) to another prefix, and a stale node route of ours.
        w.with(|s| {
            s.add_pair("ve-web", [2; 6], "eth0", [4; 6]);
            let ve = s
                .links
                .iter_mut()
                .find(|l| l.link.name == "ve-web")
                .unwrap();
            ve.routes.push(Route::to("10.233.0.3".parse().unwrap()));
            s.gw_routes
                .push((Where::Host, 4, r("192.0.2.0/24", "198.51.100.1")));
            s.gw_routes
                .push((Where::Host, 118, r("10.233.1.0/26", "198.51.100.99")));
            s.gw_routes
                .push((Where::Host, 118, Route::to("10.233.0.5".parse().unwrap())));
        });
        let want = [
            r("10.233.0.64/26", "198.51.100.12"),
            r("10.233.1.0/26", "198.51.100.13"),
        ];
        converge(&w.host(), &want).unwrap();
        let mut got = host_routes(&w);
        got.sort();
        assert_eq!(
            got,
            [
                (4, r("192.0.2.0/24", "198.51.100.1")),
                (118, Route::to("10.233.0.5".parse().unwrap())),
                (118, r("10.233.0.64/26", "198.51.100.12")),
                (118, r("10.233.1.0/26", "198.51.100.13")),
            ]
        );
        assert_eq!(
            w.link(Where::Host, "ve-web").unwrap().routes,
            [Route::to("10.233.0.3".parse().unwrap())]
        );
        // Again: one dump, nothing else.
        w.clear_log();
        converge(&w.host(), &want).unwrap();
        assert_eq!(
            w.log(),
            [
                (Where::Host, Req::NodeRoutes { v6: false }),
                (Where::Host, Req::NodeRoutes { v6: true })
            ]
        );
        // The empty set removes ours only.
        converge(&w.host(), &[]).unwrap();
        let mut got = host_routes(&w);
        got.sort();
        assert_eq!(
            got,
            [
                (4, r("192.0.2.0/24", "198.51.100.1")),
                (118, Route::to("10.233.0.5".parse().unwrap())),
            ]
        );
    }

    #[test]
    fn someone_elses_route_to_a_block_is_not_taken_over_and_the_rest_is_done() {
        let w = World::default();
        w.with(|s| {
            s.gw_routes
                .push((Where::Host, 4, r("10.233.0.64/26", "198.51.100.1")))
        });
        let want = [
            r("10.233.0.64/26", "198.51.100.12"),
            r("10.233.0.128/26", "198.51.100.13"),
        ];
        let e = converge(&w.host(), &want).unwrap_err();
        assert_eq!(e.code(), Exit::CantCreate.code(), "{e}");
        assert!(
            e.to_string()
                .contains("adding route 10.233.0.64/26 via 198.51.100.12"),
            "{e}"
        );
        let got = host_routes(&w);
        assert!(
            got.contains(&(4, r("10.233.0.64/26", "198.51.100.1"))),
            "{got:?}"
        );
        assert!(
            got.contains(&(118, r("10.233.0.128/26", "198.51.100.13"))),
            "{got:?}"
        );
    }

    #[test]
    fn a_failed_removal_is_reported_and_the_rest_still_done() {
        let w = World::default();
        w.with(|s| {
            s.gw_routes
                .push((Where::Host, 118, r("10.233.0.0/26", "198.51.100.12")))
        });
        w.fail(
            Where::Host,
            |q| matches!(q, Req::DelNodeRoute(_)),
            libc::EPERM,
        );
        let want = [r("10.233.0.64/26", "198.51.100.13")];
        let e = converge(&w.host(), &want).unwrap_err();
        assert!(
            e.to_string().contains("removing route 10.233.0.0/26"),
            "{e}"
        );
        assert!(host_routes(&w).contains(&(118, want[0])));
    }
}
