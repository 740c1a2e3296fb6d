//! The sandbox host's uplink to an "outside" namespace.

use crate::Netns;

/// The host's uplink address in every sandbox (TEST-NET-1, documentation range).
pub const HOST_UPLINK: &str = "192.0.2.1";
/// The "outside world" on the other end of the uplink.
pub const OUTSIDE: &str = "192.0.2.2";

/// Wire `host` to `out`: a veth `up0` (HOST_UPLINK/24) -- `up1` (OUTSIDE/24), both up,
/// and a route in `out` back to the container pool 10.233.0.0/16 through the host, so
/// that without NAT a server outside sees container addresses (the negative control)
/// and with NAT the uplink address.
pub fn uplink(host: &Netns, out: &Netns) {
    host.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "netns",
        out.name(),
    ]);
    host.ip(&["addr", "add", &format!("{HOST_UPLINK}/24"), "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    out.ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "up1"]);
    out.ip(&["link", "set", "up1", "up"]);
    out.ip(&["route", "add", "10.233.0.0/16", "via", HOST_UPLINK]);
}
