//! ve-link's manual beyond its options: exit status, environment, files, examples
//! (shown after `--help` and rendered into the man page by `cargo xtask dist`).

use common::{
    doc::{entry, exit, Manual},
    Exit,
};

pub const MANUAL: Manual = Manual {
    exits: &[
        exit(Exit::Ok, ""),
        exit(Exit::Differs, "check found something up would change"),
        exit(
            Exit::Usage,
            "a missing or unknown argument, check --from",
        ),
        exit(
            Exit::DataErr,
            "a malformed NAME, address, MTU or address file; addresses that clash; a bad \
             line of a routes set (nothing changes; --follow ends, the last good set in place)",
        ),
        exit(
            Exit::NoInput,
            "the container namespace, process, bridge, address file or routes file does not exist",
        ),
        exit(
            Exit::Unavailable,
            "CNI: the IPAM plugin is not in CNI_PATH or failed",
        ),
        exit(Exit::Software, "a bug in ve-link"),
        exit(
            Exit::OsErr,
            "the kernel refused a change (routes: a gateway on no connected network)",
        ),
        exit(
            Exit::CantCreate,
            "a link that is not ve-link's is in the way of the one to create; routes: \
             someone else's route to a block",
        ),
        exit(
            Exit::TempFail,
            "the kernel did not answer within 5 s, or a concurrent down removed what up had just made",
        ),
        exit(
            Exit::NoPerm,
            "not enough privilege (CAP_NET_ADMIN, CAP_SYS_ADMIN)",
        ),
        exit(
            Exit::Config,
            "CNI: the network configuration has no ipam.type",
        ),
    ],
    env: &[entry(
            "CNI_COMMAND",
            "When set (ADD, DEL, CHECK, VERSION, STATUS, GC), ve-link is a CNI interface plugin: configuration on stdin, its ipam.type run from CNI_PATH, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS from the environment, the result or CNI error JSON on stdout",
        )],
    files: &[
        entry(
            "/run/netns/NAME",
            "Named network namespaces (ip netns add), for --netns NAME",
        ),
        entry(
            "/proc/PID/ns/net",
            "The network namespace of a process, for --pid; ve-link also scans /proc to \
             tell whether a container namespace still exists",
        ),
    ],
    examples: &[
        entry(
            "ve-alloc alloc web | ve-link up web --netns web --addresses -",
            "Make web's veth pair with the addresses ve-alloc leased",
        ),
        entry(
            "ve-alloc alloc c1 c2 c3 --json | ve-link up --from - --json",
            "Bring up every container ve-alloc leased in one process (namespaces \
             /run/netns/NAME unless a line has a netns field): one JSON line each, a failed \
             one with its exit and error; the exit status is the first failed line's code",
        ),
        entry(
            "ve-link up web --pid 4242 --host-address 10.233.0.2 --local-address 10.233.0.3",
            "The same for the namespace of process 4242, addresses given directly",
        ),
        entry(
            "ve-link check web --netns web --addresses /run/web.env",
            "Exit 0 when everything up would make is in place, else 1 and what differs",
        ),
        entry(
            "ve-link list --json",
            "The links ve-link manages, as JSON Lines",
        ),
        entry(
            "ve-link down web",
            "Remove web's pair (already gone is success); down --all at shutdown",
        ),
        entry(
            "ve-alloc --store etcd://10.0.0.1:2379/fleet routes | ve-link routes --from -",
            "Route the other hosts' container blocks through those hosts: the host's \
             protocol-118 routes with a gateway become exactly these BLOCK via ADDR lines \
             (container routes, which have no gateway, are left alone)",
        ),
        entry(
            "ve-alloc --store etcd://10.0.0.1:2379/fleet routes --watch | ve-link routes --from - --follow",
            "The same, kept current: converge after every set (each ended by a blank line) \
             as blocks are claimed and freed; exits 0 at the end of the input",
        ),
        entry(
            "ve-link gc | ve-alloc release -",
            "Remove pairs whose container namespace is gone and free their leases (where a gone namespace means a container removed for good)",
        ),
    ],
};
