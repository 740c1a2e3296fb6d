//! ve-alloc's manual beyond its options: exit status, environment, files, examples
//! (shown after `--help` and rendered into the man page by `cargo xtask dist`).

use common::{
    doc::{entry, exit, Manual},
    Exit,
};

pub const MANUAL: Manual = Manual {
    exits: &[
        exit(Exit::Ok, ""),
        exit(
            Exit::Differs,
            "CNI CHECK: the previous result lacks the address the attachment holds",
        ),
        exit(
            Exit::Usage,
            "a missing or unknown argument, several alloc names without --json, --wait out of range, a --store that is a URL or a database file, gc with no names on a terminal",
        ),
        exit(
            Exit::DataErr,
            "a malformed NAME, address or pool, a bad import file, an address or interface name already leased, host address equal to local, gc with an empty list of live names (without --all-gone)",
        ),
        exit(
            Exit::NoInput,
            "no lease for NAME (show, show-ip), a named config file or import directory missing",
        ),
        exit(Exit::Software, "a bug in ve-alloc"),
        exit(Exit::OsErr, "a system call failed"),
        exit(Exit::CantCreate, "the address pool is exhausted"),
        exit(
            Exit::IoErr,
            "the store cannot be read or written, is corrupt (it is never reset), or is not a directory",
        ),
        exit(
            Exit::TempFail,
            "another process held the store locked longer than --wait",
        ),
        exit(Exit::NoPerm, "no permission to read or write the store"),
        exit(
            Exit::Config,
            "a bad config file, or a store written by another version or program",
        ),
    ],
    env: &[
        entry(
            "CNI_COMMAND",
            "When set (ADD, DEL, CHECK, VERSION, STATUS, GC), ve-alloc is a CNI IPAM plugin: configuration on stdin (store required), CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNI_ARGS (K8S_POD_NAME names the lease) from the environment, the result or CNI error JSON on stdout",
        ),
        entry("VE_ALLOC_STORE", "Store directory, as --store"),
        entry("VE_ALLOC_POOL", "IPv4 pool, as --pool"),
        entry("VE_ALLOC_POOL6", "IPv6 pool, as --pool6"),
        entry("VE_ALLOC_LAYOUT", "Layout of the IPv4 pool, as --layout"),
        entry("VE_ALLOC_CONFIG", "Configuration file, as --config"),
    ],
    files: &[
        entry(
            "/etc/ve-alloc.conf",
            "Configuration, when it exists: KEY=value lines STORE, POOL, POOL6, LAYOUT",
        ),
        entry(
            "/var/lib/ve-alloc/leases.db",
            "The lease store (SQLite, with its -wal and -shm files; directory 0750, files 0640); \
             --store DIR moves it",
        ),
    ],
    examples: &[
        entry(
            "ve-alloc alloc web",
            "Lease web an address pair (the same one again next time) and print it as \
             HOST_ADDRESS=... LOCAL_ADDRESS=... lines",
        ),
        entry(
            "ve-alloc alloc web | ve-link up web --netns web --addresses -",
            "Lease and plumb in one pipeline",
        ),
        entry(
            "ve-alloc alloc c1 c2 c3 --json | ve-link up --from -",
            "Lease several containers in one transaction (one JSON line each) and bring them \
             all up in one ve-link process",
        ),
        entry("ve-alloc show-ip web", "Print web's container address"),
        entry("ve-alloc list --hosts", "/etc/hosts lines for every lease"),
        entry(
            "ve-alloc reserve mail --host-address 10.233.9.2 --local-address 10.233.9.3",
            "Record a static lease with chosen addresses",
        ),
        entry(
            "ls /var/lib/machines | ve-alloc gc",
            "Release the dynamic leases of containers that no longer exist (an empty list \
             is refused; --all-gone says it is meant)",
        ),
        entry(
            "ve-link gc | ve-alloc release -",
            "Release the leases of the containers whose pairs ve-link gc removed (where a gone namespace means a container removed for good)",
        ),
        entry(
            "ve-alloc import /etc/nixos-containers",
            "Turn NixOS container conf files into static leases",
        ),
    ],
};
