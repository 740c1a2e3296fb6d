//! Dev-only sandboxes for the tools' tests, the end-to-end tests, the demo and the
//! benches; never a dependency of a tool itself.
//!
//! - [`privilege`]: the gate every privileged test passes first.
//! - [`sandbox`]: throwaway network namespaces and scratch directories, removed on drop.
//! - [`netns`]: running test code on a thread inside a namespace.
//! - [`host`]: the sandbox host's uplink to an "outside" namespace.
//! - [`http`]: HTTP served and fetched inside namespaces.
//! - [`cni`]: CNI plugins called as a runtime calls them, and conflists chained.
//! - [`nat`]: a NAT topology (containers -- host -- outside) with real traffic.
//! - [`etcd`]: a real etcd cluster, with node namespaces that share nothing else.
//! - [`nm`]: a real NetworkManager on a private D-Bus bus.
//! - [`networkd`]: a real systemd-networkd on such a bus.
//! - [`firewalld`]: a real firewalld on a private D-Bus bus.
//! - [`podman`]: a real podman with its CNI backend, containers from [`rootfs`].
//! - [`rootfs`]: a debootstrap Debian rootfs, built once and cached.
//! - [`process`]: stopping children, polling.
//!
//! Everything needed often is re-exported here.

pub mod cni;
pub mod etcd;
pub mod firewalld;
pub mod host;
pub mod http;
pub mod nat;
pub mod netns;
pub mod networkd;
pub mod nm;
pub mod podman;
pub mod privilege;
pub mod process;
pub mod rootfs;
pub mod sandbox;

pub use host::{uplink, HOST_UPLINK, OUTSIDE};
pub use http::{http_get, http_get_within, HttpServer};
pub use netns::{enter, enter_fd, in_netns, spawn_in};
pub use nm::{nm_command, nm_conf, NetworkManager};
pub use privilege::{have_command, privileged, REQUIRE_PRIVILEGED};
pub use process::{output_with_stdin, stop, wait_for};
pub use sandbox::{run_ok, sweep_stale, Netns, Sandbox, TempDir};
