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
            "the chosen backend's program is not installed (nft for nftables, iptables-nft or \
             iptables-legacy); firewalld refused a zone change or did not answer",
        ),
        exit(Exit::Software, "a bug in ve-nat"),
        exit(
            Exit::OsErr,
            "nft, iptables or the kernel refused a change, or a sysctl could not be written; \
             down: a table that may hold ve-nat's chains (a loaded iptables-legacy table) or, \
             with --cni, CNI mode's chains could not be listed (down does the rest first; \
             without --cni an unlistable CNI table is a warning)",
        ),
        exit(
            Exit::CantCreate,
            "CNI ADD: a host port of portMappings is mapped already, for another container",
        ),
        exit(
            Exit::TempFail,
            "another ve-nat held the rules lock (/run/ve-nat/lock) for too long (30 s)",
        ),
        exit(Exit::NoPerm, "not enough privilege (CAP_NET_ADMIN)"),
        exit(
            Exit::Config,
            "the lock directory or file is not root's own, or others could write it; the \
             firewalld record holds a line ve-nat does not write",
        ),
    ],
    env: &[
        entry(
            "CNI_COMMAND",
            "When set (ADD, DEL, CHECK, GC, STATUS, VERSION), ve-nat is a chained CNI \
             plugin (configuration on stdin, result on stdout): ADD installs the shared NAT \
             once when missing (table inet ve-nat, or with an iptables backend ve-nat's \
             chains) and the portMappings capability as elements of table inet ve-nat-cni \
             commented with the attachment (iptables: one rule per mapping and chain in \
             ve-nat-cni-pre, -out, -post and filter ve-nat-cni-fwd, tagged vecni-NET-ID); \
             DEL and GC delete only those; ve-nat down leaves them (down --cni removes them)",
        ),
        entry(
            "VE_NAT_LOCK_DIR",
            "Directory of the rules lock, instead of /run/ve-nat (it must be root's and not \
             writable by others; created 0755 when missing)",
        ),
        entry(
            "VE_NAT_STATE_DIR",
            "Directory of the record of what ve-nat added to firewalld, instead of \
             /var/lib/ve-nat",
        ),
        entry(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "The system bus firewalld is looked for on (default \
             unix:path=/var/run/dbus/system_bus_socket); no bus, no firewalld on it, or a \
             firewalld in another network namespace: firewalld is left alone",
        ),
        entry(
            "NOTIFY_SOCKET",
            "Set by systemd for Type=notify: watch sends READY=1 once the rules are applied",
        ),
    ],
    files: &[
        entry(
            "/var/lib/ve-nat/firewalld",
            "What up added to firewalld's trusted zone (LAYER KIND VALUE lines), so that \
             down removes exactly that; gone once nothing is left",
        ),
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
            "/proc/sys/net/ipv4/conf/*/route_localnet",
            "Set to 1 by up on each existing interface an --internal pattern matches, when \
             there is an IPv4 port forward (so it answers on 127.0.0.1), and to 0 by \
             up --no-localhost and by down; check reports a matching interface where it \
             differs",
        ),
        entry(
            "nft, iptables-save, iptables-restore, iptables-nft-*, iptables-legacy-*, ip6tables-*",
            "The programs ve-nat drives (looked up on PATH): nft writes table inet ve-nat \
             (--backend nftables, one transaction per up) and is read for other tables' \
             forward chains that drop and for what --backend auto picks; with an iptables \
             backend, per address family and table one -save to read and at most one \
             `-restore --noflush` transaction to change, and after down with iptables-nft nft \
             deletes the tables and built-in chains left empty; iptables-legacy-save is read \
             only when the kernel lists a legacy table. down with nftables runs no nft: \
             it reads and deletes over nf_tables netlink; nor does a CNI call on nftables \
             once its tables are there (the first ADD installs them with nft)",
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
            "curl http://127.0.0.1:8080/",
            "After the example above: the host reaches the container's port 80 through its \
             loopback too (not with --no-localhost)",
        ),
        entry(
            "ve-nat check --external eth0 --forward tcp:8080:10.233.1.2:80",
            "Exit 0 when that is exactly what is installed, 1 if not",
        ),
        entry(
            "ve-nat up --external eth0 --backend nftables -v",
            "Write table inet ve-nat with nft (auto, the default, says on -v what it \
             picked and why)",
        ),
        entry(
            "ve-nat status --json",
            "Installed chains, rules and packet counters as JSON Lines, one object per chain",
        ),
        entry(
            "ve-nat watch --external auto",
            "up, then stay: re-apply within a second whenever the rules vanish (nft flush \
             ruleset, a firewalld reload, iptables -F); SIGTERM ends it",
        ),
        entry(
            "ve-nat watch --external eth0 --ipv6 --forward tcp:8080:[fd00:1::2]:80",
            "The same, and while it runs curl http://[::1]:8080/ on the host reaches the \
             container: the kernel cannot forward ::1, so the watcher proxies IPv6 \
             forwards (TCP and UDP) on [::1] in userland (only host processes can reach \
             it; a one-shot up cannot; not with --no-localhost)",
        ),
        entry(
            "ve-nat down",
            "Remove ve-nat's chains and jumps and what it added to firewalld, nothing else",
        ),
    ],
};
