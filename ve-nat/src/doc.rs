//! ve-nat's manual beyond its options: exit status, environment, files, examples
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
            "check found the installed rules or forwarding differ from the request",
        ),
        exit(Exit::Usage, "a missing or unknown argument"),
        exit(
            Exit::DataErr,
            "a malformed interface, pattern, address, port forward or mark; --external auto \
             with two default routes of equal metric",
        ),
        exit(
            Exit::NoInput,
            "the --external interface does not exist (the message names the default \
             route's), or --external auto finds no default route",
        ),
        exit(
            Exit::Unavailable,
            "no iptables (of the requested backend) is installed",
        ),
        exit(Exit::Software, "a bug in ve-nat"),
        exit(
            Exit::OsErr,
            "iptables or the kernel refused a change, or a sysctl could not be written",
        ),
        exit(
            Exit::TempFail,
            "another ve-nat held the rules lock (/run/ve-nat/lock) for too long (30 s)",
        ),
        exit(Exit::NoPerm, "not enough privilege (CAP_NET_ADMIN)"),
        exit(
            Exit::Config,
            "the lock directory or file is not root's own, or others could write it",
        ),
    ],
    env: &[
        entry(
            "CNI_COMMAND",
            "When set, ve-nat answers CNI VERSION (configuration on stdin, result on stdout); other CNI verbs get CNI error 4 in this version",
        ),
        entry(
        "VE_NAT_LOCK_DIR",
        "Directory of the rules lock, instead of /run/ve-nat (it must be root's and not \
         writable by others; created 0755 when missing)",
    )],
    files: &[
        entry(
            "/run/ve-nat/lock",
            "The lock that lets one up or down at a time change the rules (flock, 0600, root's)",
        ),
        entry(
            "/proc/sys/net/ipv4/ip_forward",
            "IPv4 forwarding of the network namespace, turned on by up",
        ),
        entry(
            "/proc/sys/net/ipv6/conf/*/forwarding",
            "IPv6 forwarding (up --ipv6); accept_ra of the external interface is set to 2 \
             so router advertisements keep working",
        ),
        entry(
            "iptables, iptables-nft, iptables-legacy, ip6tables..., nft",
            "The programs ve-nat drives (looked up on PATH and in /usr/sbin, /sbin); nft is \
             only read from, to find other tables' forward chains that drop",
        ),
    ],
    examples: &[
        entry(
            "ve-nat up --external eth0",
            "Masquerade every container on a ve-* interface behind eth0, forwarding on",
        ),
        entry(
            "ve-nat up --external auto",
            "The same behind the interface of the default route",
        ),
        entry(
            "ve-nat up --external eth0 --forward tcp:8080:10.233.1.2:80",
            "The same, plus port 8080 of the host forwarded to a container's port 80",
        ),
        entry(
            "ve-nat check --external eth0 --forward tcp:8080:10.233.1.2:80",
            "Exit 0 when that is exactly what is installed, 1 if not",
        ),
        entry(
            "ve-nat status --json",
            "Installed chains, rules and packet counters as JSON Lines, one object per chain",
        ),
        entry(
            "ve-nat down",
            "Remove ve-nat's chains and jumps, nothing else",
        ),
    ],
};
